"""Dielectric properties derived from the model's response (SPEC section 1).

Electronic (clamped-ion) part, from alpha alone:

* ``eps_inf = I + alpha / eps0`` (alpha in e/(V A), eps0 = 0.0055263 e/(V A));
* ``eps_poly`` = mean of the three eigenvalues of (the symmetric part of) eps_inf;
* refractive index ``n = sqrt(eps_poly)``.

Ionic (static) part, from the model's own Gamma-point Hessian and Born charges:

* H_{ka,lb} = d^2F / dR_ka dR_lb (eV/A^2), by autograd through the forces;
* dynamical matrix D = H / sqrt(M_k M_l) (eV/(A^2 amu)), diagonalised in the space orthogonal
  to the three rigid translations (so the acoustic modes are removed exactly, not by picking
  the three smallest eigenvalues);
* mode charges Zm_i = sum_{k,a} Z*_{k,ia} e_ka / sqrt(M_k) (e/sqrt(amu));
* ``eps_ion_ij = (1 / (eps0 Omega)) sum_m Zm_i Zm_j / omega_m^2`` (dimensionless with the units
  above: e^2 A^2 / eV / (e/(V A) A^3) = 1);
* ``eps_0 = eps_inf + eps_ion``.

Modes with omega^2 < -``unstable_tol`` are unstable (the structure is not at a minimum of F):
they are listed (as negative wavenumbers, the usual convention for imaginary frequencies) and
left out of eps_ion, as are soft modes with |omega^2| below the tolerance, whose 1/omega^2 would
be noise. Relax first (``relax=True``) for a meaningful eps_ion.
"""

from __future__ import annotations

import math
from typing import Any, Dict, Optional

import numpy as np
import torch
from ase import units as ase_units

from mf_lightning.units import EPS0_E_PER_V_A

# sqrt(eV / (A^2 amu)) in rad/s, then in cm^-1 (divide by 2 pi c)
_RAD_PER_S = math.sqrt(ase_units._e / ase_units._amu) * 1e10
_SPEED_OF_LIGHT_CM_PER_S = ase_units._c * 100.0
OMEGA_TO_INVCM = _RAD_PER_S / (2 * math.pi * _SPEED_OF_LIGHT_CM_PER_S)
UNSTABLE_TOL = 1e-4  # eV/(A^2 amu), ~ 5 cm^-1


# ---------------------------------------------------------------------- electronic part
def eps_inf_from_alpha(alpha: np.ndarray) -> np.ndarray:
    """eps_inf = I + alpha/eps0; alpha (..., 3, 3) in e/(V A)."""
    alpha = np.asarray(alpha, dtype=float)
    return np.eye(3) + alpha / EPS0_E_PER_V_A


def eps_poly(eps: np.ndarray) -> np.ndarray:
    """Mean of the eigenvalues of the symmetric part of eps (..., 3, 3)."""
    eps = np.asarray(eps, dtype=float)
    return np.linalg.eigvalsh(0.5 * (eps + np.swapaxes(eps, -1, -2))).mean(-1)


def refractive_index(eps: np.ndarray) -> np.ndarray:
    """n = sqrt(eps_poly); NaN where eps_poly < 0 (an unphysical prediction, not an error)."""
    p = eps_poly(eps)
    return np.sqrt(np.where(p >= 0, p, np.nan))


# ---------------------------------------------------------------------- ionic part
def wavenumber(omega2: np.ndarray) -> np.ndarray:
    """omega^2 in eV/(A^2 amu) -> wavenumber in cm^-1 (negative for imaginary modes)."""
    omega2 = np.asarray(omega2, dtype=float)
    return np.sign(omega2) * np.sqrt(np.abs(omega2)) * OMEGA_TO_INVCM


