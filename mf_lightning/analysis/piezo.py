"""Piezoelectric stress tensors e_{i,jk} (C/m^2) from exact derivatives of the enthalpy F(R, E, eps).

Clamped-ion (the atoms follow the homogeneous strain, fractional coordinates fixed):

    e_clamped_ijk = (1/Omega) dM_i/d eps_jk - (delta_ij P_k + delta_ik P_j) / 2,

with M = Omega P = -dF/dE, so (1/Omega) dM_i/d eps_jk = -(1/Omega) d^2F/(dE_i d eps_jk), the mixed
derivative of F by autograd through the strained structure
(:mod:`~mf_lightning.analysis.response_tensors`). This is the *proper* tensor (Vanderbilt, J. Phys.
Chem. Solids 61, 147 (2000)): the one DFPT gives and experiments measure, the derivative of the
polarisation in reduced (lattice) coordinates, independent of the branch of P and so of where
atoms are wrapped and of the cell's origin. The *improper* one, the plain derivative of P at
fixed fractional coordinates, dP_i/d eps_jk = (1/Omega) dM_i/d eps_jk - delta_jk P_i (what a
finite difference of the model's P under strain gives), is recorded beside it
(``e_clamped_improper``); the two differ only where P != 0.

Relaxed-ion adds the internal relaxation of the atoms under strain:

    e_relaxed = e_clamped - (1/Omega) sum Z* H^+ Lambda
              = e_clamped - (1/Omega) sum_m Zm_i Lm_jk / omega_m^2,

with Lambda_{ka,jk} = d^2F/(dR_ka d eps_jk) (the internal-strain tensor, minus the forces a
homogeneous strain puts on the atoms), H the Gamma-point Hessian of
:func:`~mf_lightning.analysis.dielectric.model_hessian` (memory-bounded) and H^+ its
pseudo-inverse on the optical modes: in the modes m of the mass-weighted Hessian with the three
translations projected out (:func:`~mf_lightning.analysis.dielectric.optical_modes`), Zm the mode
charges of eps_ion and Lm_jk = sum_ka Lambda_{ka,jk} e_m,ka / sqrt(M_k). As for eps_ion, an
unstable mode (omega^2 < 0: not a minimum of F) or a soft mode carrying charge makes the relaxed
tensor NaN (flagged ``unstable_modes`` / ``soft_modes``), never the sum over the other modes;
that sum is kept as a diagnostic, ``e_ion_stable_modes``.

Voigt form: e_{i,alpha} with alpha = xx, yy, zz, yz, xz, xy (1..6), e_{i4} = e_{i,yz} (no factor 2:
it multiplies the engineering shear strain). Units: e/A^2 x 16.0218 = C/m^2.

Trust: the clamped tensor needs a head that learned P or Z* (the field response); the relaxed one
also energies and forces (the Hessian and Lambda). Others are refused
(:meth:`FieldMACE.check_learned`; ``allow_untrained`` computes them with a warning).

An ensemble gives the tensors of its mean F (the members' mean derivatives and Hessian, as its
eps_ion) and, as their spread, the members' standard deviation of their own tensors
(:func:`piezo_of`).
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Sequence

import numpy as np
import torch

from mf_lightning.analysis.dielectric import UNSTABLE_TOL, ionic_dielectric
from mf_lightning.analysis.response_tensors import VOIGT_PAIRS
from mf_lightning.units import E_PER_A2_TO_C_PER_M2

# the field response either of these learned gives the clamped-ion tensor
FIELD_RESPONSE = ("becs", "polarisation")
VOIGT_LABELS = ("xx", "yy", "zz", "yz", "xz", "xy")
UNITS = {"e_clamped": "C/m^2", "e_clamped_improper": "C/m^2", "e_relaxed": "C/m^2", "e_ion": "C/m^2",
         "e_ion_stable_modes": "C/m^2", "polarisation": "e/A^2", "max_force": "eV/A", "volume": "A^3"}


def to_voigt(e: np.ndarray) -> np.ndarray:
    """e_{i,jk} (..., 3, 3, 3) -> e_{i,alpha} (..., 3, 6), alpha in xx yy zz yz xz xy order."""
    e = np.asarray(e, dtype=float)
    return np.stack([e[..., j, k] for j, k in VOIGT_PAIRS], axis=-1)


def proper_clamped(dM_deps: np.ndarray, polarisation: np.ndarray, volume: float) -> Dict[str, np.ndarray]:
    """The proper and improper clamped-ion tensors (e/A^2, (3, 3, 3)) from dM/d eps (e A), P, Omega."""
    P = np.asarray(polarisation, dtype=float)
    eye = np.eye(3)
    first = np.asarray(dM_deps, dtype=float) / float(volume)
    proper = first - 0.5 * (np.einsum("ij,k->ijk", eye, P) + np.einsum("ik,j->ijk", eye, P))
    improper = first - np.einsum("jk,i->ijk", eye, P)
    return {"proper": proper, "improper": improper}


def internal_strain_term(hessian: np.ndarray, becs: np.ndarray, internal_strain: np.ndarray, masses: np.ndarray,
                         volume: float, unstable_tol: float = UNSTABLE_TOL) -> Dict[str, Any]:
    """-(1/Omega) Z* H^+ Lambda (e/A^2, (3, 3, 3)) over the optical modes (module docstring), NaN
    beside unstable or polar soft modes; with the modes' classification of
    :func:`~mf_lightning.analysis.dielectric.ionic_dielectric` (also returned, as ``ionic``)."""
    masses = np.asarray(masses, dtype=float)
    ion = ionic_dielectric(hessian, becs, masses, volume, unstable_tol=unstable_tol)
    omega2 = ion["omega2"]
    weighted = ion["modes"] / np.sqrt(masses)[None, :, None]
    Lm = np.einsum("kajl,mka->mjl", np.asarray(internal_strain, dtype=float), weighted)
    stable = omega2 > unstable_tol
    term = -np.einsum("mi,mjl->ijl", ion["mode_charges"][stable], Lm[stable] / omega2[stable, None, None]) / volume
    undefined = bool(ion["unstable_modes_cm"] or ion["soft_polar_modes_cm"])
    return {"e_ion": np.full((3, 3, 3), np.nan) if undefined else term, "e_ion_stable_modes": term, "ionic": ion}


def require_any(model, options: Sequence[str], what: str, head: Optional[str], allow_untrained: bool) -> Optional[str]:
    """:meth:`FieldMACE.check_learned` for "any one of ``options``": None if the head learned one
    of them (or does not record what it learned), else its refusal (or, ``allow_untrained``, its
    warning) naming them."""
    learned = model.learned_quantities(head)
    if learned is None or set(options) & set(learned):
        return None
    return model.check_learned([" or ".join(options)], what, head=head, allow_untrained=allow_untrained)


def check_piezo_learned(model, head: Optional[str], relaxed: bool, allow_untrained: bool = False) -> list:
    """Refuse a head that never learned what the tensors need (module docstring); the warnings
    ``allow_untrained`` let through."""
    notes = [require_any(model, FIELD_RESPONSE, "the piezoelectric tensor", head, allow_untrained)]
    if relaxed:
        notes.append(model.check_learned(("energy", "forces"), "the relaxed-ion piezoelectric tensor (the Hessian)",
                                         head=head, allow_untrained=allow_untrained))
    return [n for n in notes if n]


def resolve_response_head(model, head: Optional[str], also: Sequence[str] = ()) -> str:
    """The head for the field response (Z*, else P) and ``also``: :meth:`FieldMACE.resolve_head`."""
    from mf_lightning.errors import HeadError

    try:
        return model.resolve_head(head, ("becs", *also))
    except HeadError:
        return model.resolve_head(head, ("polarisation", *also))


def piezo_from_derivatives(derivatives: Dict[str, Any], hessian: Optional[np.ndarray] = None,
                           masses: Optional[np.ndarray] = None) -> Dict[str, Any]:
    """The tensors (C/m^2) from :func:`~mf_lightning.analysis.response_tensors.enthalpy_derivatives`
    (and, for the relaxed-ion one, the Hessian and masses)."""
    d = derivatives
    clamped = proper_clamped(d["dM_deps"], d["polarisation"], d["volume"])
    out: Dict[str, Any] = {"e_clamped": clamped["proper"] * E_PER_A2_TO_C_PER_M2,
                           "e_clamped_improper": clamped["improper"] * E_PER_A2_TO_C_PER_M2}
    if hessian is not None:
        ion = internal_strain_term(hessian, d["becs"], d["internal_strain"], masses, d["volume"])
        out["e_ion"] = ion["e_ion"] * E_PER_A2_TO_C_PER_M2
        out["e_ion_stable_modes"] = ion["e_ion_stable_modes"] * E_PER_A2_TO_C_PER_M2
        out["e_relaxed"] = out["e_clamped"] + out["e_ion"]
        out["unstable_modes_cm"] = ion["ionic"]["unstable_modes_cm"]
        out["soft_polar_modes_cm"] = ion["ionic"]["soft_polar_modes_cm"]
    for key in [k for k in out if k.startswith("e_")]:
        out[key + "_voigt"] = to_voigt(out[key])
    return out


def piezo_of(model, atoms, field=(0.0, 0.0, 0.0), head: Optional[str] = None, relaxed: bool = True,
             dtype: Optional[torch.dtype] = None, hessians: Optional[Sequence[np.ndarray]] = None,
             max_memory: Optional[float] = None, allow_untrained: bool = False) -> Dict[str, Any]:
    """:func:`piezo_from_derivatives` for ``atoms`` with ``model`` at ``field`` on ``head`` (resolved
    and checked by the caller), plus P, the volume, Z*, alpha and the largest force (``relaxed``).
    ``hessians``: the Gamma-point Hessian of each member (one for a single model), e.g. those eps_ion
    was computed with, reused; otherwise computed here (``max_memory``). An ensemble
    (:class:`~mf_lightning.model.ensemble.FieldMACEEnsemble`) gives the tensors of its mean F, from the
    members' mean derivatives and mean Hessian as its eps_ion, and ``e_clamped_voigt_std`` /
    ``e_relaxed_voigt_std``: the members' standard deviation (ddof=1) of their own tensors, raw (no
    calibration factor; NaN where a member's relaxed tensor is)."""
    from mf_lightning.analysis.dielectric import model_hessian
    from mf_lightning.analysis.response_tensors import enthalpy_derivatives

    members = list(getattr(model, "members", None) or [model])
    dtype = dtype or model.dtype
    each = [enthalpy_derivatives(m, atoms, field=field, head=head, dtype=dtype, internal_strain=relaxed)
            for m in members]
    if not relaxed:
        hessians = [None] * len(members)
    elif hessians is None:
        hessians = [model_hessian(m, atoms, field=field, head=head, dtype=dtype, max_memory=max_memory,
                                  allow_untrained=allow_untrained, log_cost=True) for m in members]
    d = each[0] if len(each) == 1 else {k: np.mean([x[k] for x in each], axis=0) for k in each[0]}
    H = hessians[0] if len(hessians) == 1 or not relaxed else np.mean(hessians, axis=0)
    masses = atoms.get_masses()
    out = piezo_from_derivatives(d, H, masses)
    if len(members) > 1:
        from mf_lightning.model.uncertainty import member_std

        own = [piezo_from_derivatives(x, h, masses) for x, h in zip(each, hessians)]
        for key in ("e_clamped_voigt", "e_relaxed_voigt"):
            if key in out:
                out[key + "_std"] = member_std([p[key] for p in own])
    out.update(polarisation=d["polarisation"], volume=d["volume"], becs=d["becs"], polarisability=d["polarisability"],
               max_force=float(np.abs(d["forces"]).max()) if relaxed and len(atoms) else None)
    return out


