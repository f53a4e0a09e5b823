"""ASE's ``dipole`` property (``atoms.get_dipole_moment()``, what IR workflows read) is Omega P."""

from __future__ import annotations

import numpy as np

from mf_lightning.simulation.calculator import MACEFieldCalculator
from tests.helpers import elements_of, tiny_model


def test_dipole_is_volume_times_polarisation_at_a_field(sio2_atoms):
    atoms = sio2_atoms.copy()
    atoms.calc = MACEFieldCalculator(tiny_model(elements_of(atoms)), electric_field=(0.0, 0.01, 0.02))
    dipole = atoms.get_dipole_moment()
    np.testing.assert_allclose(dipole, atoms.calc.get_polarisation() * atoms.get_volume(), rtol=1e-12)
    assert np.abs(dipole).max() > 0
