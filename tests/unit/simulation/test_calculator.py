"""ASE calculator: properties, units and sign conventions against ASE, field handling."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from ase.calculators.fd import calculate_numerical_forces, calculate_numerical_stress

from mf_lightning.data import keys
from mf_lightning.data.graphs import UnknownElementError
from mf_lightning.model.io import save_model
from mf_lightning.simulation.calculator import MACEFieldCalculator
from tests.conftest import DTYPES
from tests.helpers import batch_of, elements_of, tiny_model

FIELD = np.array([0.02, -0.01, 0.04])


@pytest.fixture(scope="module")
def models_by_dtype(dielectric_atoms, sio2_atoms):
    z = elements_of(dielectric_atoms, sio2_atoms)
    return {dt: tiny_model(z, form="basis_tp", dtype=dt) for dt in DTYPES}


@pytest.fixture(scope="module")
def model(models_by_dtype):
    return models_by_dtype["float64"]


def test_properties_match_the_model(models_by_dtype, dielectric_atoms, dtype):
    """The calculator returns the model's own numbers, in either precision (float32: the same
    computation, so to float32 round-off of the comparison only)."""
    model = models_by_dtype[dtype]
    atoms = dielectric_atoms.copy()
    atoms.calc = MACEFieldCalculator(model, electric_field=FIELD)
    ref = model(batch_of(model, [atoms], [FIELD], dtype=model.dtype),
                properties=(keys.ENERGY, keys.FORCES, keys.STRESS, keys.POLARISATION, keys.BECS, keys.POLARISABILITY))
    ref = {k: v.detach().double().numpy() for k, v in ref.items()}
    rel = 1e-12 if dtype == "float64" else 1e-6
    assert atoms.get_potential_energy() == pytest.approx(float(ref[keys.ENERGY][0]), rel=rel)
    assert atoms.get_potential_energy(force_consistent=True) == atoms.get_potential_energy()
    for got, want, r in ((atoms.get_forces(), ref[keys.FORCES], rel),
                         (atoms.calc.get_polarisation(), ref[keys.POLARISATION][0], rel),
                         (atoms.calc.get_becs(), ref[keys.BECS], 100 * rel),
                         (atoms.calc.get_polarisability(), ref[keys.POLARISABILITY][0], 100 * rel)):
        atol = 1e-14 if dtype == "float64" else r * np.abs(want).max()  # float32: round-off of the largest entry
        np.testing.assert_allclose(got, want, rtol=r, atol=atol)
    assert atoms.calc.get_becs().shape == (len(atoms), 3, 3)
    assert atoms.calc.get_becs().dtype == np.float64  # ASE gets float64 arrays whatever the model's dtype


def test_forces_without_polarisation(model, dielectric_atoms):
    """compute_polarisation=False (field-free MD) skips P but not the field's effect on forces;
    asking for P still computes it."""
    atoms = dielectric_atoms.copy()
    full, lean = MACEFieldCalculator(model, electric_field=FIELD), MACEFieldCalculator(model, electric_field=FIELD, compute_polarisation=False)
    np.testing.assert_array_equal(lean.get_forces(atoms), full.get_forces(atoms))
    assert keys.POLARISATION in full.results and keys.POLARISATION not in lean.results
    np.testing.assert_array_equal(lean.get_polarisation(atoms), full.get_polarisation(atoms))


def test_stress_convention_matches_ase_numerical_stress(model, dielectric_atoms):
    atoms = dielectric_atoms.copy()
    calc = MACEFieldCalculator(model, electric_field=FIELD)
    atoms.calc = calc
    np.testing.assert_allclose(atoms.get_stress(), calculate_numerical_stress(atoms, eps=1e-5),
                               rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(atoms.get_forces(), calculate_numerical_forces(atoms, eps=1e-5),
                               rtol=1e-5, atol=1e-8)


def test_changing_the_field_invalidates_results(model, dielectric_atoms):
    atoms = dielectric_atoms.copy()
    calc = MACEFieldCalculator(model)
    atoms.calc = calc
    e0 = atoms.get_potential_energy()
    calc.set_field(FIELD)
    e1 = atoms.get_potential_energy()
    assert e1 != e0
    calc.set_field((0, 0, 0))
    assert atoms.get_potential_energy() == pytest.approx(e0, rel=1e-13)


def test_time_dependent_field(model, dielectric_atoms):
    atoms = dielectric_atoms.copy()
    calc = MACEFieldCalculator(model, electric_field=lambda t: FIELD * np.sin(2 * np.pi * t / 100.0))
    atoms.calc = calc
    p0 = calc.get_polarisation(atoms).copy()  # t = 0: zero field
    calc.time = 25.0  # quarter period: full field
    p1 = calc.get_polarisation(atoms)
    assert not np.allclose(p0, p1)
    fixed = MACEFieldCalculator(model, electric_field=FIELD)
    np.testing.assert_allclose(p1, fixed.get_polarisation(atoms), rtol=1e-12)


def test_load_from_path(tmp_path, model, dielectric_atoms):
    save_model(model, tmp_path / "m.pt")
    atoms = dielectric_atoms.copy()
    atoms.calc = MACEFieldCalculator(str(tmp_path / "m.pt"), electric_field=FIELD)
    ref = dielectric_atoms.copy()
    ref.calc = MACEFieldCalculator(model, electric_field=FIELD)
    assert atoms.get_potential_energy() == pytest.approx(ref.get_potential_energy(), rel=1e-13)


def test_non_periodic_structure(model):
    molecule = Atoms("SiO2", positions=[[0, 0, 0], [1.6, 0, 0], [-1.6, 0, 0]])
    molecule.calc = MACEFieldCalculator(model)
    assert np.isfinite(molecule.get_potential_energy())
    assert molecule.get_forces().shape == (3, 3)
    with pytest.raises(ValueError, match="periodic"):
        molecule.calc.get_polarisation(molecule)


def test_bad_field_and_unknown_element(model, dielectric_atoms):
    with pytest.raises(ValueError, match="3 finite numbers"):
        MACEFieldCalculator(model, electric_field=(0, np.nan, 0))
    with pytest.raises(ValueError, match="3 finite numbers"):
        MACEFieldCalculator(model, electric_field=(0, 1))
    gold = Atoms("Au", cell=np.eye(3) * 4, pbc=True)
    gold.calc = MACEFieldCalculator(model)
    with pytest.raises(UnknownElementError, match="Au not in the model's element table"):
        gold.get_potential_energy()