def piezo_tensors(model, atoms, field=(0.0, 0.0, 0.0), head: Optional[str] = None, relaxed: bool = True,
                  dtype: torch.dtype = torch.float64, max_memory: Optional[float] = None,
                  allow_untrained: bool = False) -> Dict[str, Any]:
    """Clamped- and (``relaxed``) relaxed-ion piezoelectric tensors of ``atoms`` (as given: relax
    it first, e.g. with :func:`~mf_lightning.analysis.dielectric.relax_structure`) with ``model``
    (a FieldMACE, or an ensemble: :func:`piezo_of`) at ``field`` (V/A). Returns the tensors (C/m^2,
    (3, 3, 3) and ``*_voigt`` (3, 6)), P, the largest force, the unstable / soft polar modes, ``flags``
    (:func:`mf_lightning.model.validity.response_flags`) and ``warnings`` (untrained quantities let
    through by ``allow_untrained``)."""
    from mf_lightning.model.validity import response_flags

    head = resolve_response_head(model, head, ("energy", "forces") if relaxed else ())
    warnings = check_piezo_learned(model, head, relaxed, allow_untrained)
    out = piezo_of(model, atoms, field=field, head=head, relaxed=relaxed, dtype=dtype, max_memory=max_memory,
                   allow_untrained=allow_untrained)
    out.update(head=head, warnings=warnings)
    out["flags"] = response_flags(atoms.get_atomic_numbers(), becs=out["becs"], polarisability=out["polarisability"],
                                  training_elements=getattr(model, "training_elements", None),
                                  unstable_modes=out.get("unstable_modes_cm"),
                                  soft_modes=out.get("soft_polar_modes_cm"), max_force=out["max_force"],
                                  untrained=bool(warnings))
    return out


