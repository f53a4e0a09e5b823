"""The numbers of an ensemble's uncertainty (:mod:`mf_lightning.model.ensemble`), for every layer
(the calculator, screening, evaluation, calibration: :mod:`mf_lightning.analysis.uncertainty`).

* **sigma** of a value: the members' standard deviation (ddof=1) times the calibration factor of
  its quantity. Derived quantities get the spread of their members' values: eps_inf, eps_poly and
  n from each member's alpha, with alpha's factors (to first order n's spread scales with
  alpha's; eps_poly and n are means of the diagonal: its factor); eps_0 (``--ionic``) from each
  member's Hessian and Z*, uncalibrated (no label fits it).
* **coverage** (:func:`coverage`, in ``eval.py``'s metrics and table, and before/after in the
  calibration record): the fractions of errors within 1 and 2 sigma (68 % and 95 % for a
  calibrated Gaussian), the Spearman correlation of |error| with sigma (does a larger sigma mean
  a larger error?) and RMS(error/sigma) (about 1 for Gaussian errors; larger where the tails are
  heavy). Values whose sigma is below
  :data:`SIGMA_FLOOR` of the quantity's RMS sigma are fixed by symmetry in every member (an
  off-diagonal Z* of a symmetric site): left out of the calibration and the coverage, counted as
  ``n_fixed``.
* **a structure's sigma** of an output (:func:`structure_sigma`, what ``high_uncertainty`` of
  :mod:`mf_lightning.model.validity` compares with the ensemble's stored threshold): the RMS of
  its calibrated sigma over the output's components, energy per atom; internal units (eV/atom,
  eV/A, eV/A^3, e/A^2, e, e/(V A)). The threshold is the :data:`PERCENTILE` th percentile of it
  over the calibration split's structures.
"""

from __future__ import annotations

import warnings
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np

from mf_lightning.units import EPS0_E_PER_V_A

ONE_SIGMA = 0.6827  # a Gaussian's fraction within one sigma: the calibration's target coverage
PERCENTILE = 95.0  # of the calibration split's per-structure sigma: the high_uncertainty threshold
SIGMA_FLOOR = 1e-6  # of a quantity's RMS sigma: below it a value is fixed by symmetry (left out)


def member_std(stack: np.ndarray, scale: float = 1.0) -> np.ndarray:
    """The members' standard deviation (first axis, ddof=1) times ``scale``; NaN where a member is."""
    stack = np.asarray(stack, dtype=float)
    return np.std(stack, axis=0, ddof=1) * float(scale)


def fixed_by_symmetry(sigma: np.ndarray) -> np.ndarray:
    """Values whose sigma is below :data:`SIGMA_FLOOR` of the RMS sigma (every member agrees to
    round-off: a component fixed by symmetry)."""
    sigma = np.asarray(sigma, dtype=float)
    finite = sigma[np.isfinite(sigma)]
    rms = float(np.sqrt(np.mean(finite ** 2))) if finite.size else 0.0
    return ~(sigma > SIGMA_FLOOR * rms) if rms > 0 else np.ones(sigma.shape, bool)


def _usable(errors, sigma):
    e, s = np.asarray(errors, float).ravel(), np.asarray(sigma, float).ravel()
    finite = np.isfinite(e) & np.isfinite(s)
    fixed = finite & fixed_by_symmetry(np.where(finite, s, np.nan))
    keep = finite & ~fixed
    return e[keep], s[keep], int(fixed.sum())


