"""Mixed and third derivatives of the electric enthalpy F(R, E, strain) by exact autograd: what
the piezoelectric tensors (:mod:`~mf_lightning.analysis.piezo`) and the mode-resolved IR and
Raman intensities (:mod:`~mf_lightning.analysis.modes`) are made of.

F is evaluated on a homogeneously strained copy of one structure, built as mace's
``prepare_graph`` builds the stress's ``displacement``: with a symmetric strain eps, every
position and lattice vector (rows of the cell) is multiplied by (I + eps), and the periodic
images' shifts follow the strained cell, so the fractional coordinates stay fixed. Here the
strained positions are also the ones the fitted per-element charges see (F's -E . sum q'_i r_i,
:func:`mf_lightning.model.field_mace.charge_enthalpy`), so every term of F is strained alike and
the cell dipole Omega P of fixed charges moves with the lattice. The model's public forward pass
gives F(R, eps, E) with its graph; one backward pass gives the forces, the virial and
M = Omega P = -dF/dE; three more (one per field direction) give Z*, Omega alpha and
dM/d eps; six the internal-strain tensor; six more (optional, a third-order graph) the
derivative of alpha with respect to every atomic position.

Conventions (internal units): ``becs[k, i, a] = dM_i/dR_ka`` (e), ``polarisability[i, j] =
(1/Omega) dM_i/dE_j`` (e/(V A)), ``dM_deps[i, j, k] = dM_i/d eps_jk`` (e A, at fixed fractional
coordinates, symmetric in jk), ``internal_strain[k, a, j, l] = d^2F/(dR_ka d eps_jl)`` (eV/A:
minus the force on atom k under a homogeneous strain), ``dalpha_dR[i, j, k, a] = d alpha_ij /
dR_ka`` (e/(V A^2)). All at the structure as given (eps = 0) and the given field.
"""

from __future__ import annotations

from typing import Dict, Optional

import numpy as np
import torch

# the six independent components of a symmetric 3x3 tensor, in Voigt order xx yy zz yz xz xy
VOIGT_PAIRS = ((0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1))


def _grad(output, inputs, create_graph=False):
    grads = torch.autograd.grad([output], inputs, retain_graph=True, create_graph=create_graph, allow_unused=True)
    return [torch.zeros_like(x) if g is None else g for g, x in zip(grads, inputs)]


def strained_enthalpy(model, atoms, field=(0.0, 0.0, 0.0), head: Optional[str] = None,
                      dtype: torch.dtype = torch.float64):
    """F(R, eps, E) of one structure (a scalar with its graph) and the three leaves it is a
    function of: positions R (n, 3), strain eps (3, 3; enters through its symmetric part) and
    field E (3,), all at the values of ``atoms`` / zero strain / ``field``."""
    from mf_lightning.data import keys
    from mf_lightning.data.graphs import atoms_to_graph, collate

    graph = atoms_to_graph(atoms, model.atomic_numbers, model.r_max, heads=model.heads, head=head,
                           electric_field=np.asarray(field, dtype=float), source="strained_enthalpy")
    device = next(model.parameters()).device
    batch = collate([graph], dtype=dtype, device=device)
    R = batch[keys.POSITIONS].detach().clone().requires_grad_(True)
    eps = torch.zeros(3, 3, dtype=dtype, device=device, requires_grad=True)
    E = batch[keys.ELECTRIC_FIELD].detach().clone().reshape(1, 3).requires_grad_(True)
    deform = torch.eye(3, dtype=dtype, device=device) + 0.5 * (eps + eps.T)
    cell = batch[keys.CELL].reshape(3, 3) @ deform
    data = dict(batch)
    data[keys.POSITIONS] = R @ deform
    data[keys.CELL] = cell.reshape(batch[keys.CELL].shape)
    data[keys.SHIFTS] = batch[keys.UNIT_SHIFTS] @ cell
    data[keys.ELECTRIC_FIELD] = E
    energy = model(data, properties=(keys.ENERGY,))[keys.ENERGY].sum()
    return energy, R, eps, E, cell


def enthalpy_derivatives(model, atoms, field=(0.0, 0.0, 0.0), head: Optional[str] = None,
                         dtype: torch.dtype = torch.float64, internal_strain: bool = True,
                         raman: bool = False) -> Dict[str, np.ndarray]:
    """The derivatives of the module docstring for one structure (numpy, float64): ``energy``,
    ``forces``, ``stress`` (eV/A^3, 3x3), ``volume``, ``polarisation`` (P), ``dipole`` (M = Omega P),
    ``becs``, ``polarisability``, ``dM_deps``; ``internal_strain`` (6 more backward passes) and
    ``dalpha_dR`` (``raman``: 6 third-order passes) on request. ``head``: the head to evaluate
    (resolved by the caller)."""
    head = model.resolve_head(head)
    F, R, eps, E, cell = strained_enthalpy(model, atoms, field=field, head=head, dtype=dtype)
    volume = torch.linalg.det(cell.detach()).abs()
    g_R, g_eps, g_E = _grad(F, [R, eps, E], create_graph=True)
    M = -g_E.reshape(3)
    becs, dM_deps, omega_alpha = [], [], []
    for i in range(3):  # row i of Z*, Omega alpha and dM/d eps from one backward pass
        d_R, d_eps, d_E = _grad(M[i], [R, eps, E], create_graph=raman)
        becs.append(d_R)
        dM_deps.append(d_eps)
        omega_alpha.append(d_E.reshape(3))
    omega_alpha = torch.stack(omega_alpha)

    def np_(t):
        return t.detach().cpu().double().numpy()

    vol = float(volume)
    out = {"energy": float(F.detach()), "forces": -np_(g_R), "stress": np_(g_eps) / vol, "volume": vol,
           "dipole": np_(M), "polarisation": np_(M) / vol,
           "becs": np.stack([np_(b) for b in becs], axis=1),  # (k, i, a)
           "polarisability": np_(omega_alpha) / vol, "dM_deps": np.stack([np_(d) for d in dM_deps])}
    n = len(atoms)
    if internal_strain:
        lam = np.zeros((n, 3, 3, 3))
        for j, k in VOIGT_PAIRS:  # g_eps is symmetric: six passes give all nine
            (d_R,) = _grad(g_eps[j, k], [R])
            lam[:, :, j, k] = lam[:, :, k, j] = np_(d_R)
        out["internal_strain"] = lam
    if raman:
        dalpha = np.zeros((3, 3, n, 3))
        for i, j in VOIGT_PAIRS:  # alpha is symmetric (a second derivative of one F)
            (d_R,) = _grad(omega_alpha[i, j], [R])
            dalpha[i, j] = dalpha[j, i] = np_(d_R) / vol
        out["dalpha_dR"] = dalpha
    return out