def optical_modes(hessian: np.ndarray, masses: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigen-pairs of the mass-weighted Hessian with the three rigid translations projected out.

    Returns ``omega2`` (3N-3,) in eV/(A^2 amu) and ``modes`` (3N-3, N, 3): mass-weighted
    eigenvectors (orthonormal in R^{3N})."""
    masses = np.asarray(masses, dtype=float)
    n = len(masses)
    H = np.asarray(hessian, dtype=float).reshape(3 * n, 3 * n)
    H = 0.5 * (H + H.T)
    inv_sqrt_m = np.repeat(1.0 / np.sqrt(masses), 3)
    D = H * inv_sqrt_m[:, None] * inv_sqrt_m[None, :]
    # translations in mass-weighted coordinates: t_a[k, b] = sqrt(M_k) delta_ab
    T = np.zeros((3 * n, 3))
    for a in range(3):
        T[a::3, a] = np.sqrt(masses)
    T, _ = np.linalg.qr(T)
    # an orthonormal basis of the complement (3N-3 vectors)
    full, _ = np.linalg.qr(np.concatenate([T, np.eye(3 * n)], axis=1))
    B = full[:, 3:3 * n]
    w, v = np.linalg.eigh(B.T @ D @ B)
    modes = (B @ v).T.reshape(-1, n, 3)
    return w, modes


def ionic_dielectric(hessian: np.ndarray, becs: np.ndarray, masses: np.ndarray, volume: float,
                     unstable_tol: float = UNSTABLE_TOL) -> Dict[str, Any]:
    """eps_ion from the Hessian (eV/A^2, (3N, 3N) or (N, 3, N, 3)), Born charges (N, 3, 3) with
    ``becs[k, i, a] = d(Omega P_i)/dR_ka`` (e), masses (amu) and the cell volume (A^3)."""
    becs = np.asarray(becs, dtype=float)
    masses = np.asarray(masses, dtype=float)
    omega2, modes = optical_modes(hessian, masses)
    # Zm_i = sum_{k,a} Z*_{k,i,a} e_{k,a} / sqrt(M_k)
    weighted = modes / np.sqrt(masses)[None, :, None]
    Zm = np.einsum("kia,mka->mi", becs, weighted)
    stable = omega2 > unstable_tol
    contrib = Zm[stable, :, None] * Zm[stable, None, :] / omega2[stable, None, None]
    eps_ion = contrib.sum(0) / (EPS0_E_PER_V_A * float(volume)) if stable.any() else np.zeros((3, 3))
    return {
        "eps_ion": eps_ion,
        "omega2": omega2,
        "wavenumbers_cm": wavenumber(omega2),
        "mode_charges": Zm,
        "unstable_modes_cm": wavenumber(omega2[omega2 < -unstable_tol]).tolist(),
    }


def model_hessian(model, atoms, field=(0.0, 0.0, 0.0), head: Optional[str] = None,
                  dtype: torch.dtype = torch.float64) -> np.ndarray:
    """H = d^2F/dR dR (eV/A^2, shape (3N, 3N)) of ``model`` (a FieldMACE) at ``atoms`` and
    ``field``: the forces are built with a graph, then differentiated once more (all 3N rows in
    one vectorised backward pass where autograd allows it, else row by row)."""
    from mf_lightning.data import keys
    from mf_lightning.data.graphs import atoms_to_graph, collate

    graph = atoms_to_graph(atoms, model.atomic_numbers, model.r_max, heads=model.heads,
                           head=model.resolve_head(head, ("forces",)), electric_field=np.asarray(field, dtype=float),
                           source="model_hessian")
    device = next(model.parameters()).device
    batch = collate([graph], dtype=dtype, device=device)
    pos = batch[keys.POSITIONS].detach().clone().requires_grad_(True)
    batch[keys.POSITIONS] = pos
    forces = model(batch, properties=(keys.ENERGY, keys.FORCES), training=True)[keys.FORCES].reshape(-1)
    n3 = forces.numel()
    eye = torch.eye(n3, dtype=forces.dtype, device=forces.device)
    try:
        (rows,) = torch.autograd.grad([forces], [pos], grad_outputs=[eye], is_grads_batched=True, retain_graph=True)
        H = -rows.reshape(n3, n3)
    except RuntimeError:  # an op without a batching rule: fall back to one pass per row
        H = torch.stack([-torch.autograd.grad([forces[i]], [pos], retain_graph=True)[0].reshape(-1)
                         for i in range(n3)])
    H = H.detach().cpu().numpy()
    return 0.5 * (H + H.T)


def relax_structure(atoms, calc, fmax: float = 0.01, steps: int = 500, relax_cell: bool = False):
    """BFGS relaxation in place at the calculator's field (cell too with ``relax_cell``);
    returns whether it converged."""
    from ase.optimize import BFGS

    atoms.calc = calc
    target = atoms
    if relax_cell:
        from ase.filters import FrechetCellFilter

        target = FrechetCellFilter(atoms)
    opt = BFGS(target, logfile=None)
    return bool(opt.run(fmax=fmax, steps=steps))


def dielectric_properties(calc, atoms, ionic: bool = False, relax: bool = False, fmax: float = 0.01,
                          relax_cell: bool = False, relax_steps: int = 500) -> Dict[str, Any]:
    """Everything above for one structure with a :class:`MACEFieldCalculator` (its field and
    head). ``atoms`` is copied; with ``relax`` the copy is relaxed first."""
    atoms = atoms.copy()
    out: Dict[str, Any] = {}
    if relax:
        out["relaxed"] = relax_structure(atoms, calc, fmax=fmax, steps=relax_steps, relax_cell=relax_cell)
    atoms.calc = calc
    alpha = calc.get_polarisability(atoms)
    becs = calc.get_becs(atoms)
    eps = eps_inf_from_alpha(alpha)
    out.update(polarisability=alpha, becs=becs, eps_inf=eps, eps_poly=float(eps_poly(eps)),
               n=float(refractive_index(eps)))
    if ionic:
        H = model_hessian(calc.model, atoms, field=calc.field_now(), head=calc.head, dtype=calc.torch_dtype)
        ion = ionic_dielectric(H, becs, atoms.get_masses(), atoms.get_volume())
        out.update(eps_ion=ion["eps_ion"], eps_0=eps + ion["eps_ion"], wavenumbers_cm=ion["wavenumbers_cm"],
                   unstable_modes_cm=ion["unstable_modes_cm"])
    return out
