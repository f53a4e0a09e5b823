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
they are listed (as negative wavenumbers, the usual convention for imaginary frequencies), and
eps_ion and eps_0 are then NaN (flagged ``unstable_modes``, :mod:`mf_lightning.model.validity`),
never 0 or the sum over the remaining modes. Soft modes with |omega^2| below the tolerance are
left out, their 1/omega^2 would be noise, unless they carry charge (more than
``SOFT_CHARGE_FRACTION`` of the total): then eps_ion is NaN too (flagged ``soft_modes``).
Relax first (``relax=True``) for a meaningful eps_ion.
eps_ion needs a head that learned energies and forces: the Hessian of a head that never saw
them means nothing, and is refused (``allow_untrained`` overrides, with a warning).

An ensemble's Hessian is the mean of its members' (the Hessian of the mean F); each member's own
eps_0 (its Hessian, Z* and alpha) gives ``eps_0_std`` and ``eps_0_poly_std``, their raw spread.
"""

from __future__ import annotations

import math
from typing import Any, Dict, Optional

import numpy as np
import torch
from ase import units as ase_units

from mf_lightning.errors import InputError
from mf_lightning.units import EPS0_E_PER_V_A

# sqrt(eV / (A^2 amu)) in rad/s, then in cm^-1 (divide by 2 pi c)
_RAD_PER_S = math.sqrt(ase_units._e / ase_units._amu) * 1e10
_SPEED_OF_LIGHT_CM_PER_S = ase_units._c * 100.0
OMEGA_TO_INVCM = _RAD_PER_S / (2 * math.pi * _SPEED_OF_LIGHT_CM_PER_S)
UNSTABLE_TOL = 1e-4  # eV/(A^2 amu), ~ 5 cm^-1
# a soft mode (|omega^2| < UNSTABLE_TOL) carrying more than this share of the total mode charge
# makes eps_ion undefined (NaN, flagged soft_modes) instead of silently left out
SOFT_CHARGE_FRACTION = 1e-3


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
    unstable = omega2 < -unstable_tol
    contrib = Zm[stable, :, None] * Zm[stable, None, :] / omega2[stable, None, None]
    stable_part = contrib.sum(0) / (EPS0_E_PER_V_A * float(volume)) if stable.any() else np.zeros((3, 3))
    # a soft mode (|omega^2| within the tolerance) is left out of the sum, which is right only if it
    # carries no charge: a polar soft mode (near a ferroelectric instability) would contribute
    # 1/omega^2 -> a huge eps_ion, and leaving it out could report a small one, even exactly 0
    soft = ~stable & ~unstable
    charge = (Zm ** 2).sum(1)
    polar_soft = soft & (charge > SOFT_CHARGE_FRACTION * max(float(charge.sum()), 1e-30))
    # beside an unstable mode the structure is not at a minimum of F and no eps_ion exists (its
    # 1/omega^2 would be negative, or, left out, the sum of the other modes pretends otherwise)
    eps_ion = np.full((3, 3), np.nan) if unstable.any() or polar_soft.any() else stable_part
    return {
        "eps_ion": eps_ion,
        "eps_ion_stable_modes": stable_part,  # diagnostics only: the stable modes' sum
        "omega2": omega2,
        "wavenumbers_cm": wavenumber(omega2),
        "mode_charges": Zm,
        "modes": modes,  # mass-weighted eigenvectors (3N-3, N, 3), as optical_modes gives them
        "unstable_modes_cm": wavenumber(omega2[unstable]).tolist(),
        "soft_polar_modes_cm": wavenumber(omega2[polar_soft]).tolist(),
    }


# Memory of the Hessian, measured on alpha-quartz (72 and 288 atoms, float32 and float64,
# bench/RESULTS.md "eps_ion in bounded memory"): building the forces with their graph keeps S
# bytes of saved tensors; each row of a batched second backward pass then costs about 1.2-1.4 S,
# and one pass's fixed overhead (the forces' graph, the first row, allocator slack) about 2 S.
ROW_COST_PER_SAVED_BYTE = 1.5
FIXED_COST_PER_SAVED_BYTE = 2.5
MEMORY_FRACTION = 0.5  # of the memory available: the most a Hessian may take by default
# rows per pass barely change the time on a CPU (a batched row costs what a single one does), so
# by default a Hessian aims at this much and takes more only when one row per pass needs it
DEFAULT_TARGET = 1.0 * 2 ** 30


class HessianTooLarge(InputError, ValueError):
    """The Hessian of a structure would not fit in the memory budget even one row at a time."""


def available_memory() -> Optional[float]:
    """Bytes of memory available to this process now: Linux's MemAvailable, capped by a cgroup
    limit where one is set (containers, SLURM); None where neither can be read."""
    values = []
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    values.append(float(line.split()[1]) * 1024)
    except OSError:
        pass
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = open(path).read().strip()
        except OSError:
            continue
        if text.isdigit() and float(text) < 2 ** 60:
            values.append(float(text))
    return min(values) if values else None


def default_memory_budget() -> float:
    """:data:`MEMORY_FRACTION` of :func:`available_memory` (8 GiB where it cannot be read)."""
    free = available_memory()
    return MEMORY_FRACTION * free if free else 8.0 * 2 ** 30


class HessianCost:
    """The predicted cost of :func:`model_hessian` for one structure, from the bytes the forces'
    graph saved (measured while it is built) and the number of rows."""

    def __init__(self, saved_bytes: float, rows: int):
        self.saved_bytes, self.rows = float(saved_bytes), int(rows)

    def bytes_for(self, chunk: int) -> float:
        return self.saved_bytes * (FIXED_COST_PER_SAVED_BYTE + ROW_COST_PER_SAVED_BYTE * chunk)

    def chunk_for(self, budget: float) -> int:
        """The most rows per pass that fit in ``budget`` bytes (0: not even one)."""
        room = budget / max(self.saved_bytes, 1.0) - FIXED_COST_PER_SAVED_BYTE
        return int(max(0, min(self.rows, room // ROW_COST_PER_SAVED_BYTE)))

    def describe(self, chunk: int) -> str:
        passes = -(-self.rows // max(chunk, 1))
        return f"{self.bytes_for(chunk) / 2**30:.2f} GiB ({self.rows} rows in {passes} passes of {chunk})"


def _hessian_setup(model, atoms, field, head, dtype):
    """The forces of ``atoms`` with their graph kept (create_graph), the positions they are
    differentiated against, and the bytes of tensors that graph saved (each storage once)."""
    from mf_lightning.data import keys
    from mf_lightning.data.graphs import atoms_to_graph, collate

    graph = atoms_to_graph(atoms, model.atomic_numbers, model.r_max, heads=model.heads,
                           head=model.resolve_head(head, ("forces",)), electric_field=np.asarray(field, dtype=float),
                           source="model_hessian")
    device = next(model.parameters()).device
    batch = collate([graph], dtype=dtype, device=device)
    pos = batch[keys.POSITIONS].detach().clone().requires_grad_(True)
    batch[keys.POSITIONS] = pos
    storages: Dict[Any, int] = {}

    def pack(t):
        storage = t.untyped_storage()
        key = (storage.data_ptr(), str(t.device))
        storages[key] = max(storages.get(key, 0), storage.nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        forces = model(batch, properties=(keys.ENERGY, keys.FORCES), training=True)[keys.FORCES].reshape(-1)
    return forces, pos, float(sum(storages.values()))


def model_hessian(model, atoms, field=(0.0, 0.0, 0.0), head: Optional[str] = None,
                  dtype: torch.dtype = torch.float64, max_memory: Optional[float] = None,
                  chunk: Optional[int] = None, log_cost: bool = False, allow_untrained: bool = False) -> np.ndarray:
    """H = d^2F/dR dR (eV/A^2, shape (3N, 3N)) of ``model`` (a FieldMACE) at ``atoms`` and
    ``field``: the forces are built with their graph, then differentiated once more, a chunk of
    rows per vectorised backward pass. Every batched row costs about as much memory as the
    forces' graph itself (all 3N rows at once took 21 GB at 72 atoms), so the chunk is sized from
    ``max_memory`` (bytes; default :data:`DEFAULT_TARGET`, or what one row per pass needs, up to
    :func:`default_memory_budget`) by :class:`HessianCost`, from
    the bytes that graph saved, before any row is computed; a structure that would not fit even
    one row at a time is refused (:class:`HessianTooLarge`). ``chunk`` fixes the rows per pass.
    A head that never learned forces is refused (``allow_untrained``: computed with a warning)."""
    head = model.resolve_head(head, ("forces",))
    model.check_learned(("energy", "forces"), "the Hessian (eps_ion, phonons)", head=head,
                        allow_untrained=allow_untrained)
    n3 = 3 * len(atoms)
    forces, pos, saved = _hessian_setup(model, atoms, field, head, dtype)
    cost = HessianCost(saved, n3)
    if max_memory is None:  # DEFAULT_TARGET, or one row per pass where that needs more, up to the limit
        budget = default_memory_budget()
        budget = min(budget, max(DEFAULT_TARGET, cost.bytes_for(1)))
    else:
        budget = float(max_memory)
    if chunk is None:
        chunk = cost.chunk_for(budget)
        if chunk < 1:
            raise HessianTooLarge(f"the Hessian of {len(atoms)} atoms needs about {cost.describe(1)} even one row "
                                  f"per pass, above the memory budget of {budget / 2**30:.2f} GiB (--max-memory)")
    chunk = max(1, min(int(chunk), n3))
    if log_cost:
        import logging

        logging.getLogger(__name__).info("Hessian of %d atoms: about %s", len(atoms), cost.describe(chunk))
    H = np.empty((n3, n3))
    for start in range(0, n3, chunk):
        stop = min(start + chunk, n3)
        eye = torch.zeros(stop - start, n3, dtype=forces.dtype, device=forces.device)
        eye[torch.arange(stop - start), torch.arange(start, stop)] = 1.0
        try:
            (part,) = torch.autograd.grad([forces], [pos], grad_outputs=[eye], is_grads_batched=True,
                                          retain_graph=True)
        except RuntimeError:  # an op without a batching rule: one pass per row
            part = torch.stack([torch.autograd.grad([forces[i]], [pos], retain_graph=True)[0]
                                for i in range(start, stop)])
        H[start:stop] = -part.reshape(stop - start, n3).detach().cpu().double().numpy()
        del part, eye
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
                          relax_cell: bool = False, relax_steps: int = 500,
                          max_memory: Optional[float] = None) -> Dict[str, Any]:
    """Everything above for one structure with a :class:`MACEFieldCalculator` (its field, head
    and ``allow_untrained``). ``atoms`` is copied; with ``relax`` the copy is relaxed first.
    ``flags`` lists what must not be trusted (:func:`mf_lightning.model.validity.response_flags`);
    ``warnings`` the quantities computed although the head never learned them. With ``ionic``,
    ``hessians`` holds the Hessian of each member (one for a single model), for reuse (e.g. the
    relaxed-ion piezoelectric tensor, :func:`mf_lightning.analysis.piezo.piezo_of`)."""
    from mf_lightning.model.validity import response_flags

    atoms = atoms.copy()
    out: Dict[str, Any] = {}
    needed = ["becs", "polarisability"] + (["energy", "forces"] if ionic or relax else [])
    calc.require_learned(needed + (["stress"] if relax and relax_cell else []),
                         "eps_ion (the Hessian)" if ionic else "a relaxation" if relax else "the response")
    if relax:
        out["relaxed"] = relax_structure(atoms, calc, fmax=fmax, steps=relax_steps, relax_cell=relax_cell)
    atoms.calc = calc
    alpha = calc.get_polarisability(atoms)
    becs = calc.get_becs(atoms)
    eps = eps_inf_from_alpha(alpha)
    out.update(polarisability=alpha, becs=becs, eps_inf=eps, eps_poly=float(eps_poly(eps)),
               n=float(refractive_index(eps)))
    unstable = None
    residual = None
    if ionic:
        # the harmonic eps_ion describes a minimum of F: large residual forces mean it is not one
        residual = float(np.abs(calc.get_forces(atoms)).max()) if len(atoms) else 0.0
        out["max_force"] = residual
        members = getattr(calc.model, "members", None) or [calc.model]  # an ensemble: each member's
        hessians = [model_hessian(m, atoms, field=calc.field_now(), head=calc.head, dtype=calc.torch_dtype,
                                  max_memory=max_memory, allow_untrained=calc.allow_untrained, log_cost=True)
                    for m in members]
        H = hessians[0] if len(hessians) == 1 else np.mean(hessians, axis=0)
        ion = ionic_dielectric(H, becs, atoms.get_masses(), atoms.get_volume())
        if len(hessians) > 1:
            from mf_lightning.model.uncertainty import member_std

            eps_0 = np.array([eps_inf_from_alpha(a) + ionic_dielectric(h, z, atoms.get_masses(), atoms.get_volume())[
                "eps_ion"] for h, z, a in zip(hessians, calc.results["becs_members"],
                                              calc.results["polarisability_members"])])
            polys = [float(eps_poly(e)) if np.all(np.isfinite(e)) else np.nan for e in eps_0]  # NaN: unstable
            out.update(eps_0_std=member_std(eps_0), eps_0_poly_std=float(member_std(polys)))
        unstable = ion["unstable_modes_cm"]
        soft = ion["soft_polar_modes_cm"]
        out.update(eps_ion=ion["eps_ion"], eps_0=eps + ion["eps_ion"], wavenumbers_cm=ion["wavenumbers_cm"],
                   unstable_modes_cm=unstable, soft_polar_modes_cm=soft, hessians=hessians)
    warnings = list(calc.untrained_warnings)
    out["warnings"] = warnings
    out["flags"] = response_flags(atoms.get_atomic_numbers(), becs=becs, polarisability=alpha,
                                  training_elements=getattr(calc.model, "training_elements", None),
                                  unstable_modes=unstable, soft_modes=soft if ionic else None,
                                  relaxed=out.get("relaxed"), untrained=bool(warnings), max_force=residual)
    return out
