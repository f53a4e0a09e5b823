"""Helpers shared by tests: tiny models and batches of real structures."""

from __future__ import annotations

import os
import signal as signal_module

import numpy as np
import pytorch_lightning as pl
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


# ---------------------------------------------------------------- small mace-torch source models
def mace_kwargs(heads, use_reduced_cg):
    from e3nn import o3
    from mace.modules import gate_dict, interaction_classes

    n = len(heads)
    e0 = np.array([[-4.9, -7.8]]) + 0.3 * np.arange(n)[:, None]  # per head, O and Si
    return dict(
        r_max=4.0, num_bessel=6, num_polynomial_cutoff=5, max_ell=2,
        interaction_cls=interaction_classes["RealAgnosticResidualInteractionBlock"],
        interaction_cls_first=interaction_classes["RealAgnosticInteractionBlock"],
        num_interactions=2, num_elements=2, hidden_irreps=o3.Irreps("8x0e+8x1o"),
        MLP_irreps=o3.Irreps("8x0e"), atomic_energies=e0 if n > 1 else e0[0],
        avg_num_neighbors=12.0, atomic_numbers=[8, 14], correlation=2,
        gate=gate_dict["silu"], radial_MLP=[16, 16], heads=heads, use_reduced_cg=use_reduced_cg,
    )


def make_source(kind="ScaleShiftMACE", heads=("Default",), use_reduced_cg=False):
    """A small random mace-torch model for O/Si (what a user's foundation model stands in for)."""
    from mace.modules.models import MACE, ScaleShiftMACE

    from mf_lightning.utils import default_dtype

    heads = list(heads)
    torch.manual_seed(3)
    with default_dtype(torch.float64):
        kw = mace_kwargs(heads, use_reduced_cg)
        if kind == "ScaleShiftMACE":
            model = ScaleShiftMACE(atomic_inter_scale=[1.7] * len(heads),
                                   atomic_inter_shift=[-0.2 + 0.1 * i for i in range(len(heads))], **kw)
        else:
            model = MACE(**kw)
    return model.double()


# ---------------------------------------------------------------- fault injection (subprocess tests)
class SignalAtStep(pl.Callback):
    """Sends ``signal`` (default SIGKILL: a hard crash, no cleanup) to its own process in the
    middle of optimisation step ``step`` (after the backward pass, before the optimiser update)."""

    def __init__(self, step: int, signal: str = "SIGKILL"):
        self.step, self.signal = int(step), getattr(signal_module, signal)

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        if trainer.global_step == self.step:
            os.kill(os.getpid(), self.signal)
