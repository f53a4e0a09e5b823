"""A label's magnitude must be plausible for its declared unit (issue 29, item 4): the
MP-Dielectric file's chi/4pi read as e/(V A) (x 14 in eps_inf) is refused with the unit that
fits, whichever route reads it; the right unit passes; the check can be turned off per label."""

from __future__ import annotations

import numpy as np
import pytest

from mf_lightning.data.reader import DataError, read_records
from tests.conftest import SHARED_DATA

MP = SHARED_DATA / "mp_dielectric" / "dielectric-valid.xyz"


def test_chi_over_4pi_read_as_internal_units_is_refused_naming_the_unit(tmp_path):
    import ase.io

    frames = ase.io.read(MP, index=":40")
    path = tmp_path / "plain.xyz"
    ase.io.write(path, frames)
    spec = {"polarisability": {"key": "REF_polarisability", "unit": "e/(V*A)"}}  # the plain-file config's
    with pytest.raises(DataError, match=r"median mean eps_inf .* of \d+.*unit=chi/4pi"):
        read_records(path, spec)
    assert len(read_records(path, {"polarisability": {"key": "REF_polarisability", "unit": "chi/4pi"}})) == 40
    off = {"polarisability": {"key": "REF_polarisability", "unit": "e/(V*A)", "check": False}}
    assert len(read_records(path, off)) == 40


def test_gpa_read_as_ev_per_a3_is_refused(tmp_path, sio2_atoms):
    import ase.io
    from ase.calculators.singlepoint import SinglePointCalculator

    atoms = sio2_atoms.copy()
    atoms.calc = SinglePointCalculator(atoms, stress=np.full(6, 20.0))  # 20 GPa, written as plain numbers
    ase.io.write(tmp_path / "s.xyz", atoms)
    with pytest.raises(DataError, match="unit=GPa"):
        read_records(tmp_path / "s.xyz", {"stress": {"key": "stress", "unit": "eV/A^3"}})
    assert read_records(tmp_path / "s.xyz", {"stress": {"key": "stress", "unit": "GPa"}})


def test_eval_nulls_are_physical(sio2_atoms):
    """Beside each RMSE: the energy of the E0s alone (not 0 eV), n = 1 (not 0)."""
    from mf_lightning.analysis.evaluate import collect_predictions
    from mf_lightning.data.dataset import record_to_graph
    from mf_lightning.data.reader import Record
    from tests.helpers import elements_of, tiny_model

    model = tiny_model(elements_of(sio2_atoms))
    atoms = sio2_atoms.copy()
    counts = np.bincount([model.atomic_numbers.index(z) for z in atoms.get_atomic_numbers()], minlength=2)
    e0 = model.backbone.atomic_energies_fn.atomic_energies.detach().double().numpy().reshape(-1)
    reference = float(counts @ e0) + 0.05 * len(atoms)  # 0.05 eV/atom above the E0s
    alpha = 0.02 * np.eye(3)
    record = Record(atoms=atoms, labels={"energy": np.array(reference), "polarisability": alpha},
                    electric_field=np.zeros(3), file="x.xyz", frame=0)
    graph = record_to_graph(record, model.atomic_numbers, model.r_max, model.heads, model.heads[0])
    collected = collect_predictions(model, [graph])
    ref, _, _, zero = collected.arrays("energy")
    np.testing.assert_allclose(zero.ravel(), [-0.05], atol=1e-10)  # null - reference, per atom
    n_ref, _, _, n_zero = collected.arrays("n")
    np.testing.assert_allclose(n_zero, 1.0 - n_ref, atol=1e-12)
