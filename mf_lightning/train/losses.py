"""The loss as configuration: weighted Huber terms that ignore absent labels (SPEC section 3).

L = sum_t w_t L_t, one term per task. Each term is a Huber loss averaged over tensor
components, weighted per structure by the label weight (``weight_<task>``: 0 where the structure
has no such label), and normalised by the sum of those weights (per atom for per-atom tasks), so
batch composition does not change its scale. A task absent from the whole batch contributes
exactly 0 (never NaN). The polarisation term compares the *folded* difference: P is defined
modulo the polarisation lattice Q_k = e a_k / Omega, so it receives the cell of each structure.

Normalisation per task: energy per atom (E/N, as in MACE), forces and Z* per atom, stress,
P and alpha per structure.

Unit-free scales. Each residual is divided by a scale s_t before the Huber loss: the RMS of
that task's reference labels on the *training split* (:func:`label_scales`; energy per atom
after the least-squares E0s are removed, since those are fitted, not learned). A term then
measures an error relative to its label's size, whatever unit the file used: multiplying a
label by 100 (and its unit accordingly) changes the scale by 100 and the loss not at all. The
paper's weights, chosen for its files' units (Omega*P, Omega*alpha, chi/4pi), would otherwise
silence P and alpha by 2-6 orders of magnitude in internal units (SPEC section 3); with the
scales a weight means relative importance. The Huber delta applies to the scaled residual
(default 1.0: errors beyond one label RMS, e.g. a wrong label, count linearly); it may be set
per task. One scalar per task, also for Z*: per-element scales would weigh an error of 0.1 e on
a light anion more than the same error on a cation, while the reported metric (and the
physics: the acoustic sum rule ties the elements together) treats them alike.
The scales are a persistent buffer of the loss, so they are saved in every checkpoint and
restored on resume, and :func:`mf_lightning.train.pipeline.train` also writes them into the exported
model file (``FieldMACE.loss_scales``) for evaluation and fine-tuning.
"""

from __future__ import annotations

import logging
import math
from typing import Dict, Iterable, Mapping, Optional, Sequence, Union

import numpy as np
import torch

from mf_lightning.data import keys, quantities
from mf_lightning.data.keys import ref_key, weight_key
from mf_lightning.data.polarisation import nearest_image
from mf_lightning.data.quantities import QUANTITIES

log = logging.getLogger(__name__)


def label_scales(graphs: Iterable, atomic_energies: Optional[Sequence[float]] = None,
                 tasks: Optional[Sequence[str]] = None) -> Dict[str, float]:
    """RMS of each task's labels over ``graphs`` (the training split), in the loss's
    normalisation, i.e. the error of a model predicting zero: energy per atom minus the E0s
    (``atomic_energies``, in the graphs' element order; none: raw energy per atom; a raw energy
    RMS would be the cohesive energy, hundreds of eV per atom), P folded
    onto the branch nearest zero (the loss compares P modulo its quantum), forces and Z* over
    atoms and components, the rest over structures and components. A task without labels, or
    with all-zero labels, gets 1.0. ``tasks``: default all labels."""
    tasks = quantities.tasks() if tasks is None else tasks
    sq = {t: [] for t in tasks}  # per-graph sums, added exactly (math.fsum): order-independent
    count = {t: 0 for t in tasks}
    e0 = None if atomic_energies is None else torch.as_tensor(np.asarray(atomic_energies, dtype=float).reshape(-1))
    for g in graphs:
        for t in tasks:
            if float(g[weight_key(t)].sum()) <= 0:
                continue
            ref = g[ref_key(t)].double()
            if QUANTITIES[t].divide_by_atoms:  # the energy: per atom, after the fitted E0s
                counts = g[keys.NODE_ATTRS].double().sum(0)
                base = float(counts @ e0[: counts.numel()].double()) if e0 is not None else 0.0
                ref = (ref.reshape(-1) - base) / float(counts.sum())
            elif QUANTITIES[t].modulo_quantum:
                ref = fold_polarisation(ref.reshape(1, 3), g[keys.CELL].double().reshape(1, 3, 3))
            sq[t].append(float((ref ** 2).sum()))
            count[t] += ref.numel()
    scales = {}
    for t in tasks:
        rms = (math.fsum(sq[t]) / count[t]) ** 0.5 if count[t] else 0.0
        if not np.isfinite(rms) or rms <= 0:
            if count[t]:
                log.warning("loss scale of %s: its labels are all zero; using 1.0", t)
            rms = 1.0
        scales[t] = float(rms)
    return scales


