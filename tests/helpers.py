"""Helpers shared by tests: tiny models and batches of real structures."""

from __future__ import annotations

import os
import signal as signal_module
from typing import Optional

import numpy as np
import pytorch_lightning as pl
import torch
from ase.calculators.calculator import Calculator, all_changes

import mf_lightning
from mf_lightning.data.graphs import atoms_to_graph, collate

# MF_TEST_DEVICE=cuda runs the tests built on tiny_model/batch_of on a GPU (bench/gpu_check.sh);
# CI and make test: the CPU
TEST_DEVICE = os.environ.get("MF_TEST_DEVICE", "cpu")


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
                                    **TINY).to(TEST_DEVICE)


def batch_of(model, atoms_list, fields=None, dtype=torch.float64):
    fields = fields or [None] * len(atoms_list)
    graphs = [atoms_to_graph(a, model.atomic_numbers, model.r_max, heads=model.heads, electric_field=f)
              for a, f in zip(atoms_list, fields)]
    return collate(graphs, dtype=dtype, device=next(model.parameters()).device)


# ---------------------------------------------------------------- small mace-torch source models
def mace_kwargs(heads, use_reduced_cg, atomic_numbers=(8, 14)):
    from e3nn import o3
    from mace.modules import gate_dict, interaction_classes

    n = len(heads)
    atomic_numbers = list(atomic_numbers)
    base = [-4.9, -7.8] if atomic_numbers == [8, 14] else [-1.0 - 0.05 * z for z in atomic_numbers]
    e0 = np.array([base]) + 0.3 * np.arange(n)[:, None]  # per head, per element
    return dict(
        r_max=4.0, num_bessel=6, num_polynomial_cutoff=5, max_ell=2,
        interaction_cls=interaction_classes["RealAgnosticResidualInteractionBlock"],
        interaction_cls_first=interaction_classes["RealAgnosticInteractionBlock"],
        num_interactions=2, num_elements=len(atomic_numbers), hidden_irreps=o3.Irreps("8x0e+8x1o"),
        MLP_irreps=o3.Irreps("8x0e"), atomic_energies=e0 if n > 1 else e0[0],
        avg_num_neighbors=12.0, atomic_numbers=atomic_numbers, correlation=2,
        gate=gate_dict["silu"], radial_MLP=[16, 16], heads=heads, use_reduced_cg=use_reduced_cg,
    )


def make_source(kind="ScaleShiftMACE", heads=("Default",), use_reduced_cg=False, atomic_numbers=(8, 14)):
    """A small random mace-torch model for O/Si (what a user's foundation model stands in for);
    ``atomic_numbers=range(1, 95)`` for one that, like a foundation model, covers every element."""
    from mace.modules.models import MACE, ScaleShiftMACE

    from mf_lightning.utils import default_dtype

    heads = list(heads)
    torch.manual_seed(3)
    with default_dtype(torch.float64):
        kw = mace_kwargs(heads, use_reduced_cg, atomic_numbers)
        if kind == "ScaleShiftMACE":
            model = ScaleShiftMACE(atomic_inter_scale=[1.7] * len(heads),
                                   atomic_inter_shift=[-0.2 + 0.1 * i for i in range(len(heads))], **kw)
        else:
            model = MACE(**kw)
    return model.double()


# ---------------------------------------------------------------- fault injection (subprocess tests)
class SignalAtStep(pl.Callback):
    """Sends ``signal`` (default SIGKILL: a hard crash, no cleanup) to its own process in the
    middle of optimisation step ``step`` (after the backward pass, before the optimiser update),
    or, with ``during="validation"``, in the middle of the validation that follows ``step`` steps
    (after an epoch's last step, before its end-of-epoch checkpoint)."""

    def __init__(self, step: int, signal: str = "SIGKILL", during: str = "train", once: Optional[str] = None):
        """``once``: a marker file; the signal is sent only if it does not exist (and it is
        created first), so the same command rerun is not killed again."""
        self.step, self.signal, self.during, self.once = int(step), getattr(signal_module, signal), during, once

    def _fire(self):
        if self.once is not None:
            if os.path.exists(self.once):
                return
            open(self.once, "w").close()
        os.kill(os.getpid(), self.signal)

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        if self.during == "train" and trainer.global_step == self.step:
            self._fire()

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if self.during == "validation" and not trainer.sanity_checking and trainer.global_step == self.step:
            self._fire()


