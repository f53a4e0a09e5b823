"""Back into mace's ecosystem: a trained FieldMACE's zero-field model as a mace ``.model`` file.

``mf-export model.pt --out model.model [--dtype float64] [--field Ex Ey Ez] [--lammps]``

At E = 0 every coupling term vanishes (it is linear or quadratic in E) and so does the atomic
polarisability term -1/2 a_Z |E|^2: the FieldMACE *is* its mace backbone there. The export is that
backbone, a plain mace-torch ``ScaleShiftMACE`` (or ``MACE``) saved the way mace saves models
(a pickled module), so mace's ``MACECalculator(model_paths=...)``, ``mace_eval_configs`` and
mace's own LAMMPS conversion (``create_lammps_model``) read it. Its energies, forces and stress
equal ``MACEFieldCalculator`` at zero field (tested to 1e-10 in float64); the field response
(P, Z*, alpha) is not part of it.

``--field Ex Ey Ez`` (V/A) exports the model *at that constant field* instead. For a fixed E
every coupling term is a fixed linear map of the features it acts on (each form is linear in the
features: ``x + W1(x (x) E) + W2(x (x) [E (x) E])``), and -1/2 a_Z |E|^2 is a constant per
element. So the model at E is again a plain mace model: the same backbone with each coupled
product block wrapped by that matrix (before the product for ``basis_tp``, after it for
``residual_tp``) and the atomic energies shifted by -1/2 a_Z |E|^2. Its energies and forces are
F(R, E) and -dF/dR at that field (tested to 1e-10); P, Z*, alpha are not part of it.

``--lammps`` writes that model (zero field without ``--field``) as TorchScript for LAMMPS'
``pair_style mace``, exactly as mace's ``create_lammps_model`` does (mace's ``LAMMPS_MACE``
wrapper compiled with e3nn's ``jit.compile``): finite-field MD in LAMMPS at the exported field.

The ``.model`` file is a pickle, as every mace ``.model`` file is: it is written by us from our
own weights, but whoever loads it runs mace's unpickling (mace's choice, not ours).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Optional, Sequence

import torch
from e3nn.util.jit import compile_mode

from mf_lightning.model.backbone import convert_backbone
from mf_lightning.model.field_mace import FieldMACE


def zero_field_backbone(model: FieldMACE, dtype: Optional[str] = None) -> torch.nn.Module:
    """A standalone copy of ``model``'s mace backbone (the model at E = 0), in eval mode."""
    from mf_lightning.model.split_backward import uninstall
    from mf_lightning.utils import resolve_dtype

    # exported files are e3nn models (they load without cuEquivariance), whatever the model runs on
    backbone = (convert_backbone(model.backbone, cueq=False) if model.cueq else copy.deepcopy(model.backbone)).cpu()
    if dtype is not None:
        backbone = backbone.to(resolve_dtype(dtype))
    uninstall(backbone)  # e3nn's own tensor products: the file must not need mf_lightning to load
    return backbone.eval()


@compile_mode("script")
class ConstantFieldProduct(torch.nn.Module):
    """A mace product block with a coupling frozen at one field: ``before`` (basis stage) maps
    the atomic basis, ``after`` (features stage) the block's output; each is the coupling's
    linear map as a matrix acting on the flattened per-node features. Same call signature as
    mace's ``EquivariantProductBasisBlock``, TorchScript-compilable."""

    def __init__(self, product: torch.nn.Module, before: Optional[torch.Tensor], after: Optional[torch.Tensor]):
        super().__init__()
        self.product = product
        self.has_before, self.has_after = before is not None, after is not None
        empty = torch.zeros(0, 0)
        self.register_buffer("before", before if before is not None else empty)
        self.register_buffer("after", after if after is not None else empty)

    def forward(self, node_feats: torch.Tensor, sc: Optional[torch.Tensor], node_attrs: torch.Tensor) -> torch.Tensor:
        if self.has_before:
            shape = node_feats.shape
            node_feats = (node_feats.reshape(shape[0], -1) @ self.before).reshape(shape)
        out = self.product(node_feats=node_feats, sc=sc, node_attrs=node_attrs)
        if self.has_after:
            out = out @ self.after
        return out


