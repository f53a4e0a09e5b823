"""``build_model(**kwargs)``: a fresh FieldMACE from keyword arguments that mirror
``conf/model/field_mace.yaml`` (and ``conf/model/coupling/*.yaml`` under ``coupling``)."""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np
import torch
from mace.modules.models import ScaleShiftMACE

from mf_lightning._deps import mace_modules, o3
from mf_lightning.model.backbone import config_to_json
from mf_lightning.model.field_mace import FieldMACE
from mf_lightning.utils import default_dtype, resolve_dtype


def hidden_irreps_for(num_channels: int, max_L: int) -> str:
    """MACE's hidden irreps: ``num_channels`` of each L <= max_L with parity (-1)^L."""
    return " + ".join(f"{num_channels}x{l}{'e' if l % 2 == 0 else 'o'}" for l in range(max_L + 1))


def build_model(
    atomic_numbers: Sequence[int],
    r_max: float = 5.0,
    num_bessel: int = 10,
    num_polynomial_cutoff: int = 5,
    max_ell: int = 3,
    max_L: int = 1,
    num_channels: int = 128,
    num_interactions: int = 2,
    correlation: Union[int, Sequence[int]] = 3,
    MLP_irreps: str = "16x0e",
    radial_MLP: Sequence[int] = (64, 64, 64),
    gate: str = "silu",
    interaction: str = "RealAgnosticResidualInteractionBlock",
    interaction_first: str = "RealAgnosticResidualInteractionBlock",
    avg_num_neighbors: Optional[float] = 10.0,
    atomic_energies: Optional[Union[Sequence[float], Mapping[int, float]]] = None,
    atomic_inter_scale: Optional[float] = 1.0,
    atomic_inter_shift: Optional[float] = 0.0,
    heads: Optional[Sequence[str]] = None,
    use_reduced_cg: bool = False,
    pair_repulsion: bool = False,
    distance_transform: str = "None",
    coupling: Optional[Mapping[str, Any]] = None,
    atomic_polarisabilities: Optional[Union[Sequence[float], Mapping[int, float]]] = None,
    atomic_charges: Optional[Union[Sequence[float], Mapping[int, float], bool, str]] = None,
    dtype: str = "float64",
    seed: Optional[int] = None,
    cueq: bool = False,
) -> FieldMACE:
    """A FieldMACE on a new mace-torch ``ScaleShiftMACE`` (defaults: the paper's architecture).

    ``atomic_energies``: E0 per element, either a list in ``atomic_numbers`` order or a dict
    {Z: E0} (eV); default zeros. Several heads share the same E0s, scale and shift.
    ``coupling``: ``form``, ``layers``, ``l_in``, ``l_out``, ``init``, ``init_scale`` as in
    :class:`FieldMACE` (default: ``residual_tp`` on every couplable layer, small random init).
    ``atomic_polarisabilities``: a_Z per element (e A^2/V; list in ``atomic_numbers`` order or
    {Z: a}); default zeros (training fits them to the data, see :class:`FieldMACE`).
    ``atomic_charges``: q_Z per element (e; list or {Z: q}), the per-element Born-charge
    baseline (:func:`~mf_lightning.model.field_mace.charge_enthalpy`); default (None, False,
    "fit" or "auto": training's choice, resolved before this) zeros.
    ``cueq``: run the backbone on cuEquivariance (:meth:`FieldMACE.use_cueq`).
    """
    # None means "not known yet" (train.py fills them from the data); use neutral values here
    avg_num_neighbors = 10.0 if avg_num_neighbors is None else avg_num_neighbors
    atomic_inter_scale = 1.0 if atomic_inter_scale is None else atomic_inter_scale
    atomic_inter_shift = 0.0 if atomic_inter_shift is None else atomic_inter_shift
    torch_dtype = resolve_dtype(dtype)
    z = [int(x) for x in atomic_numbers]
    if len(set(z)) != len(z) or not z:
        raise ValueError(f"atomic_numbers must be a non-empty list of distinct Z, got {z}")
    heads = list(heads) if heads else ["Default"]
    if atomic_energies is None:
        e0 = np.zeros(len(z))
    elif isinstance(atomic_energies, Mapping):
        missing = [k for k in z if k not in atomic_energies and str(k) not in atomic_energies]
        if missing:
            raise ValueError(f"atomic_energies has no E0 for Z={missing}")
        e0 = np.array([float(atomic_energies.get(k, atomic_energies.get(str(k)))) for k in z])
    else:
        e0 = np.asarray(atomic_energies, dtype=float)
        if e0.shape != (len(z),):
            raise ValueError(f"atomic_energies has {e0.shape} values for {len(z)} elements")
    e0 = np.tile(e0, (len(heads), 1)) if len(heads) > 1 else e0
    config = dict(
        r_max=float(r_max),
        num_bessel=int(num_bessel),
        num_polynomial_cutoff=int(num_polynomial_cutoff),
        max_ell=int(max_ell),
        interaction_cls=mace_modules.interaction_classes[interaction],
        interaction_cls_first=mace_modules.interaction_classes[interaction_first],
        num_interactions=int(num_interactions),
        num_elements=len(z),
        hidden_irreps=o3.Irreps(hidden_irreps_for(num_channels, max_L)),
        MLP_irreps=o3.Irreps(MLP_irreps),
        atomic_energies=e0,
        avg_num_neighbors=float(avg_num_neighbors),
        atomic_numbers=z,
        correlation=correlation if isinstance(correlation, int) else list(correlation),
        gate=mace_modules.gate_dict[gate],
        pair_repulsion=bool(pair_repulsion),
        distance_transform=distance_transform,
        radial_MLP=[int(x) for x in radial_MLP],
        radial_type="bessel",
        heads=heads,
        use_reduced_cg=bool(use_reduced_cg),
        atomic_inter_scale=np.full(len(heads), float(atomic_inter_scale)),
        atomic_inter_shift=np.full(len(heads), float(atomic_inter_shift)),
    )
    if isinstance(atomic_polarisabilities, Mapping):
        given = atomic_polarisabilities
        atomic_polarisabilities = [float(given.get(k, given.get(str(k), 0.0))) for k in z]
    if isinstance(atomic_charges, (bool, str)):  # training's switches (pipeline.make_model), resolved there
        atomic_charges = None
    elif isinstance(atomic_charges, Mapping):
        given = atomic_charges
        atomic_charges = [float(given.get(k, given.get(str(k), 0.0))) for k in z]
    from mf_lightning.model.coupling import DEFAULTS

    coupling = {**DEFAULTS, **(coupling or {})}
    if seed is not None:
        torch.manual_seed(int(seed))
    with default_dtype(torch_dtype):
        backbone = ScaleShiftMACE(**config)
        model = FieldMACE(backbone, config_to_json(config), atomic_polarisabilities=atomic_polarisabilities,
                           atomic_charges=atomic_charges, **coupling)
    return model.to(torch_dtype).use_cueq(cueq)
