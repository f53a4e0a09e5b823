"""ASE structures -> mace-torch ``AtomicData`` graphs and batches (neighbour lists from mace)."""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch

import mf_lightning._deps  # noqa: F401  (import order)
from mace.data import AtomicData, Configuration
from mace.tools import AtomicNumberTable
from mace.tools.torch_geometric import Batch

from mf_lightning.data import keys
from mf_lightning.utils import default_dtype


class UnknownElementError(ValueError):
    """A structure holds an element the model's element table does not know."""


def atoms_to_graph(
    atoms,
    atomic_numbers: Sequence[int],
    r_max: float,
    heads: Optional[Sequence[str]] = None,
    head: str = "Default",
    electric_field: Optional[Sequence[float]] = None,
    source: str = "<atoms>",
) -> AtomicData:
    """One ASE ``Atoms`` -> one ``AtomicData`` with its neighbour list (cutoff ``r_max``).

    ``electric_field`` (V/A) is stored under :data:`keys.ELECTRIC_FIELD`; default zero.
    """
    z = np.asarray(atoms.get_atomic_numbers())
    known = set(int(x) for x in atomic_numbers)
    unknown = sorted(set(int(x) for x in z) - known)
    if unknown:
        from ase.data import chemical_symbols

        names = ", ".join(chemical_symbols[u] for u in unknown)
        raise UnknownElementError(
            f"{source}: element(s) {names} not in the model's element table "
            f"({', '.join(chemical_symbols[k] for k in sorted(known))})"
        )
    field = np.zeros(3) if electric_field is None else np.asarray(electric_field, dtype=float)
    if field.shape != (3,) or not np.all(np.isfinite(field)):
        raise ValueError(f"{source}: electric field must be 3 finite numbers (V/A), got {field!r}")
    config = Configuration(
        atomic_numbers=z,
        positions=np.asarray(atoms.get_positions(), dtype=float),
        properties={keys.ELECTRIC_FIELD: field},
        property_weights={},
        cell=np.asarray(atoms.get_cell().array, dtype=float),
        pbc=tuple(bool(p) for p in atoms.get_pbc()),
        head=head,
    )
    table = AtomicNumberTable([int(x) for x in atomic_numbers])
    # AtomicData.from_config makes its tensors in torch's default dtype; float32 there would
    # round positions to ~1e-7 A before any model sees them. Graphs are always float64;
    # ``collate`` casts to the model's dtype.
    with default_dtype(torch.float64):
        graph = AtomicData.from_config(config, z_table=table, cutoff=float(r_max), heads=list(heads or ["Default"]))
    # mace's neighbour list puts an identity cell on structures without one, which would make
    # the volume 1 A^3 and P silently wrong. Only a 3D-periodic, non-singular cell defines a
    # volume (and so P, Z*, alpha, stress); otherwise store zeros so the model refuses them.
    if not (all(config.pbc) and abs(np.linalg.det(config.cell)) > 1e-9):
        graph.cell = torch.zeros_like(graph.cell)
    return graph


def collate(graphs: Sequence[AtomicData], dtype: torch.dtype = torch.float64, device="cpu") -> dict:
    """Batch graphs into the dict the model takes, floats cast to ``dtype``."""
    batch = Batch.from_data_list(list(graphs)).to(device)
    out = batch.to_dict()
    for k, v in out.items():
        if torch.is_tensor(v) and v.is_floating_point():
            out[k] = v.to(dtype)
    return out
