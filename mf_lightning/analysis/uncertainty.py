"""Calibration of an ensemble's spread (``mf-ensemble ... --calibrate DATA``, ``train.py ...
ensemble=N``): the numbers are :mod:`mf_lightning.model.uncertainty`'s.

A deep ensemble's raw spread is usually too small. :func:`calibrate` fits, for each metric
quantity (energy, forces, stress, P, and Z* and alpha each diagonal and off-diagonal: their
errors and spreads differ by orders of magnitude), one scalar ``s``, the 68.27 % quantile of
|error| / sigma_raw over every labelled value of the calibration split, so that 68.27 % of its
errors lie within one calibrated sigma as for a Gaussian (a quantile, because an RMS is set by a
few values of tiny spread: :func:`~mf_lightning.model.uncertainty.calibration_factor`); values
as the metrics measure them (energy per atom, P folded onto
the reference's branch; :func:`mf_lightning.analysis.evaluate.collect_predictions`). Structures
that any member trained on (its run folder's ``splits/``) are left out. The ``high_uncertainty``
threshold of each output is the :data:`~mf_lightning.model.uncertainty.PERCENTILE` th percentile
of the calibrated per-structure sigma (:func:`~mf_lightning.model.uncertainty.structure_sigma`)
over the calibration split's structures: a flagged structure is less certain than 95 % of them,
in units the model measured itself on. Both are stored in the ensemble file
(``FieldMACEEnsemble.calibration``), with the coverage before and after.
"""

from __future__ import annotations

import logging
from typing import Any, Dict, Optional

import numpy as np

from mf_lightning.errors import InputError
from mf_lightning.model.uncertainty import PERCENTILE, calibration_factor, combined_sigma, coverage

log = logging.getLogger(__name__)

MIN_STRUCTURES = 5  # labelled calibration structures a quantity needs for its factor


def _fit(collected, percentile: float) -> Dict[str, Any]:
    """Factors per metric quantity and thresholds per output from raw-sigma predictions
    (:class:`~mf_lightning.analysis.evaluate.Collected`)."""
    scale, threshold, n_values, n_structures, before, after = {}, {}, {}, {}, {}, {}
    for q, task in collected.task_of.items():
        sigma = collected.sigma_array(q)
        structures = len(collected.scores.get(task) or [])
        if q == "n" or sigma is None:
            continue
        ref, pred, _, _ = collected.arrays(q)
        s = calibration_factor(pred - ref, sigma)
        if structures < MIN_STRUCTURES or not np.isfinite(s) or s <= 0:
            log.warning("calibration: %s left uncalibrated (%d labelled structures, %d needed; factor %s)", q,
                        structures, MIN_STRUCTURES, s)
            continue
        scale[q], n_values[q], n_structures[q] = s, int(np.isfinite(sigma).sum()), structures
    for task, parts in collected.scores.items():
        sigmas = np.array([combined_sigma(p, scale) for p in parts])
        sigmas = sigmas[np.isfinite(sigmas)]
        if any(q in scale for q in parts[0]) and sigmas.size:
            threshold[task] = float(np.percentile(sigmas, percentile))
    for q, task in collected.task_of.items():
        sigma = collected.sigma_array(q)
        factor = scale.get("polarisability_diag") if q == "n" else scale.get(q)
        if sigma is None or factor is None:
            continue
        ref, pred, _, _ = collected.arrays(q)
        before[q] = coverage(pred - ref, sigma)
        after[q] = coverage(pred - ref, sigma * factor)
    return {"scale": scale, "threshold": threshold, "percentile": float(percentile), "n_structures": n_structures,
            "n_values": n_values, "coverage_raw": before, "coverage_calibrated": after}


def calibrate(ensemble, dm, split: str, batch_size: int = 8, percentile: float = PERCENTILE,
              data: Optional[str] = None, seed: Optional[int] = None) -> Dict[str, Any]:
    """Fit the ensemble's calibration (module docstring) on ``split`` of every source of a set-up
    data module bound to it, leaving out the structures any member trained on; sets and returns
    ``ensemble.calibration``."""
    from mf_lightning.analysis.evaluate import Collected, collect_predictions
    from mf_lightning.model.ensemble import trained_ids

    exclude = trained_ids(ensemble)
    collected, offset, used, skipped = Collected(), 0, {}, 0
    with ensemble.raw_spread():
        for name, src in dm.sources.items():
            splits = ["train", "val", "test"] if split == "all" else [split]
            pairs = [(g, m) for s in splits for g, m in zip(src.datasets[s], src.meta[s])]
            kept = [g for g, m in pairs if m["id"] not in exclude]
            skipped += len(pairs) - len(kept)
            used[name] = len(kept)
            if kept:
                collect_predictions(ensemble, kept, batch_size=batch_size, collected=collected, offset=offset)
                offset += len(kept)
    if skipped:
        log.info("calibration: %d structures left out (in a member's training split)", skipped)
    if not offset:
        raise InputError(f"no structure of the {split} split is free of every member's training data"
                         + (f" ({skipped} left out): the members were trained on different splits (seed= draws the "
                            "split too): train them with one data.seed=, or calibrate on a held-out file"
                            if skipped else ""))
    fitted = _fit(collected, percentile)
    if not fitted["scale"]:
        raise InputError(f"nothing to calibrate: no output of the ensemble has {MIN_STRUCTURES} or more labelled "
                         f"structures in the {split} split")
    ensemble.calibration = {"data": data, "split": split, "seed": seed, "structures_used": used,
                            "structures_left_out": skipped, **fitted}
    return ensemble.calibration


def calibrate_on_validation(ensemble, cfg) -> Optional[dict]:
    """The ensemble calibrated on the members' validation split (None, with a warning, where
    that cannot be done: no validation split, too few labelled structures)."""
    import copy

    from omegaconf import open_dict

    from mf_lightning.train.pipeline import bind_to_model, make_datamodule

    data_cfg = copy.deepcopy(cfg)
    with open_dict(data_cfg):
        data_cfg.paths.output_dir = None  # the split record is the members' own
    try:
        dm = make_datamodule(data_cfg)
        bind_to_model(dm, ensemble)
        dm.setup()
        return calibrate(ensemble, dm, "val", batch_size=int(cfg.data.get("eval_batch_size", 8) or 8),
                         data=str(cfg.data.get("name") or "data"), seed=int(cfg.seed))
    except InputError as exc:
        log.warning("ensemble not calibrated: %s (mf-ensemble --calibrate DATA calibrates it later)", exc)
        return None


def calibration_table(calibration) -> str:
    """The calibration per quantity as mf-ensemble and ``train.py ... ensemble=N`` print it."""
    from mf_lightning.utils import markdown_table

    nan = float("nan")
    rows = []
    for q, after in calibration["coverage_calibrated"].items():
        before = calibration["coverage_raw"][q]
        factor = calibration["scale"].get("polarisability_diag" if q == "n" else q)
        threshold = calibration["threshold"].get(q.replace("_diag", ""))  # one per output, on its first row
        rows.append([q, f"{factor:.3g}", f"{before.get('within_1_sigma', nan):.3f}",
                     f"{after.get('within_1_sigma', nan):.3f}", f"{after.get('within_2_sigma', nan):.3f}",
                     f"{after.get('spearman', nan):.3f}", "-" if threshold is None else f"{threshold:.4g}",
                     after["n_values"]])
    return markdown_table(["quantity", "factor s", "within 1 sigma raw", "within 1 sigma", "within 2 sigma",
                           "Spearman(|err|, sigma)", "high_uncertainty above", "values"], rows)