class DoubleWellFerroelectric(Calculator):
    """A one-coordinate ferroelectric with an exactly known loop, for the loop drivers.

    Atom 0's z displacement u from its site carries a charge Z:
    F(u, E) = k (u^4/4 - u0^2 u^2/2) - Z u E_z and P_z = Z u / Omega (e/A^2). At E = 0 the minima
    are u = +-u0, so P_r = Z u0 / Omega; the metastable minimum vanishes (the quasi-static coercive
    field) at Z E_c = k 2 u0^3 / (3 sqrt 3). Z and k are set from the paper's BaTiO3 numbers
    (P_r = 39 uC/cm^2, E_c = 11.4 MV/cm). In a wide cell the z quantum e/(a_x a_y) is small, so
    switching changes P by several quanta between samples: folding would alias it."""

    implemented_properties = ["energy", "forces", "polarisation"]

    def __init__(self, site_z: float, volume: float, p_r_uc: float = 39.0, e_c_mv: float = 11.4, u0: float = 0.05):
        super().__init__()
        from mf_lightning.units import E_PER_A2_TO_UC_PER_CM2

        self.site_z, self.volume, self.u0 = site_z, volume, u0
        self.Z = p_r_uc / E_PER_A2_TO_UC_PER_CM2 * volume / u0
        self.k = self.Z * (e_c_mv / 100.0) * 3 * np.sqrt(3) / (2 * u0 ** 3)
        self.time = 0.0
        self._field = self._used = np.zeros(3)

    def set_field(self, field) -> None:
        self._field = field if callable(field) else np.asarray(field, dtype=float)
        self.results = {}

    def field_now(self) -> np.ndarray:
        return np.asarray(self._field(self.time) if callable(self._field) else self._field, dtype=float)

    def check_state(self, atoms, tol=1e-15):  # as MACEFieldCalculator: a new field is a change
        changes = super().check_state(atoms, tol)
        if self.results and not np.array_equal(self._used, self.field_now()):
            changes = list(changes) + ["electric_field"]
        return changes

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        self._used = self.field_now()
        u = self.atoms.positions[0, 2] - self.site_z
        ez = self.field_now()[2]
        forces = np.zeros((len(self.atoms), 3))
        forces[0, 2] = -(self.k * (u ** 3 - self.u0 ** 2 * u) - self.Z * ez)
        self.results = {"energy": self.k * (u ** 4 / 4 - self.u0 ** 2 * u ** 2 / 2) - self.Z * u * ez,
                        "forces": forces, "polarisation": np.array([0.0, 0.0, self.Z * u / self.volume])}

    def get_polarisation(self, atoms=None):
        return self.get_property("polarisation", atoms)


def double_well_crystal():
    """One heavy atom in a wide cell (z quantum 25 uC/cm^2), displaced towards +P."""
    from ase import Atoms

    atoms = Atoms("Ba", positions=[[0.0, 0.0, 2.0 + 0.05]], cell=[8.0, 8.0, 4.0], pbc=True)
    return atoms, DoubleWellFerroelectric(site_z=2.0, volume=atoms.get_volume())


def only_record(case) -> bool:
    """Under ``MF_FUZZ_RECORD=<file>``, append the example a property-based test drew to that
    file and return True (the test then stops there): how tests/unit/test_fuzz_determinism.py
    shows that every process draws the same examples, without running the bodies."""
    record = os.environ.get("MF_FUZZ_RECORD")
    if not record:
        return False
    with open(record, "a", encoding="utf-8") as f:
        f.write(repr(case) + "\n")
    return True

