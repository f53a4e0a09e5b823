"""Helpers shared by tests: tiny models and batches of real structures."""

from __future__ import annotations

import torch

import mf_lightning
from mf_lightning.data.graphs import atoms_to_graph, collate


def elements_of(*atoms_list) -> list[int]:
    return sorted({int(z) for a in atoms_list for z in a.get_atomic_numbers()})


TINY = dict(num_channels=8, max_ell=2, max_L=1, correlation=2, r_max=4.0, num_bessel=6,
            radial_MLP=(16, 16), MLP_irreps="8x0e", avg_num_neighbors=8.0)


def tiny_model(atomic_numbers, form="residual_tp", dtype="float64", seed=0, **coupling):
    """A random-weight FieldMACE small enough for many derivative evaluations; the coupling
    weights are O(1) (init_scale=1) so field effects are not lost under round-off."""
    coupling = {"form": form, "init": "random", "init_scale": 1.0, **coupling}
    return mf_lightning.build_model(atomic_numbers=atomic_numbers, coupling=coupling, dtype=dtype,
                                    seed=seed, atomic_energies=[-1.0 - 0.5 * i for i in range(len(atomic_numbers))],
                                    **TINY)


def batch_of(model, atoms_list, fields=None, dtype=torch.float64):
    fields = fields or [None] * len(atoms_list)
    graphs = [atoms_to_graph(a, model.atomic_numbers, model.r_max, heads=model.heads, electric_field=f)
              for a, f in zip(atoms_list, fields)]
    return collate(graphs, dtype=dtype)