def coupling_matrix(coupling: torch.nn.Module, field: torch.Tensor) -> torch.Tensor:
    """The matrix M with ``coupling(x, E) = x_flat @ M`` per node at the fixed ``field``: the
    images of the basis vectors, checked on random features (a form that is not linear in
    its features cannot be frozen this way: an error, not a silently wrong model)."""
    from mf_lightning.model import coupling as cpl

    dim = int(coupling.residual.irreps.dim)  # the features the coupling acts on, per node
    if getattr(coupling, "stage", None) == "basis":
        muls = {mul for mul, _ in coupling._blocks}
        if len(muls) != 1:
            raise ValueError("basis coupling with mixed multiplicities cannot be frozen")
        shape = (muls.pop(), sum(d for _, d in coupling._blocks))
    else:
        shape = (dim,)
    dtype = field.dtype
    f = cpl.field_to_irrep(field.reshape(1, 3))
    with torch.no_grad():
        eye = torch.eye(dim, dtype=dtype).reshape(dim, *shape)
        matrix = coupling(eye, f.expand(dim, 3)).reshape(dim, dim)
        x = torch.randn(5, *shape, dtype=dtype, generator=torch.Generator().manual_seed(0))
        direct = coupling(x, f.expand(5, 3)).reshape(5, dim)
        frozen = x.reshape(5, dim) @ matrix
    if not torch.allclose(direct, frozen, rtol=1e-9 if dtype == torch.float64 else 1e-4, atol=1e-12):
        raise ValueError(f"coupling {type(coupling).__name__} is not linear in its features: it cannot be "
                         "exported at a constant field")
    return matrix


def constant_field_backbone(model: FieldMACE, field: Sequence[float], dtype: Optional[str] = None) -> torch.nn.Module:
    """A plain mace model equal to ``model`` at the constant ``field`` (V/A): its energy is
    F(R, E) and its forces -dF/dR at that E. Zero field: the backbone itself."""
    if not any(float(v) for v in field):
        return zero_field_backbone(model, dtype)
    from mf_lightning.model.split_backward import uninstall
    from mf_lightning.utils import resolve_dtype

    if bool((model.atomic_charges != 0).any()):
        # -E . sum_i q'_i r_i is a force q'_i E on every atom, a term mace's models do not have
        raise ValueError("this model has per-element Born charges (atomic_charges): their field term "
                         "-E . sum q r has no place in a mace model, so it exports at zero field only")
    model = copy.deepcopy(model).use_cueq(False).cpu().eval()  # an e3nn model, as zero_field_backbone
    if dtype is not None:
        model = model.to(resolve_dtype(dtype))
    backbone = model.backbone
    uninstall(backbone)  # e3nn's own tensor products (see zero_field_backbone)
    work = backbone.atomic_energies_fn.atomic_energies.dtype
    e = torch.as_tensor([float(v) for v in field], dtype=work)
    for t, product in enumerate(list(backbone.products)):
        coupling = model.couplings[str(t)] if str(t) in model.couplings else None
        if coupling is None:
            continue
        matrix = coupling_matrix(coupling.to(work), e)
        before, after = (matrix, None) if coupling.stage == "basis" else (None, matrix)
        backbone.products[t] = ConstantFieldProduct(product, before, after)
    # -1/2 a_Z |E|^2 per atom: a constant per element, added to the atomic energies of every head
    a = model.atomic_polarisabilities.detach().to(work).reshape(-1)
    with torch.no_grad():
        backbone.atomic_energies_fn.atomic_energies += -0.5 * a * float((e * e).sum())
    return backbone.eval()


def export_mace(model: FieldMACE, out, dtype: Optional[str] = None, field: Optional[Sequence[float]] = None) -> Path:
    """Write ``model`` at ``field`` (default zero: its backbone) as a mace ``.model`` file
    (atomically)."""
    from mf_lightning.files import atomic_torch_save

    out = Path(out)
    atomic_torch_save(constant_field_backbone(model, field or (0.0, 0.0, 0.0), dtype), out)
    return out


def export_lammps(model: FieldMACE, out, field: Optional[Sequence[float]] = None, head: Optional[str] = None,
                  dtype: str = "float64") -> Path:
    """Write ``model`` at the constant ``field`` as mace's LAMMPS TorchScript model (what
    ``create_lammps_model`` writes for ``pair_style mace``)."""
    from e3nn.util import jit
    from mace.calculators import LAMMPS_MACE

    from mf_lightning.files import atomic_open

    # as everywhere: a multi-head model never falls back to mace's default (the last head)
    head = model.resolve_head(head, ["energy", "forces"])
    backbone = constant_field_backbone(model, field or (0.0, 0.0, 0.0), dtype)
    wrapped = LAMMPS_MACE(backbone, head=head)
    compiled = jit.compile(wrapped)
    out = Path(out)
    with atomic_open(out, "wb") as fh:
        torch.jit.save(compiled, fh)
    return out
