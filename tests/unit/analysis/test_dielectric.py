"""Derived dielectric properties: eps_ion of an analytic rigid-ion model and the model Hessian
against finite differences of the model's forces (eps_inf and n of known materials are in
tests/unit/data/test_units.py)."""

from __future__ import annotations

import numpy as np
import pytest

from mf_lightning.analysis.dielectric import (
    eps_poly,
    ionic_dielectric,
    model_hessian,
    optical_modes,
    refractive_index,
    wavenumber,
)
from mf_lightning.units import EPS0_E_PER_V_A
from tests.helpers import elements_of, tiny_model


def test_eps_poly_is_mean_eigenvalue_and_negative_gives_nan():
    eps = np.diag([2.0, 3.0, 7.0])
    R = np.linalg.qr(np.random.default_rng(0).normal(size=(3, 3)))[0]
    assert eps_poly(R @ eps @ R.T) == pytest.approx(4.0)
    assert np.isnan(refractive_index(-np.eye(3)))


def rigid_ion(k=2.5, Z=1.7, m1=22.99, m2=35.45, a=4.0):
    """Two ions (+Z, -Z) joined by an isotropic spring k between the sublattices:
    H = k [[I, -I], [-I, I]], one triply degenerate optical mode omega^2 = k/mu, and by hand
    eps_ion = Z^2 / (eps0 Omega k) I, independent of the masses."""
    H = np.zeros((6, 6))
    H[:3, :3] = H[3:, 3:] = k * np.eye(3)
    H[:3, 3:] = H[3:, :3] = -k * np.eye(3)
    becs = np.stack([Z * np.eye(3), -Z * np.eye(3)])
    return H, becs, np.array([m1, m2]), a ** 3


def test_eps_ion_of_rigid_ion_model_by_hand():
    k, Z, a = 2.5, 1.7, 4.0
    H, becs, masses, volume = rigid_ion(k=k, Z=Z, a=a)
    out = ionic_dielectric(H, becs, masses, volume)
    np.testing.assert_allclose(out["eps_ion"], Z ** 2 / (EPS0_E_PER_V_A * volume * k) * np.eye(3), rtol=1e-12, atol=1e-12)
    mu = masses.prod() / masses.sum()
    np.testing.assert_allclose(out["omega2"], [k / mu] * 3, rtol=1e-12)
    assert out["unstable_modes_cm"] == []
    # NaCl-like numbers are in the THz range: sqrt(2.5 eV/A^2 / 14 amu) ~ 220 cm^-1
    assert 150 < wavenumber(out["omega2"][0]) < 300


def test_eps_ion_masses_cancel_and_unstable_modes_are_reported():
    H, becs, masses, volume = rigid_ion()
    a = ionic_dielectric(H, becs, masses, volume)["eps_ion"]
    b = ionic_dielectric(H, becs, masses * [3.0, 0.5], volume)["eps_ion"]
    np.testing.assert_allclose(a, b, rtol=1e-12)
    out = ionic_dielectric(-H, becs, masses, volume)  # a maximum, not a minimum
    assert len(out["unstable_modes_cm"]) == 3 and all(w < 0 for w in out["unstable_modes_cm"])
    assert np.isnan(out["eps_ion"]).all()  # no eps_ion at a saddle: NaN (flagged), never 0


def test_acoustic_modes_are_removed_exactly():
    rng = np.random.default_rng(1)
    n = 4
    A = rng.normal(size=(3 * n, 3 * n))
    H = A @ A.T
    # impose translational invariance: sum over l of H[k, l] = 0
    blocks = H.reshape(n, 3, n, 3)
    for k in range(n):
        blocks[k, :, k, :] -= blocks[k].sum(axis=1)
    H = 0.5 * (blocks.reshape(3 * n, 3 * n) + blocks.reshape(3 * n, 3 * n).T)
    masses = rng.uniform(1, 50, size=n)
    omega2, modes = optical_modes(H, masses)
    assert omega2.shape == (3 * n - 3,)
    # every optical mode is orthogonal to the mass-weighted translations
    for a in range(3):
        t = np.zeros((n, 3))
        t[:, a] = np.sqrt(masses)
        np.testing.assert_allclose(np.einsum("mka,ka->m", modes, t), 0.0, atol=1e-10)


def test_model_hessian_matches_finite_differences_of_model_forces(sio2_atoms):
    atoms = sio2_atoms[:9].copy()  # a small periodic piece (the cell is kept)
    model = tiny_model(elements_of(atoms))
    H = model_hessian(model, atoms, field=(0.0, 0.0, 0.02))
    assert H.shape == (27, 27)
    np.testing.assert_allclose(H, H.T, atol=1e-10)
    np.testing.assert_allclose(H.reshape(9, 3, 9, 3).sum(axis=2), 0.0, atol=1e-8)  # translations cost nothing

    from mf_lightning.simulation.calculator import MACEFieldCalculator

    calc = MACEFieldCalculator(model, electric_field=(0.0, 0.0, 0.02))
    h = 1e-4
    for k, j in [(0, 0), (4, 2), (8, 1)]:
        plus, minus = atoms.copy(), atoms.copy()
        plus.positions[k, j] += h
        minus.positions[k, j] -= h
        fd = -(calc.get_forces(plus) - calc.get_forces(minus)).reshape(-1) / (2 * h)
        np.testing.assert_allclose(H[3 * k + j], fd, atol=1e-6)
