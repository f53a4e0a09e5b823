"""MACE-Field for TorchSim (``torch-sim-atomistic``): batched relaxation, MD and response of many
systems in one model call, the batched counterpart of the ASE :class:`MACEFieldCalculator`.

``FieldMaceModel`` implements TorchSim's ``ModelInterface``: it takes a batched ``SimState`` and
returns ``energy`` (the electric enthalpy F(R, E), eV, per system), ``forces`` (eV/A) and
``stress`` (eV/A^3, mace's sign, (n_systems, 3, 3)), and on request (``response=``) the
``polarisation`` (e/A^2), ``becs`` (e, per atom 3x3) and ``polarisability`` (e/(V A)), all exact
autograd derivatives of one F, exactly as the ASE path computes them (tested to round-off).

The field (V/A) is one vector for every system, or one per system: ``electric_field`` of shape
(n_systems, 3) at construction (the systems of the states it is called with, in order), or a
``FieldState`` (a ``SimState`` carrying ``electric_field`` per system, kept through slicing and
concatenation). Optimisers and integrators build their own state classes and drop converged
systems from the batch, so inside ``ts.optimize`` / ``ts.integrate`` use one field for all.

An ensemble (:mod:`mf_lightning.model.ensemble`) returns the member means under the same names and,
for each, its spread ``<name>_std`` and the members' values ``<name>_members``.

``mf-predict ... --engine torchsim`` screens through it.
"""

from __future__ import annotations

from typing import ClassVar, Optional, Sequence, Union

import torch
import torch_sim as ts
from torch_sim.models.interface import ModelInterface
from torch_sim.neighbors import vesin_nl_ts

from mf_lightning.data import keys
from mf_lightning.data.graphs import check_elements

RESPONSE = (keys.POLARISATION, keys.BECS, keys.POLARISABILITY)


class FieldState(ts.SimState):
    """A ``SimState`` with an electric field (V/A) per system."""

    electric_field: torch.Tensor
    _system_attributes: ClassVar[set] = ts.SimState._system_attributes | {"electric_field"}

    def __init__(self, *args, electric_field: Optional[torch.Tensor] = None, **kwargs):
        super().__init__(*args, **kwargs)
        field = torch.zeros(self.n_systems, 3) if electric_field is None else torch.as_tensor(electric_field)
        field = field.to(device=self.device, dtype=self.dtype).reshape(-1, 3)
        self.electric_field = field.expand(self.n_systems, 3).clone()


