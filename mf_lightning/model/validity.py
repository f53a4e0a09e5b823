"""Physical validity flags: which predicted numbers a scientist must not act on, and why.

Every tool that prints a response (``mf-predict`` with both engines, ``eval.py``'s predictions,
``mf-phonons``, :func:`mf_lightning.analysis.dielectric.dielectric_properties`,
:func:`mf_lightning.analysis.piezo.piezo_tensors`) attaches the flags of :func:`response_flags` to
each structure. A flag never changes a number silently: where a number cannot mean anything
(eps_ion or the relaxed-ion piezoelectric tensor beside unstable modes, n of a non-positive
eps_inf) it is reported as empty/NaN *and* flagged, never as 0. The flags (one string each,
``;``-separated in tables):

``eps_inf_below_1``
    an eigenvalue of eps_inf (its symmetric part) is below 1, i.e. alpha has a negative
    eigenvalue: a negative electronic polarisability, impossible for a material at rest.
``eps_inf_not_positive``
    an eigenvalue of eps_inf is <= 0 (also flagged ``eps_inf_below_1``): n is undefined (NaN).
``alpha_asymmetric``
    alpha is not symmetric to :data:`SYMMETRY_RTOL` of its norm. The model's alpha is a second
    derivative of one enthalpy and symmetric to round-off, so this means numerics gone wrong.
``asr_violated``
    the acoustic sum rule fails: some component of sum_k Z*_k exceeds :data:`ASR_TOL` (e). The
    model obeys it to round-off, so again numerics (or a structure the graph splits).
``becs_sign:<El>``
    the Born charge of a clearly ionic site has the wrong sign. The heuristic, kept narrow so it
    is sound: in a structure that contains a halogen or chalcogen (F, Cl, Br, I, O, S, Se, Te),
    an s-block metal (groups 1-2, Li-Fr and Be-Ra) is a cation and F an anion in ordinary ionic
    compounds (alkalides, with Na- beside O-containing cryptands, are the rare exception); a
    mean diagonal Z* (tr Z*/3) below -:data:`SIGN_TOL` for such a cation, or above
    +:data:`SIGN_TOL` for F, is flagged. Transition metals, p-block cations and mixed-valence
    elements are left out: their Z* can legitimately be anomalous.
``unstable_modes``
    (``mf-predict --ionic`` / ``--piezo``, ``mf-phonons``) the model's Gamma-point Hessian has
    optic modes with omega^2 < 0: the structure is not at a minimum of the model's F, so eps_ion,
    eps_0 and the relaxed-ion piezoelectric tensor are reported empty/NaN (mf-phonons lists the
    modes with negative wavenumbers). Relax first (``--relax``) or check the structure.
``soft_modes``
    (``--ionic`` / ``--piezo``, ``mf-phonons``) an optic mode softer than 5 cm^-1 (|omega^2| <
    1e-4 eV/(A^2 amu)) carries charge: its 1/omega^2 cannot be resolved, so eps_ion, eps_0 and
    the relaxed-ion piezoelectric tensor are empty/NaN (near a ferroelectric instability eps_0
    diverges; left out, it would be under-reported, even 0).
``not_at_minimum``
    (``--ionic`` / ``--piezo``, ``mf-phonons``) the largest force on an atom exceeds
    :data:`MINIMUM_FORCE_TOL` (eV/A): eps_ion, the modes and the relaxed-ion piezoelectric tensor
    are the harmonic response of a minimum of F, and this structure is not at one of the model's
    (a DFT-relaxed structure is usually close enough; otherwise ``--relax`` first). The numbers
    are reported, flagged.
``relax_not_converged``
    (``--relax``) the relaxation stopped before the forces fell below ``--fmax``.
``unseen_element:<El>`` / ``rare_element:<El>``
    extrapolation: the element occurs in no training structure of the model (a weight that
    never learned anything), or in fewer than :data:`RARE_ELEMENT_COUNT`. Only for models that
    record their training composition (``FieldMACE.training_elements``, written by training).
    Environments far from training (new coordination, new bonding) are not detected by this:
    that needs an ensemble's spread (``high_uncertainty``).
``high_uncertainty:<quantity>``
    (a calibrated ensemble, :mod:`mf_lightning.model.ensemble`) the structure's calibrated
    sigma of ``<quantity>`` (``becs``, ``polarisability``, ``polarisation``, ``energy``,
    ``forces``, ``stress``: the RMS over its components, :func:`mf_lightning.model.uncertainty.structure_sigma`)
    is above the threshold stored in the ensemble file: the :data:`~mf_lightning.model.uncertainty.PERCENTILE`
    th percentile of the same measure over the calibration split. The members disagree more
    than on 95 % of the validation structures: the prediction is extrapolation, whatever its
    elements. The numbers are reported, with their ``_std`` columns.
``untrained``
    the user passed ``--allow-untrained``: some column needs a quantity the head never learned.
"""

from __future__ import annotations

from typing import Dict, Iterable, List, Mapping, Optional, Sequence

import numpy as np
from ase.data import chemical_symbols

from mf_lightning.units import EPS0_E_PER_V_A

ASR_TOL = 0.01  # e, per component of sum_k Z*_k
SYMMETRY_RTOL = 1e-4  # of |alpha|
SIGN_TOL = 0.05  # e: a mean diagonal Z* within this of 0 is not called a sign error
RARE_ELEMENT_COUNT = 3  # training structures
MINIMUM_FORCE_TOL = 0.05  # eV/A: above it a structure is not at a minimum of the model's F