def calibration_factor(errors: np.ndarray, sigma: np.ndarray, target: float = ONE_SIGMA) -> float:
    """``s`` such that a fraction ``target`` (a Gaussian's 68.27 %) of the usable values have
    |error| <= s sigma: the ``target`` quantile of |error| / sigma (NaN if there are none).

    A quantile, not RMS(error/sigma): on MP-Dielectric and the ferroelectric paths a few values
    with a tiny spread and a large error (a mislabelled structure, a frame every member gets
    equally wrong) made the RMS factor 10^5 (measured: every sigma then covered every error and
    the high_uncertainty threshold was meaningless); the quantile is set by the bulk of the
    errors, and the coverage reports how the tails fare."""
    e, s, _ = _usable(errors, sigma)
    return float(np.quantile(np.abs(e) / s, target)) if e.size else float("nan")


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation (NaN for fewer than 3 values or a constant input)."""
    a, b = np.asarray(a, float).ravel(), np.asarray(b, float).ravel()
    if a.size < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    from scipy.stats import spearmanr

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(spearmanr(a, b).correlation)


def coverage(errors: np.ndarray, sigma: np.ndarray) -> Dict[str, float]:
    """How well sigma describes the errors (module docstring): ``within_1_sigma``,
    ``within_2_sigma``, ``spearman`` (|error| vs sigma), ``rms_z`` (RMS error/sigma),
    ``rms_sigma``, ``n_values`` (used) and ``n_fixed`` (left out: fixed by symmetry)."""
    e, s, fixed = _usable(errors, sigma)
    if not e.size:
        return {"n_values": 0, "n_fixed": fixed}
    z = np.abs(e) / s
    return {"within_1_sigma": float(np.mean(z <= 1.0)), "within_2_sigma": float(np.mean(z <= 2.0)),
            "spearman": spearman(np.abs(e), s), "rms_z": float(np.sqrt(np.mean(z ** 2))),
            "rms_sigma": float(np.sqrt(np.mean(s ** 2))), "n_values": int(e.size), "n_fixed": fixed}


def sigma_parts(key: str, std, n_atoms: int) -> Dict[str, tuple]:
    """{metric quantity: (sum of squared sigma, number of values)} of one structure's sigma of
    output ``key`` (internal units; energy per atom; Z* and alpha diagonal and off-diagonal)."""
    from mf_lightning.data.quantities import QUANTITIES

    std = np.asarray(std, dtype=float)
    if key == "energy":
        return {key: ((float(np.abs(std).sum()) / max(int(n_atoms), 1)) ** 2, 1)}
    if key in QUANTITIES and QUANTITIES[key].split_diagonal:
        m, diag = std.reshape(-1, 3, 3), np.eye(3, dtype=bool)
        return {f"{key}_diag": (float((m[:, diag] ** 2).sum()), int(m[:, diag].size)),
                f"{key}_offdiag": (float((m[:, ~diag] ** 2).sum()), int(m[:, ~diag].size))}
    return {key: (float((std ** 2).sum()), int(std.size))}


def combined_sigma(parts: Mapping[str, tuple], scale: Optional[Mapping[str, float]] = None) -> float:
    """sqrt(sum_q s_q^2 SS_q / sum_q n_q): the RMS of the (scaled) sigma over all parts."""
    scale = scale or {}
    count = sum(n for _, n in parts.values())
    total = sum(float(scale.get(q, 1.0)) ** 2 * ss for q, (ss, _) in parts.items())
    return float(np.sqrt(total / count)) if count else float("nan")


def structure_sigma(key: str, std, n_atoms: int) -> float:
    """One structure's sigma of output ``key``: the RMS over its components (energy: per atom)."""
    return combined_sigma(sigma_parts(key, std, n_atoms))


def structure_sigmas(spread: Mapping[str, Any], n_atoms: int) -> Dict[str, float]:
    """{output: :func:`structure_sigma`} of one structure's ``{output: std array}``."""
    return {k: structure_sigma(k, v, n_atoms) for k, v in spread.items() if v is not None}


def batch_sigma_parts(out, d, tasks: Sequence[str]) -> Dict[str, List[dict]]:
    """{output: :func:`sigma_parts` of every structure labelled with it} for a batch."""
    from mf_lightning.data import keys
    from mf_lightning.data.keys import weight_key
    from mf_lightning.data.quantities import QUANTITIES

    ptr = d[keys.PTR].cpu().numpy()
    found = {}
    for task in tasks:
        if task + "_std" not in out:
            continue
        std = out[task + "_std"].detach().double().cpu().numpy()
        labelled = (d[weight_key(task)].view(-1) > 0).cpu().numpy()
        per_atom = QUANTITIES[task].per_atom
        found[task] = [sigma_parts(task, std[ptr[g]:ptr[g + 1]] if per_atom else std[g], ptr[g + 1] - ptr[g])
                       for g in range(len(ptr) - 1) if labelled[g]]
    return found


def diagonal_factor(scale) -> float:
    """The factor of the diagonal components (a number, or a 3x3 factor's diagonal)."""
    return float(np.mean(np.diagonal(scale))) if np.ndim(scale) else float(scale)


def derived_spreads(alpha_members: np.ndarray, scale=1.0) -> Dict[str, np.ndarray]:
    """The spread of eps_inf (3x3 per component), eps_poly and n over the members' alpha
    (members on the first axis, (M, ..., 3, 3)), times alpha's factor ``scale`` (a number or its
    3x3 :meth:`~mf_lightning.model.ensemble.FieldMACEEnsemble.sigma_scale`; eps_poly and n are
    means of the diagonal: its factor)."""
    # eps_inf, eps_poly and n as mf_lightning.analysis.dielectric computes them (which is above this layer)
    eps = np.eye(3) + np.asarray(alpha_members, dtype=float) / EPS0_E_PER_V_A
    poly = np.linalg.eigvalsh(0.5 * (eps + np.swapaxes(eps, -1, -2))).mean(-1)
    diag = diagonal_factor(scale)
    n = np.sqrt(np.where(poly >= 0, poly, np.nan))
    return {"eps_inf": member_std(eps) * np.asarray(scale, dtype=float), "eps_poly": member_std(poly, diag),
            "n": member_std(n, diag)}
