"""Unit conversions on load, checked against known materials and against each other."""

from __future__ import annotations

import numpy as np
import pytest

from mf_lightning.analysis.dielectric import eps_inf_from_alpha, eps_poly, refractive_index
from mf_lightning.data.quantities import to_internal, voigt6_to_3x3
from mf_lightning.data.reader import read_records, reduced_formula
from mf_lightning.units import E_PER_A2_TO_UC_PER_CM2, EPS0_E_PER_V_A
from tests.conftest import REPO, shared_file


def shipped_labels(name):
    """The label spec of conf/data/<name>.yaml: the tests check the configuration users run."""
    from omegaconf import OmegaConf

    labels = OmegaConf.to_container(OmegaConf.load(REPO / "conf" / "data" / f"{name}.yaml").labels)
    return {k: v for k, v in labels.items() if v is not None}


SIO2 = shipped_labels("sio2")
BATIO3 = shipped_labels("batio3")


def eps_inf_poly(alpha):
    return float(eps_poly(eps_inf_from_alpha(alpha)))


def test_constants():
    assert EPS0_E_PER_V_A == pytest.approx(0.00552635, rel=1e-5)
    assert E_PER_A2_TO_UC_PER_CM2 == pytest.approx(1602.18, rel=1e-5)


@pytest.fixture(scope="module")
def dielectric():
    return read_records(shared_file("mp_dielectric", "dielectric-valid.xyz"),
                        {"becs": {"key": "REF_becs", "unit": "e"},
                         "polarisability": {"key": "REF_polarisability", "unit": "chi/4pi"}})


@pytest.mark.parametrize("formula,eps", [("GaN", 6.09), ("SrO", 3.90), ("NaBr", 2.83)])
def test_mp_dielectric_polarisability_is_chi_over_4pi(dielectric, formula, eps):
    matches = [r for r in dielectric if reduced_formula(r.atoms) == formula]
    assert matches, f"{formula} not in the file"
    assert eps_inf_poly(matches[0].labels["polarisability"]) == pytest.approx(eps, abs=0.01)
    assert refractive_index(eps_inf_from_alpha(matches[0].labels["polarisability"])) == pytest.approx(eps ** 0.5, abs=0.01)


def test_alpha_quartz_units_and_calc_results_labels():
    records = read_records(shared_file("md", "SiO2.xyz"), SIO2)
    assert len(records) == 201
    for r in records:  # every promised label arrives, including those ASE put in calc.results
        assert set(r.labels) == set(SIO2)
        assert r.labels["forces"].shape == (72, 3) and r.labels["becs"].shape == (72, 3, 3)
    first = records[0]
    assert eps_inf_poly(first.labels["polarisability"]) == pytest.approx(2.39, abs=0.05)
    volume = first.atoms.get_volume()
    np.testing.assert_allclose(first.labels["polarisation"], first.atoms.calc.results["polarization"] / volume)
    np.testing.assert_allclose(first.labels["stress"], first.atoms.calc.results["stress"].reshape(3, 3)
                               if first.atoms.calc.results["stress"].size == 9 else voigt6_to_3x3(first.atoms.calc.results["stress"]))


def test_batio3_two_polarisation_keys_agree_and_voigt_stress():
    """The file has P in e/A^2 (REF_polarisation) and as the cell dipole (polarization, e A):
    converting the second with 1/Omega must give the first; likewise Voigt vs 3x3 stress."""
    r = read_records(shared_file("md", "BaTiO3.xyz"), BATIO3)[0]
    dipole = read_records(shared_file("md", "BaTiO3.xyz"), {"polarisation": {"key": "polarization", "unit": "e*A"},
                                                           "stress": {"key": "stress", "unit": "eV/A^3"}})[0]
    np.testing.assert_allclose(r.labels["polarisation"], dipole.labels["polarisation"], rtol=1e-6)
    np.testing.assert_allclose(r.labels["stress"], dipole.labels["stress"], rtol=1e-12)
    assert 4.0 < eps_inf_poly(r.labels["polarisability"]) < 7.0  # BaTiO3 eps_inf (DFT ~5-6)
    # the field is zero by default: the file's "0.3, 0.3, 0.3" is not zero-field-labels' field
    np.testing.assert_array_equal(r.electric_field, np.zeros(3))


def test_batio3_comma_separated_field_still_parses():
    r = read_records(shared_file("md", "BaTiO3.xyz"), {}, {"key": "REF_electric_field", "unit": "V/A"})[0]
    np.testing.assert_allclose(r.electric_field, [0.3, 0.3, 0.3])


def test_other_conversions():
    assert to_internal("polarisation", "uC/cm^2", np.array([1602.1766208, 0, 0]), 1.0)[0] == pytest.approx(1.0)
    assert to_internal("stress", "GPa", np.eye(3) * 160.21766208, 1.0)[0, 0] == pytest.approx(1.0)
    assert to_internal("electric_field", "MV/cm", np.array([100.0, 0, 0]), 1.0)[0] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="not accepted"):
        to_internal("polarisation", "C/m^2", np.zeros(3), 1.0)