def fold_polarisation(dP: torch.Tensor, cell: torch.Tensor) -> torch.Tensor:
    """P differences (n_graphs, 3) folded to the nearest lattice image of the quanta, per
    structure (:func:`~mf_lightning.data.polarisation.nearest_image`): loss and metrics alike."""
    return nearest_image(dP, cell)


def per_atom(energy: torch.Tensor, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Per-structure energies divided by their atom counts."""
    return energy.view(-1) / (batch[keys.PTR][1:] - batch[keys.PTR][:-1]).to(energy.dtype)


def residual(task: str, pred: Mapping[str, torch.Tensor], batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Prediction minus reference in the loss's normalisation (energy per atom, P folded)."""
    ref, q = batch[ref_key(task)], QUANTITIES[task]
    if q.divide_by_atoms:
        return per_atom(pred[task] - ref.view(-1), batch)
    if q.modulo_quantum:
        return fold_polarisation(pred[task] - ref.view(-1, 3), batch[keys.CELL])
    return pred[task] - ref.view(pred[task].shape)


def structure_weights(task: str, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Per-row weights: per structure, or broadcast to atoms for per-atom tasks."""
    w = batch[weight_key(task)].view(-1)
    return w[batch[keys.BATCH]] if QUANTITIES[task].per_atom else w


def weighted_mean(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """sum_i w_i v_i / sum_i w_i over rows (values already reduced over components); 0 if no weight."""
    total = weights.sum()
    return (weights * values).sum() / torch.clamp(total, min=torch.finfo(values.dtype).tiny) * (total > 0)


class MultiTaskLoss(torch.nn.Module):
    """``weights``: {task: coefficient}; tasks with coefficient 0 are skipped entirely (and their
    derivatives need not be computed: see :meth:`properties`). ``scales``: {task: s_t} dividing
    each residual (:func:`label_scales`; missing tasks: 1). ``huber_delta``: one value for every
    task or {task: delta}, in units of the scaled residual."""

    def __init__(self, weights: Mapping[str, float], huber_delta: Union[float, Mapping[str, float]] = 1.0,
                 scales: Optional[Mapping[str, float]] = None):
        super().__init__()
        unknown = (set(weights) | set(scales or {}) |
                   (set(huber_delta) if isinstance(huber_delta, Mapping) else set())) - set(quantities.tasks())
        if unknown:
            raise ValueError(f"unknown loss tasks {sorted(unknown)}; known: {quantities.tasks()}")
        self.tasks = quantities.tasks()  # the labels when built: the order of the scales buffer
        self.weights = {t: float(w) for t, w in weights.items() if float(w) != 0.0}
        if isinstance(huber_delta, Mapping):
            self.huber_delta = {t: float(huber_delta.get(t, 1.0)) for t in self.tasks}
        else:
            self.huber_delta = {t: float(huber_delta) for t in self.tasks}
        # persistent: saved in checkpoints and restored on resume, so a resumed run keeps its scales
        self.register_buffer("scales", torch.ones(len(self.tasks), dtype=torch.float64))
        if scales:
            self.set_scales(scales)

    def set_scales(self, scales: Mapping[str, float]) -> None:
        for t, v in scales.items():
            if not (np.isfinite(float(v)) and float(v) > 0):
                raise ValueError(f"loss scale of {t} must be a positive finite number, got {v}")
            self.scales[self.tasks.index(t)] = float(v)

    def scale_of(self, task: str) -> float:
        return float(self.scales[self.tasks.index(task)])

    def properties(self, batch: Optional[Mapping[str, torch.Tensor]] = None) -> tuple:
        """Model outputs this loss needs for ``batch`` (only tasks labelled in it)."""
        tasks = [t for t in self.weights if batch is None or float(batch[weight_key(t)].sum()) > 0]
        return (keys.ENERGY, *tasks)

    def forward(self, pred: Mapping[str, torch.Tensor], batch: Mapping[str, torch.Tensor]):
        total = torch.zeros((), dtype=pred[keys.ENERGY].dtype, device=pred[keys.ENERGY].device)
        parts: Dict[str, torch.Tensor] = {}
        for task, coeff in self.weights.items():
            if task not in pred or float(batch[weight_key(task)].sum()) == 0:
                continue  # no label of this task in the batch: contributes exactly 0
            r = residual(task, pred, batch) / self.scale_of(task)
            h = torch.nn.functional.huber_loss(r, torch.zeros_like(r), reduction="none", delta=self.huber_delta[task])
            per_row = h.reshape(h.shape[0], -1).mean(-1)
            parts[task] = weighted_mean(per_row, structure_weights(task, batch))
            total = total + coeff * parts[task]
        return total, parts
