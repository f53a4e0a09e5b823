"""The loss as configuration: weighted Huber terms that ignore absent labels (SPEC section 3).

L = sum_t w_t L_t, one term per task. Each term is a Huber loss averaged over tensor
components, weighted per structure by the label weight (``weight_<task>``: 0 where the structure
has no such label), and normalised by the sum of those weights (per atom for per-atom tasks), so
batch composition does not change its scale. A task absent from the whole batch contributes
exactly 0 (never NaN). The polarisation term compares the *folded* difference: P is defined
modulo the polarisation lattice Q_k = e a_k / Omega, so it receives the cell of each structure.

Normalisation per task: energy per atom (E/N, as in MACE), forces and Z* per atom, stress,
P and alpha per structure.
"""

from __future__ import annotations

from typing import Dict, Mapping, Optional

import torch

from mf_lightning.data import keys
from mf_lightning.data.dataset import TASKS, ref_key, weight_key

PER_ATOM = {"forces", "becs"}


def fold_polarisation(dP: torch.Tensor, cell: torch.Tensor) -> torch.Tensor:
    """Fold P differences (n_graphs, 3) onto the branch nearest zero, per structure:
    x = Q^-1 dP, dP_fold = Q (x - round(x)), with Q's columns the quanta e a_k / Omega."""
    cell = cell.view(-1, 3, 3)
    volume = torch.linalg.det(cell).abs().view(-1, 1, 1)
    Q = cell.transpose(-1, -2) / volume  # columns a_k / Omega
    x = torch.linalg.solve(Q, dP.unsqueeze(-1)).squeeze(-1)
    return dP - (Q @ torch.round(x).detach().unsqueeze(-1)).squeeze(-1)


def per_atom(energy: torch.Tensor, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Per-structure energies divided by their atom counts."""
    return energy.view(-1) / (batch[keys.PTR][1:] - batch[keys.PTR][:-1]).to(energy.dtype)


def residual(task: str, pred: Mapping[str, torch.Tensor], batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Prediction minus reference in the loss's normalisation (energy per atom, P folded)."""
    ref = batch[ref_key(task)]
    if task == "energy":
        return per_atom(pred[keys.ENERGY] - ref.view(-1), batch)
    if task == "polarisation":
        return fold_polarisation(pred[keys.POLARISATION] - ref.view(-1, 3), batch[keys.CELL])
    return pred[task] - ref.view(pred[task].shape)


def structure_weights(task: str, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Per-row weights: per structure, or broadcast to atoms for per-atom tasks."""
    w = batch[weight_key(task)].view(-1)
    return w[batch[keys.BATCH]] if task in PER_ATOM else w


def weighted_mean(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """sum_i w_i v_i / sum_i w_i over rows (values already reduced over components); 0 if no weight."""
    total = weights.sum()
    return (weights * values).sum() / torch.clamp(total, min=torch.finfo(values.dtype).tiny) * (total > 0)


class MultiTaskLoss(torch.nn.Module):
    """``weights``: {task: coefficient}; tasks with coefficient 0 are skipped entirely (and their
    derivatives need not be computed: see :meth:`properties`)."""

    def __init__(self, weights: Mapping[str, float], huber_delta: float = 0.01):
        super().__init__()
        unknown = set(weights) - set(TASKS)
        if unknown:
            raise ValueError(f"unknown loss tasks {sorted(unknown)}; known: {TASKS}")
        self.weights = {t: float(w) for t, w in weights.items() if float(w) != 0.0}
        self.huber_delta = float(huber_delta)

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
            r = residual(task, pred, batch)
            h = torch.nn.functional.huber_loss(r, torch.zeros_like(r), reduction="none", delta=self.huber_delta)
            per_row = h.reshape(h.shape[0], -1).mean(-1)
            parts[task] = weighted_mean(per_row, structure_weights(task, batch))
            total = total + coeff * parts[task]
        return total, parts
