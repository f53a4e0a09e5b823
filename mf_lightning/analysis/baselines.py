"""Trivial baselines a trained model must beat, on the same split of a data config.

A model that runs is not a model that learns: its test error means something only next to
what a model with no knowledge of the structure scores. For each labelled quantity, on the
split that training used (same data config, same seed):

- ``zero``: predicts 0 (P folded onto the branch nearest zero, as the metric does; energy: the
  least-squares E0s of the training split, i.e. "zero interaction energy");
- ``mean``: the training split's mean, per element for per-atom quantities (Z*: the mean tensor
  of each element; forces: zero) and per structure otherwise (alpha: the mean 3x3 tensor);

- ``per_element``: what an untrained model starts from (:class:`~mf_lightning.model.field_mace.FieldMACE`
  with ``init=zeros``): Z* the fitted per-element Born charges projected onto the charge-sum
  rule per structure (:func:`~mf_lightning.model.field_mace.fit_atomic_charges`, Z*_i = q'_i I),
  alpha additive per element, (1/Omega) sum_i a_Z I
  (:func:`~mf_lightning.model.field_mace.fit_atomic_polarisabilities`); the two baselines a
  cross-chemistry model must beat;

and, where alpha is labelled, the MAE and the mean of eps_inf (eps_poly = 1 + tr(alpha)/(3 eps0))
(``reference``: the labels' mean). With ``--model`` the model's own numbers are put beside them.

    mf-baselines mp_dielectric [--model run/model.pt] [--split test]

Writes a markdown table to stdout (and ``--out`` as JSON).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Dict, List, Optional, Sequence

import torch

from mf_lightning.data import keys, quantities
from mf_lightning.data.keys import ref_key, weight_key
from mf_lightning.data.quantities import QUANTITIES
from mf_lightning.train.losses import residual, structure_weights
from mf_lightning.train.metrics import batch_to_dict, labelled_tasks, metric_components
from mf_lightning.utils import markdown_table


def eps_inf_poly(alpha: torch.Tensor) -> torch.Tensor:
    """Isotropic eps_inf per structure from alpha (n, 3, 3) in e/(V A) (:mod:`mf_lightning.analysis.dielectric`)."""
    from mf_lightning.analysis.dielectric import eps_inf_from_alpha, eps_poly

    return torch.as_tensor(eps_poly(eps_inf_from_alpha(alpha.detach().cpu().reshape(-1, 3, 3).numpy())))


def _fit_means(train: Sequence, atomic_numbers: Sequence[int]) -> Dict[str, Any]:
    """Per-element mean Z*, mean alpha / stress / P per structure, least-squares E0s (those of
    training, :func:`mf_lightning.train.pipeline.dataset_statistics`)."""
    from mf_lightning.train.pipeline import dataset_statistics

    sums: Dict[str, torch.Tensor] = {}
    counts: Dict[str, torch.Tensor] = {}
    for g in train:
        onehot = g[keys.NODE_ATTRS].double()
        for t in quantities.tasks():
            if QUANTITIES[t].divide_by_atoms or float(g[weight_key(t)]) <= 0:
                continue
            ref = g[ref_key(t)].double()
            if QUANTITIES[t].per_atom:
                flat = ref.reshape(ref.shape[0], -1)
                sums[t] = sums.get(t, 0) + onehot.T @ flat
                counts[t] = counts.get(t, 0) + onehot.sum(0)
            else:
                sums[t] = sums.get(t, 0) + ref.reshape(1, -1)
                counts[t] = counts.get(t, 0) + 1.0
    means: Dict[str, Any] = {}
    for t in sums:
        c = counts[t]
        means[t] = sums[t] / (c.reshape(-1, 1) if torch.is_tensor(c) and c.ndim else c)
        if torch.is_tensor(c) and c.ndim:
            means[t] = torch.where(c.reshape(-1, 1) > 0, means[t], torch.zeros_like(means[t]))
    from mf_lightning.model.field_mace import fit_atomic_charges, fit_atomic_polarisabilities

    n = len(atomic_numbers)
    for name, fit in (("charges", fit_atomic_charges), ("atomic_alpha", fit_atomic_polarisabilities)):
        value = fit(train, n)
        if value is not None:
            means[name] = torch.as_tensor(value, dtype=torch.float64)
    means["e0"] = torch.as_tensor(dataset_statistics(train, atomic_numbers)["atomic_energies"], dtype=torch.float64)
    return means


def _predictions(kind: str, d: Dict[str, torch.Tensor], means: Dict[str, Any],
                 tasks: List[str]) -> Dict[str, torch.Tensor]:
    onehot = d[keys.NODE_ATTRS].double()
    n_graphs = int(d[keys.PTR].numel() - 1)
    counts = torch.zeros(n_graphs, onehot.shape[1], dtype=torch.float64).index_add_(0, d[keys.BATCH], onehot)
    pred = {keys.ENERGY: counts @ means["e0"]}
    for t in tasks:
        if t == "energy":
            continue
        shape = d[ref_key(t)].shape
        fitted = _per_element(t, d, means, onehot, counts, shape) if kind == "per_element" else None
        if fitted is not None:
            pred[t] = fitted
        elif kind == "zero" or t not in means:
            pred[t] = torch.zeros(shape, dtype=torch.float64)
        elif t in ("becs", "forces"):
            pred[t] = (onehot @ means[t]).reshape(shape)
        else:
            pred[t] = means[t].expand(n_graphs, -1).reshape(shape).clone()
    return pred


def _per_element(t: str, d, means, onehot, counts, shape) -> Optional[torch.Tensor]:
    """The fitted per-element Born charges (projected per structure) and additive alpha; None for
    every other quantity (the caller gives it the per-element mean, as ``mean`` does)."""
    eye = torch.eye(3, dtype=torch.float64)
    if t == "becs" and "charges" in means:
        q = onehot @ means["charges"]
        mean_q = torch.zeros(len(counts), dtype=torch.float64).index_add_(0, d[keys.BATCH], q) / counts.sum(1)
        return ((q - mean_q[d[keys.BATCH]])[:, None, None] * eye).reshape(shape)
    if t == "polarisability" and "atomic_alpha" in means:
        volume = torch.linalg.det(d[keys.CELL].double().reshape(-1, 3, 3)).abs()
        return ((counts @ means["atomic_alpha"]) / volume)[:, None, None].mul(eye).reshape(shape)
    return None


def _accumulate(acc, name: str, d, pred, tasks) -> None:
    for t in tasks:
        w = structure_weights(t, d) > 0
        for q, err in metric_components(t, residual(t, pred, d).detach()).items():
            acc[name][q].append(err[w].double().reshape(-1))
    if "polarisability" in tasks:
        labelled = d[weight_key("polarisability")].view(-1) > 0
        e_ref = eps_inf_poly(d[ref_key("polarisability")].double())
        e_pred = eps_inf_poly(pred["polarisability"].double())
        acc[name]["eps_inf_mae"].append((e_pred - e_ref)[labelled].abs())
        acc[name]["eps_inf_mean"].append(e_pred[labelled])
        if name == "zero":  # once per batch
            acc["reference"]["eps_inf_mean"].append(e_ref[labelled])


def _summarise(acc) -> Dict[str, Dict[str, float]]:
    out: Dict[str, Dict[str, float]] = {}
    for name, per_q in acc.items():
        for q, chunks in per_q.items():
            x = torch.cat(chunks)
            plain = q.startswith("eps_inf")
            value = float(x.mean()) if plain else float(x.pow(2).mean().sqrt())
            out.setdefault(q if plain else f"{q}_rmse", {})[name] = value
    return out


def compare(dm, split: str = "test", model=None, batch_size: int = 8) -> Dict[str, Dict[str, float]]:
    """{metric: {baseline or "model": value}} on ``split`` of every source of a set-up DataModule
    (sources pooled); baselines fitted on the training split."""
    from mace.tools.torch_geometric.dataloader import DataLoader


    train = dm.train_graphs()
    test = [g for src in dm.sources.values() for g in src.datasets[split]]
    means = _fit_means(train, dm.atomic_numbers)
    acc = defaultdict(lambda: defaultdict(list))
    for batch in DataLoader(test, batch_size=batch_size, shuffle=False):
        d = batch_to_dict(batch, torch.float64)
        tasks = labelled_tasks(d)
        for kind in ("zero", "mean", "per_element"):
            _accumulate(acc, kind, d, _predictions(kind, d, means, tasks), tasks)
        if model is not None:
            dm_ = {k: (v.to(model.dtype) if torch.is_tensor(v) and v.is_floating_point() else v) for k, v in d.items()}
            out = model(dm_, properties=(keys.ENERGY, *tasks))
            out = {k: v.detach().double() for k, v in out.items()}
            _accumulate(acc, "model", d, out, tasks)
    return _summarise(acc)


def table(result: Dict[str, Dict[str, float]]) -> str:
    cols = [c for c in ("zero", "mean", "per_element", "model", "reference") if any(c in v for v in result.values())]
    return markdown_table(["metric", *cols], [[metric, *(f"{row[c]:.4g}" if c in row else "-" for c in cols)]
                                              for metric, row in result.items()])