def strain_derivative(calc, atoms, get, pairs=((0, 0), (1, 2)), h: float = 2e-3, relax: bool = True,
                      fmax: float = 1e-6, steps: int = 1000) -> Dict[tuple, np.ndarray]:
    """Central differences of ``get(strained atoms)`` (a property of ``calc``, e.g. its P or stress)
    over the symmetric strains eps_jk = eps_kj = +-h/2 (an engineering shear strain h; a normal
    strain h for j = k) of each (j, k) in ``pairs``, at fixed fractional coordinates, with the ions
    relaxed in each strained cell (``relax``) or not. An independent check of the analytic tensors;
    ``atoms`` should be relaxed far below the forces a strain h makes."""
    from mf_lightning.analysis.dielectric import relax_structure

    out = {}
    for j, k in pairs:
        eps = np.zeros((3, 3))
        eps[j, k] += 0.5 * h
        eps[k, j] += 0.5 * h
        values = []
        for sign in (1.0, -1.0):
            a = atoms.copy()
            a.set_cell(atoms.cell.array @ (np.eye(3) + sign * eps), scale_atoms=True)
            if relax:
                relax_structure(a, calc, fmax=fmax, steps=steps)
            a.calc = calc
            values.append(np.array(get(a), dtype=float))
        out[(j, k)] = (values[0] - values[1]) / (2 * h)
    return out


def finite_difference_piezo(calc, atoms, pairs=((0, 0), (1, 2)), h: float = 2e-3, relax: bool = True,
                            fmax: float = 1e-6, steps: int = 1000) -> Dict[tuple, np.ndarray]:
    """:func:`strain_derivative` of the model's P (C/m^2): the column e[:, j, k] of the relaxed-ion
    tensor (``relax``) or of the clamped-ion improper one."""
    fd = strain_derivative(calc, atoms, calc.get_polarisation, pairs, h=h, relax=relax, fmax=fmax, steps=steps)
    return {pair: value * E_PER_A2_TO_C_PER_M2 for pair, value in fd.items()}