ANIONS = frozenset({9, 17, 35, 53, 8, 16, 34, 52})  # F Cl Br I O S Se Te
S_BLOCK_CATIONS = frozenset({3, 11, 19, 37, 55, 87, 4, 12, 20, 38, 56, 88})  # groups 1-2 without H
ALWAYS_ANION = frozenset({9})  # F


def _sym(z: int) -> str:
    return chemical_symbols[int(z)]


def electronic_flags(polarisability: np.ndarray) -> List[str]:
    """Flags of alpha (e/(V A), (3, 3)) and the eps_inf it gives."""
    alpha = np.asarray(polarisability, dtype=float).reshape(3, 3)
    flags = []
    eps = np.eye(3) + alpha / EPS0_E_PER_V_A  # dielectric.eps_inf_from_alpha (which imports this module)
    lowest = float(np.linalg.eigvalsh(0.5 * (eps + eps.T)).min())
    if lowest < 1.0:
        flags.append("eps_inf_below_1")
    if lowest <= 0.0:
        flags.append("eps_inf_not_positive")
    if np.abs(alpha - alpha.T).max() > SYMMETRY_RTOL * max(np.abs(alpha).max(), 1e-12):
        flags.append("alpha_asymmetric")
    return flags


def born_charge_flags(numbers: Sequence[int], becs: np.ndarray) -> List[str]:
    """Acoustic sum rule and the sign heuristic (module docstring) for Z* (e, (N, 3, 3))."""
    numbers = np.asarray(numbers, dtype=int)
    becs = np.asarray(becs, dtype=float).reshape(len(numbers), 3, 3)
    flags = []
    if len(numbers) and np.abs(becs.sum(0)).max() > ASR_TOL:
        flags.append("asr_violated")
    if ANIONS.intersection(numbers.tolist()):
        mean_diag = np.trace(becs, axis1=1, axis2=2) / 3.0
        wrong = set()
        for z, q in zip(numbers.tolist(), mean_diag):
            if (z in S_BLOCK_CATIONS and q < -SIGN_TOL) or (z in ALWAYS_ANION and q > SIGN_TOL):
                wrong.add(z)
        flags += [f"becs_sign:{_sym(z)}" for z in sorted(wrong)]
    return flags


def extrapolation_flags(numbers: Iterable[int], training_elements: Optional[Mapping[int, int]]) -> List[str]:
    """``unseen_element``/``rare_element`` per element, from the model's training composition."""
    if not training_elements:
        return []
    flags = []
    for z in sorted(set(int(z) for z in numbers)):
        count = int(training_elements.get(z, 0))
        if count == 0:
            flags.append(f"unseen_element:{_sym(z)}")
        elif count < RARE_ELEMENT_COUNT:
            flags.append(f"rare_element:{_sym(z)}")
    return flags


def uncertainty_flags(sigmas: Optional[Mapping[str, float]],
                      thresholds: Optional[Mapping[str, float]]) -> List[str]:
    """``high_uncertainty:<quantity>`` for each per-structure sigma above its threshold."""
    if not sigmas or not thresholds:
        return []
    return [f"high_uncertainty:{q}" for q, v in sigmas.items()
            if thresholds.get(q) is not None and np.isfinite(v) and v > float(thresholds[q])]


def response_flags(numbers: Sequence[int], becs: Optional[np.ndarray] = None,
                   polarisability: Optional[np.ndarray] = None,
                   training_elements: Optional[Mapping[int, int]] = None,
                   unstable_modes: Optional[Sequence[float]] = None, relaxed: Optional[bool] = None,
                   soft_modes: Optional[Sequence[float]] = None, max_force: Optional[float] = None,
                   untrained: bool = False, uncertainty: Optional[Mapping[str, float]] = None,
                   uncertainty_thresholds: Optional[Mapping[str, float]] = None) -> List[str]:
    """Every flag (module docstring) of one structure's predictions; the parts not given are
    not checked. ``uncertainty``: an ensemble's per-structure sigma per quantity, with its
    ``uncertainty_thresholds``."""
    flags: List[str] = []
    if polarisability is not None:
        flags += electronic_flags(polarisability)
    if becs is not None:
        flags += born_charge_flags(numbers, becs)
    if unstable_modes:
        flags.append("unstable_modes")
    if soft_modes:
        flags.append("soft_modes")
    if max_force is not None and max_force > MINIMUM_FORCE_TOL:
        flags.append("not_at_minimum")
    if relaxed is False:
        flags.append("relax_not_converged")
    flags += extrapolation_flags(numbers, training_elements)
    flags += uncertainty_flags(uncertainty, uncertainty_thresholds)
    if untrained:
        flags.append("untrained")
    return flags


def join(flags: Sequence[str]) -> str:
    return ";".join(flags)


def count_flags(rows: Iterable[str]) -> Dict[str, int]:
    """{flag name (without its element): rows carrying it} over ``;``-joined flag strings."""
    counts: Dict[str, int] = {}
    for text in rows:
        for name in {f.split(":")[0] for f in str(text or "").split(";") if f}:
            counts[name] = counts.get(name, 0) + 1
    return counts


def summary_line(n_rows: int, flag_rows: Sequence[str]) -> str:
    """``k of n structures flagged (name: count, ...)`` for the end of a tool's output."""
    flagged = sum(1 for f in flag_rows if f)
    counts = count_flags(flag_rows)
    detail = ", ".join(f"{k}: {v}" for k, v in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
    return f"{flagged} of {n_rows} structures flagged" + (f" ({detail})" if detail else "") + (
        "; see the flags column and README 'What the numbers mean'" if flagged else "")
