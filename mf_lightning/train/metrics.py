"""The metrics, one implementation for training (:class:`~mf_lightning.train.module.FieldMACEModule`)
and evaluation (:mod:`mf_lightning.analysis.evaluate`).

Metric names are an API (the same strings in checkpoint monitors, early stopping, sweeps and
result tables): ``{stage}/{dataset}/{quantity}_{rmse|mae}``, with the quantities and units of
:func:`mf_lightning.data.quantities.metric_units`. Each labelled quantity is compared in the
loss's normalisation (energy per atom, P folded onto the reference's branch) and reported in its
metric unit (P in uC/cm^2); Z* and alpha are split into diagonal and off-diagonal components.
RMSE and MAE are weighted means over every component of every labelled row, accumulated as sums
(:func:`error_sums`) so that batches, dataloaders and DDP ranks add exactly.
"""

from __future__ import annotations

from typing import Dict, Iterator, Mapping, Optional, Tuple

import numpy as np
import torch

from mf_lightning.data.keys import ref_key, weight_key
from mf_lightning.data.quantities import QUANTITIES, metric_units, tasks
from mf_lightning.train.losses import per_atom, residual, structure_weights

_DIAG = torch.eye(3, dtype=torch.bool)


def batch_to_dict(batch, dtype: torch.dtype) -> Dict[str, torch.Tensor]:
    d = batch.to_dict() if hasattr(batch, "to_dict") else dict(batch)
    return {k: (v.to(dtype) if torch.is_tensor(v) and v.is_floating_point() else v) for k, v in d.items()}


def labelled_tasks(batch: Mapping[str, torch.Tensor]) -> Tuple[str, ...]:
    """The labels at least one structure of ``batch`` carries."""
    return tuple(t for t in tasks() if float(batch[weight_key(t)].sum()) > 0)


def metric_components(task: str, x: torch.Tensor) -> Dict[str, torch.Tensor]:
    """A task's values (in the loss's normalisation: energy per atom, P in e/A^2) as the metric
    quantities' (rows, components), in metric units; 3x3 tensors split into diagonal/off-diagonal
    where the quantity says so (Z*, alpha)."""
    q = QUANTITIES[task]
    if q.metric_scale != 1.0:
        x = x * q.metric_scale
    if q.split_diagonal:
        flat = x.reshape(-1, 3, 3)
        diag = _DIAG.to(flat.device)
        return {f"{task}_diag": flat[:, diag], f"{task}_offdiag": flat[:, ~diag]}
    return {task: x.reshape(x.shape[0], -1)}


def normalised_reference(task: str, batch) -> torch.Tensor:
    """The reference in the loss's normalisation (what :func:`residual` is measured in)."""
    ref = batch[ref_key(task)]
    return per_atom(ref, batch) if QUANTITIES[task].divide_by_atoms else ref


def reference_and_prediction(task: str, out: Mapping[str, torch.Tensor], batch):
    """(reference, prediction, error) per metric quantity, all on one branch, so that
    ``prediction - reference == error`` and RMSE, R^2 and parity plots agree. For P the prediction
    is the model's own (single-valued) P and the reference is folded onto the image nearest it;
    a zero predictor then sits on the horizontal axis, not near the diagonal."""
    err = metric_components(task, residual(task, out, batch).detach())
    if QUANTITIES[task].modulo_quantum:
        pred = metric_components(task, out[task].detach())
        return {q: pred[q] - err[q] for q in err}, pred, err
    ref = metric_components(task, normalised_reference(task, batch))
    return ref, {q: ref[q] + err[q] for q in err}, err


def zero_predictor_error(task: str, out: Mapping[str, torch.Tensor], batch) -> Dict[str, torch.Tensor]:
    """The errors of predicting 0 for everything (P folded as for the model): the trivial
    baseline printed beside each RMSE, so a user sees at once whether a quantity was learned."""
    zeros = {k: torch.zeros_like(v) for k, v in out.items() if torch.is_tensor(v)}
    return metric_components(task, residual(task, zeros, batch).detach())


def metric_rows(out: Mapping[str, torch.Tensor], batch) -> Iterator[tuple]:
    """(task, quantity, reference, prediction, error, row weights) of every labelled quantity
    the model returned, rows per structure or per atom; rows without the label have weight 0."""
    for task in labelled_tasks(batch):
        if task not in out:
            continue
        w_rows = structure_weights(task, batch).detach().double()
        refs, preds, errors = reference_and_prediction(task, out, batch)
        for q, err in errors.items():
            yield task, q, refs[q], preds[q], err, w_rows


def error_sums(err: torch.Tensor, row_weights: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
    """{sq, abs, count}: weighted sums of squared and absolute errors over rows and components."""
    err = torch.as_tensor(err).double()
    w = torch.ones(err.shape[0], dtype=torch.float64, device=err.device) if row_weights is None else row_weights
    w = w.double().reshape(-1, *([1] * (err.dim() - 1))).expand_as(err)
    return {"sq": (w * err ** 2).sum(), "abs": (w * err.abs()).sum(), "count": w.sum()}


def add_sums(total: Dict[str, torch.Tensor], sums: Mapping[str, torch.Tensor], prefix: str = "") -> None:
    for k, v in sums.items():
        total[prefix + k] = total.get(prefix + k, 0) + v


def rmse_mae(sums: Mapping[str, torch.Tensor], prefix: str = "") -> Tuple[torch.Tensor, torch.Tensor]:
    """RMSE and MAE from (possibly added-up) :func:`error_sums`, keys optionally prefixed."""
    count = torch.clamp(torch.as_tensor(sums[prefix + "count"], dtype=torch.float64), min=1e-300)
    return torch.sqrt(torch.as_tensor(sums[prefix + "sq"]) / count), torch.as_tensor(sums[prefix + "abs"]) / count


def stats(ref: np.ndarray, pred: np.ndarray, zero_error: Optional[np.ndarray] = None) -> Dict[str, float]:
    """RMSE, MAE (as in training: :func:`error_sums`, :func:`rmse_mae`), R^2 (1 - SS_res/SS_tot
    over all components) of ``pred`` against ``ref`` (one branch), and the RMSE of predicting 0."""
    err = (np.asarray(pred, float) - np.asarray(ref, float)).ravel()
    if err.size == 0:
        return {"n_values": 0}
    ss_tot = float(((ref - ref.mean()) ** 2).sum())
    zero = -np.asarray(ref, float) if zero_error is None else np.asarray(zero_error, float)
    rmse, mae = rmse_mae(error_sums(torch.from_numpy(err)))
    zero_rmse, _ = rmse_mae(error_sums(torch.from_numpy(zero.ravel())))
    return {"rmse": float(rmse), "mae": float(mae),
            "r2": float(1 - (err ** 2).sum() / ss_tot) if ss_tot > 0 else float("nan"),
            "zero_rmse": float(zero_rmse), "n_values": int(err.size)}


__all__ = ["batch_to_dict", "labelled_tasks", "metric_components", "metric_units", "normalised_reference",
           "reference_and_prediction", "zero_predictor_error", "metric_rows", "error_sums", "add_sums", "rmse_mae",
           "stats"]