class FieldMaceModel(ModelInterface):
    """A :class:`FieldMACE` as a TorchSim model (see the module docstring)."""

    def __init__(
        self,
        model: Union[str, torch.nn.Module],
        *,
        device: Optional[Union[str, torch.device]] = None,
        dtype: torch.dtype = torch.float64,
        electric_field: Sequence = (0.0, 0.0, 0.0),
        head: Optional[str] = None,
        compute_forces: bool = True,
        compute_stress: bool = True,
        response: Sequence[str] = (),
        neighbor_list_fn=vesin_nl_ts,
    ) -> None:
        super().__init__()
        from mf_lightning.model.io import load_model

        if not isinstance(model, torch.nn.Module):  # a FieldMACE or an ensemble of them
            model = load_model(model)
        unknown = set(response) - set(RESPONSE)
        if unknown:
            raise ValueError(f"unknown response quantities {sorted(unknown)}; choose from {RESPONSE}")
        self._device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self._dtype = dtype
        self._compute_forces, self._compute_stress = bool(compute_forces), bool(compute_stress)
        self._memory_scales_with = "n_atoms_x_density"  # a radial cutoff: TorchSim's autobatcher
        self.response = tuple(response)
        self.model = model.to(device=self._device, dtype=dtype).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        needed = [keys.ENERGY, keys.FORCES] + list(self.response)
        self.head = self.model.resolve_head(head, needed)
        self.head_index = self.model.heads.index(self.head)
        self.electric_field = torch.as_tensor(electric_field, dtype=dtype, device=self._device).reshape(-1, 3)
        self.neighbor_list_fn = neighbor_list_fn
        z = torch.as_tensor([int(v) for v in self.model.atomic_numbers])
        # atomic number -> column of the one-hot node attributes (-1: not in the model)
        self._index = torch.full((int(z.max()) + 1,), -1, dtype=torch.long)
        self._index[z] = torch.arange(len(z))
        self.r_max = torch.tensor(float(self.model.r_max), dtype=dtype)

    def set_field(self, electric_field: Sequence) -> None:
        self.electric_field = torch.as_tensor(electric_field, dtype=self._dtype, device=self._device).reshape(-1, 3)

    def _field(self, state: ts.SimState) -> torch.Tensor:
        field = getattr(state, "electric_field", None)
        if field is None:
            field = self.electric_field
        if field.shape[0] == 1:
            return field.expand(state.n_systems, 3).to(self._dtype)
        if field.shape[0] != state.n_systems:
            raise ValueError(f"{field.shape[0]} fields for {state.n_systems} systems: give one field, or one per "
                             "system (a FieldState keeps them aligned through slicing)")
        return field.to(self._dtype)

    def graph(self, state: ts.SimState) -> dict:
        """mace's batch dict for ``state``: neighbour lists per system (edges i -> j with their
        cell shifts), one-hot elements in the model's table, head and field per system."""
        z = state.atomic_numbers.cpu()
        if int(z.max()) >= len(self._index) or bool((self._index[z.clamp(max=len(self._index) - 1)] < 0).any()):
            check_elements(z.tolist(), self.model.atomic_numbers, source="state")
        cells = state.row_vector_cell
        counts = state.n_atoms_per_system.tolist()
        edges, unit_shifts, shifts, offset = [], [], [], 0
        for b, n in enumerate(counts):
            pos = state.positions[offset:offset + n]
            edge_index, unit = self.neighbor_list_fn(positions=pos, cell=cells[b], pbc=state.pbc, cutoff=self.r_max)
            unit = unit.to(self._dtype)
            edges.append(edge_index.to(self._device) + offset)
            unit_shifts.append(unit)
            shifts.append(unit @ cells[b])
            offset += n
        node_attrs = torch.nn.functional.one_hot(self._index[z], len(self.model.atomic_numbers))
        ptr = torch.cat([torch.zeros(1, dtype=torch.long), torch.cumsum(torch.as_tensor(counts), 0)])
        return {
            keys.POSITIONS: state.positions,
            keys.CELL: cells.reshape(-1, 3),  # mace's batched cell: (3 n_systems, 3) rows
            keys.BATCH: state.system_idx,
            keys.PTR: ptr.to(self._device),
            keys.NODE_ATTRS: node_attrs.to(device=self._device, dtype=self._dtype),
            keys.EDGE_INDEX: torch.cat(edges, dim=1),
            keys.UNIT_SHIFTS: torch.cat(unit_shifts, dim=0),
            keys.SHIFTS: torch.cat(shifts, dim=0),
            keys.HEAD: torch.full((len(counts),), self.head_index, dtype=torch.long, device=self._device),
            keys.ELECTRIC_FIELD: self._field(state),
        }

    def forward(self, state: Union[ts.SimState, dict], **_) -> dict:
        if isinstance(state, dict):
            state = ts.SimState(**state, masses=torch.ones_like(state["positions"][:, 0]))
        properties = [keys.ENERGY]
        if self._compute_forces:
            properties.append(keys.FORCES)
        if self._compute_stress:
            properties.append(keys.STRESS)
        properties += list(self.response)
        with torch.enable_grad():
            out = self.model(self.graph(state), properties=properties)
        names = {keys.ENERGY: "energy", keys.FORCES: "forces", keys.STRESS: "stress"}
        # an ensemble's spread and members beside each property
        return {names.get(p, p) + suffix: out[p + suffix].detach() for p in properties
                for suffix in ("", "_std", "_members") if p + suffix in out}
