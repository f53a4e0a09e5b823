"""Response observables as exact autograd derivatives of the electric enthalpy F(R, E).

Conventions (internal units, SPEC section 1):

* forces        f_kj   = -dF/dR_kj                          eV/A
* virials       W      = -dF/d(strain)                      eV
* stress        sigma  = (1/Omega) dF/d(strain)             eV/A^3
* polarisation  P_i    = -(1/Omega) dF/dE_i                 e/A^2
* Born charges  Z*_{k,ij} = d(Omega P_i)/dR_kj = -d^2F/(dE_i dR_kj) = d f_kj / dE_i      e
  i.e. the first Cartesian index is the field / polarisation direction, the second the atomic
  displacement direction (``becs[k, i, j]``).
* polarisability alpha_ij = dP_i/dE_j = -(1/Omega) d^2F/(dE_i dE_j)                     e/(V A)

Cost model. One backward pass of F w.r.t. (positions, strain, field) together gives forces,
stress and P. Z* and alpha are rows of the mixed Hessian d/dE_i (dF/dE) w.r.t. (positions,
field): one more backward pass per field component i gives row i of *both* (3 passes in all,
not 3 for Z* plus 3 for alpha), or a single vmapped pass over the three rows
(``batched=True``). A second-order graph is kept only when Z*/alpha are asked for, and a
graph through the derivatives (``create_graph``) only when training needs it.
"""

from __future__ import annotations

from typing import Dict, Iterable, Optional

import torch

from mf_lightning.data import keys


def _zeros_if_none(g: Optional[torch.Tensor], like: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(like) if g is None else g


def needs(properties: Iterable[str]) -> Dict[str, bool]:
    """Which derivative inputs a set of requested properties needs."""
    p = set(properties)
    unknown = p - set(keys.ALL_PROPERTIES)
    if unknown:
        raise ValueError(f"unknown properties {sorted(unknown)}; choose from {keys.ALL_PROPERTIES}")
    second = bool(p & {keys.BECS, keys.POLARISABILITY})
    return {
        "positions": keys.FORCES in p or keys.BECS in p,
        "strain": keys.STRESS in p or keys.VIRIALS in p,
        "field": bool(p & set(keys.RESPONSE_PROPERTIES)),
        "second": second,
    }


def compute_observables(
    energy: torch.Tensor,
    positions: torch.Tensor,
    displacement: Optional[torch.Tensor],
    field: torch.Tensor,
    volume: torch.Tensor,
    properties: Iterable[str],
    training: bool = False,
    batched: bool = False,
) -> Dict[str, torch.Tensor]:
    """Derivatives of ``energy`` (per structure, shape (n_graphs,)) that ``properties`` ask for.

    ``positions`` (n_atoms, 3), ``displacement`` (n_graphs, 3, 3) and ``field`` (n_graphs, 3)
    must be the tensors ``energy`` was computed from (requiring grad where needed);
    ``volume`` is (n_graphs,). ``training=True`` keeps the graph through every returned
    derivative so a loss on them can be back-propagated.
    """
    need = needs(properties)
    props = set(properties)
    out: Dict[str, torch.Tensor] = {}
    inputs = []
    if need["positions"]:
        inputs.append(("positions", positions))
    if need["strain"]:
        inputs.append(("strain", displacement))
    if need["field"]:
        inputs.append(("field", field))
    if not inputs:
        return out
    # create_graph: for a loss on these outputs, or for the second derivatives below.
    first = torch.autograd.grad(
        outputs=[energy.sum()],
        inputs=[t for _, t in inputs],
        create_graph=training or need["second"],
        retain_graph=training or need["second"],
        allow_unused=True,
    )
    grads = {name: g for (name, _), g in zip(inputs, first)}
    if keys.FORCES in props:
        out[keys.FORCES] = -_zeros_if_none(grads["positions"], positions)
    if need["strain"]:
        dF_deps = _zeros_if_none(grads["strain"], displacement)
        out[keys.VIRIALS] = -dF_deps
        out[keys.STRESS] = dF_deps / volume.view(-1, 1, 1)
    if not need["field"]:
        return out

    dF_dE = _zeros_if_none(grads["field"], field)  # = -Omega P, (n_graphs, 3)
    out[keys.POLARISATION] = -dF_dE / volume.unsqueeze(-1)
    if not need["second"]:
        return out

    becs = torch.zeros(positions.shape[0], 3, 3, dtype=positions.dtype, device=positions.device)
    hess_EE = torch.zeros(field.shape[0], 3, 3, dtype=field.dtype, device=field.device)
    if dF_dE.requires_grad:  # else F is at most linear in nothing: Z* = alpha = 0
        wrt = [positions, field]
        if batched:
            # All three rows i at once: vmap over grad_outputs e_i (one vectorised backward).
            eye = torch.eye(3, dtype=dF_dE.dtype, device=dF_dE.device)
            grad_outputs = eye.unsqueeze(1).expand(3, dF_dE.shape[0], 3)
            rows = torch.autograd.grad(
                [dF_dE], wrt, grad_outputs=[grad_outputs], create_graph=training,
                retain_graph=True, allow_unused=True, is_grads_batched=True,
            )
            d_pos = _zeros_if_none(rows[0], positions.expand(3, *positions.shape))
            d_field = _zeros_if_none(rows[1], field.expand(3, *field.shape))
            becs = -d_pos.permute(1, 0, 2)  # [i, k, j] -> [k, i, j]
            hess_EE = d_field.permute(1, 0, 2)
        else:
            b_rows, e_rows = [], []
            for i in range(3):
                d_pos, d_field = torch.autograd.grad(
                    [dF_dE[:, i].sum()], wrt, create_graph=training,
                    retain_graph=True, allow_unused=True,
                )
                b_rows.append(-_zeros_if_none(d_pos, positions))
                e_rows.append(_zeros_if_none(d_field, field))
            becs = torch.stack(b_rows, dim=1)  # (n_atoms, i, j)
            hess_EE = torch.stack(e_rows, dim=1)  # (n_graphs, i, j)
    if keys.BECS in props:
        out[keys.BECS] = becs
    if keys.POLARISABILITY in props:
        out[keys.POLARISABILITY] = -hess_EE / volume.view(-1, 1, 1)
    return out
