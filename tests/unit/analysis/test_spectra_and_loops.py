"""Spectra, fluctuation dielectric constants and loop extraction on synthetic signals with known
answers."""

from __future__ import annotations

import json

import ase.io
import numpy as np
import pytest
from ase import Atoms, units

from mf_lightning.analysis.hysteresis import loop_metrics
from mf_lightning.analysis.spectra import (
    C_CM_PER_FS,
    analyse,
    analyse_trajectory,
    autocorrelation,
    eps_ionic_from_fluctuations,
)
from mf_lightning.cli.spectra import main as spectra_main
from mf_lightning.units import EPS0_E_PER_V_A


def damped_oscillator(nu_cm, n, dt_fs, gamma_per_fs=0.002, seed=0):
    """A Langevin harmonic oscillator x'' = -w0^2 x - gamma x' + noise (stationary, Lorentzian
    line at w0), integrated with a small step and sampled every dt_fs."""
    rng = np.random.default_rng(seed)
    w0 = 2 * np.pi * C_CM_PER_FS * nu_cm
    sub = 10
    h = dt_fs / sub
    x, v = 1.0, 0.0
    out = np.empty(n)
    kick = np.sqrt(2 * gamma_per_fs * h) * w0
    for i in range(n):
        for _ in range(sub):
            v += h * (-w0 ** 2 * x - gamma_per_fs * v) + kick * rng.standard_normal()
            x += h * v
        out[i] = x
    return out


@pytest.fixture(scope="module")
def synthetic_run():
    dt, n = 2.0, 8000  # 16 ps, resolution ~2 cm^-1
    t = np.arange(n) * dt
    p = np.zeros((n, 3))
    p[:, 0] = 1e-3 * damped_oscillator(450.0, n, dt, seed=1)
    p[:, 2] = 1e-3 * damped_oscillator(1050.0, n, dt, seed=2)
    p[:, 1] = 7e-4 * damped_oscillator(780.0, n, dt, seed=3)
    alpha = np.zeros((n, 3, 3)) + 0.01 * np.eye(3)
    alpha[:, 0, 0] += 1e-4 * damped_oscillator(620.0, n, dt, seed=4)
    return t, p, alpha


def test_ir_and_raman_peaks_at_the_known_wavenumbers(synthetic_run):
    t, p, alpha = synthetic_run
    res = analyse(t, p, np.full(len(t), 100.0), 300.0, alpha=alpha, alpha_times_fs=t, sigma_cm=10.0)
    peaks = sorted(pk["wavenumber_cm"] for pk in res["ir_peaks"][:3])
    tolerance = res["resolution_cm"] + 10.0  # one grid step of the transform + the broadening
    np.testing.assert_allclose(peaks, [450.0, 780.0, 1050.0], atol=tolerance)
    assert res["raman_peaks"][0]["wavenumber_cm"] == pytest.approx(620.0, abs=tolerance)
    np.testing.assert_allclose(res["eps_inf"], np.eye(3) + alpha.mean(0) / EPS0_E_PER_V_A, rtol=1e-12)


def test_eps0_from_fluctuations_of_a_gaussian_process():
    rng = np.random.default_rng(0)
    sigma = np.array([2e-3, 1e-3, 3e-3])  # e/A^2
    p = rng.standard_normal((200000, 3)) * sigma
    volume, T = 500.0, 300.0
    expected = volume * sigma ** 2 / (EPS0_E_PER_V_A * units.kB * T)  # dimensionless, ~ O(1-10)
    got = eps_ionic_from_fluctuations(p, volume, T)
    np.testing.assert_allclose(np.diag(got), expected, rtol=0.02)  # 200k samples: ~0.3 % noise
    assert abs(got[0, 1]) < 0.02 * expected.max()


def test_static_limit_of_eps_omega_is_eps0(synthetic_run):
    t, p, alpha = synthetic_run
    res = analyse(t, p, np.full(len(t), 100.0), 300.0, alpha=alpha, alpha_times_fs=t, sigma_cm=0.0, max_cm=8000.0)
    # C(0) of the autocorrelation is the 1/n variance, eps_0 uses the unbiased 1/(n-1) one
    np.testing.assert_allclose(res["eps_omega"][0].real, np.diag(res["eps_0"]), rtol=1e-3)
    # far above the line (Lorentz: chi ~ chi0 w0^2/(w0^2 - w^2), 3 % of chi0 at 6000 cm^-1): eps_inf
    high = res["wavenumber"] > 6000
    chi0 = res["eps_0"][2, 2] - res["eps_inf"][2, 2]
    assert abs(res["eps_omega"][high][:, 2].real.mean() - res["eps_inf"][2, 2]) < 0.1 * chi0
    band = res["wavenumber"] < 2000
    peak = res["wavenumber"][band][np.argmax(res["eps_omega"][band, 2].imag)]
    assert peak == pytest.approx(1050.0, abs=20.0)  # absorption at the line


def test_spectra_cli_on_a_trajectory_file(tmp_path, synthetic_run):
    t, p, alpha = synthetic_run
    frames = []
    for k in range(0, 2000):
        a = Atoms("H", positions=[[0, 0, 0]], cell=np.eye(3) * 4.6416, pbc=True)  # Omega ~ 100 A^3
        a.info.update(time_fs=t[k], step=k, polarisation=p[k], volume=100.0, temperature=300.0)
        if k % 2 == 0:
            a.info["polarisability"] = alpha[k].reshape(9)
        frames.append(a)
    ase.io.write(tmp_path / "traj.xyz", frames, format="extxyz")
    assert spectra_main([str(tmp_path / "traj.xyz"), "--out", str(tmp_path / "out")]) == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["ir_peaks"] and summary["raman_peaks"]
    assert (tmp_path / "out" / "spectra.png").is_file()
    header = (tmp_path / "out" / "spectra.csv").read_text().splitlines()[0]
    assert header.startswith("wavenumber_cm,ir,raman") and "loss_zz" in header
    res = analyse_trajectory(tmp_path / "traj.xyz")
    assert res["temperature_K"] == pytest.approx(300.0)


def test_autocorrelation_of_a_cosine():
    t = np.arange(4000)
    acf = autocorrelation(np.cos(2 * np.pi * t / 50))[:, 0]
    np.testing.assert_allclose(acf[:200], 0.5 * np.cos(2 * np.pi * t[:200] / 50), atol=5e-3)


def test_loop_metrics_of_a_synthetic_loop():
    """Branches P = Ps tanh((E -+ Ec)/w) under E = E0 sin(wt): P_r = +-Ps tanh(Ec/w), E_c = +-Ec."""
    Ps, Ec, w, E0 = 40.0, 11.0, 4.0, 36.0
    t = np.linspace(0, 2, 4001)  # two periods
    E = E0 * np.sin(2 * np.pi * t)
    dE = np.gradient(E)
    P = np.where(dE >= 0, Ps * np.tanh((E - Ec) / w), Ps * np.tanh((E + Ec) / w))
    m = loop_metrics(E, P, discard=0.125)
    assert m["P_r_plus"] == pytest.approx(Ps * np.tanh(Ec / w), rel=1e-3)
    assert m["P_r_minus"] == pytest.approx(-Ps * np.tanh(Ec / w), rel=1e-3)
    assert m["E_c_plus"] == pytest.approx(Ec, abs=0.05)
    assert m["E_c_minus"] == pytest.approx(-Ec, abs=0.05)
    assert m["n_crossings"]["E_c+"] == 1 and m["n_crossings"]["E_c-"] == 2  # after the discarded start


def test_switching_double_well_through_md_dynamic_and_quasi_static_loops(tmp_path, batio3_atoms):
    """A synthetic ferroelectric (tests.helpers.DoubleWellFerroelectric: P_r = 39 uC/cm^2, static
    E_c = 11.4 MV/cm) in a cell whose z quantum is 25 uC/cm^2: switching moves P by several quanta
    between samples, which the old branch folding aliased. Both drivers log the raw P and recover
    the loop: quasi-static within one field step of 11.4; dynamic (MD through run_md) at 11.4 plus
    the lag of the sweep (the switch takes time while the field keeps moving)."""
    from ase import Atoms

    from mf_lightning.analysis.hysteresis import dynamic_loop, paper_reference, quasi_static_loop, write_loop
    from mf_lightning.data.polarisation import polarisation_quanta
    from mf_lightning.units import E_PER_A2_TO_UC_PER_CM2
    from tests.helpers import DoubleWellFerroelectric

    def crystal():
        atoms = Atoms("Ba", positions=[[0.0, 0.0, 2.05]], cell=[8.0, 8.0, 4.0], pbc=True)
        return atoms, DoubleWellFerroelectric(site_z=2.0, volume=atoms.get_volume(), u0=0.05)

    quantum = polarisation_quanta(crystal()[0].cell.array)[2, 2] * E_PER_A2_TO_UC_PER_CM2
    assert quantum == pytest.approx(25.0, rel=0.01)

    atoms, calc = crystal()
    step_mv = 0.5  # the quasi-static grid: 0.36 V/A = 36 MV/cm in 72 steps
    loop = quasi_static_loop(atoms, calc, 0.36, n_points=73, fmax=1e-4)
    m = write_loop(loop, tmp_path / "qs", discard=72 / len(loop["E"]), reference=paper_reference(atoms))
    assert m["P_r_plus"] == pytest.approx(39.0, abs=1e-3) and m["P_r_minus"] == pytest.approx(-39.0, abs=1e-3)
    assert abs(m["E_c_plus"] - 11.4) < step_mv and abs(m["E_c_minus"] + 11.4) < step_mv
    assert "paper" not in m  # not BaTiO3: the paper's BaTiO3 numbers are not printed
    assert (tmp_path / "qs" / "loop.csv").read_text().startswith("field_step,")  # no fake time axis
    assert np.abs(np.diff(loop["P"])).max() * E_PER_A2_TO_UC_PER_CM2 > 2 * quantum

    atoms, calc = crystal()
    loop = dynamic_loop(atoms, calc, tmp_path / "dyn", E0=0.36, period_fs=8000.0, cycles=2, timestep_fs=2.0,
                        friction_per_fs=0.3, log_every=5, progress=False)
    P_uc = loop["P"] * E_PER_A2_TO_UC_PER_CM2
    assert np.abs(np.diff(P_uc)).max() > 0.5 * quantum  # changes a folding logger would have aliased
    m = write_loop(loop, tmp_path / "dyn", discard=0.125)
    assert m["P_r_plus"] == pytest.approx(39.0, abs=0.3) and m["P_r_minus"] == pytest.approx(-39.0, abs=0.3)
    assert 11.4 < m["E_c_plus"] < 11.4 * 1.25 and -11.4 * 1.25 < m["E_c_minus"] < -11.4
    assert m["n_crossings"]["E_c+"] >= 1 and m["n_crossings"]["E_c-"] >= 1
    assert (tmp_path / "dyn" / "loop.csv").read_text().startswith("t_fs,")
    assert paper_reference(batio3_atoms) == {"P_r": 39.0, "E_c": 11.4}


def test_coercive_field_is_the_switch_of_its_own_half_cycle():
    """On the falling-field half cycle P dips through zero at +18.6 MV/cm and recovers, then
    switches at -27.1: E_c- is -27.1 (averaging the two crossings gave -4.2)."""
    t = np.linspace(0, 1, 2001)
    E = 36.0 * np.cos(2 * np.pi * t)  # falls from +36 to -36, then rises
    P = np.where(E > -27.1, 39.0, -39.0) * (t < 0.5) + np.where(E < 27.1, -39.0, 39.0) * (t >= 0.5)
    dip = (t < 0.5) & (np.abs(E - 18.6) < 0.5)
    P = np.where(dip, -5.0, P)
    m = loop_metrics(E, P, discard=0.0)
    assert m["E_c_minus"] == pytest.approx(-27.1, abs=0.1)
    assert m["E_c_plus"] == pytest.approx(27.1, abs=0.1)
    assert m["per_half_cycle"]["E_c-"] == [pytest.approx(-27.1, abs=0.1)]


def test_broadening_800_ps_takes_under_a_second():
    """An 800 ps trajectory sampled every fs (pad 4: a 2^21-point grid): FFT convolution."""
    import time

    from mf_lightning.analysis.spectra import gaussian_broaden

    y = np.random.default_rng(0).random(2 ** 21)
    start = time.perf_counter()
    out = gaussian_broaden(y, d_cm=0.01, sigma_cm=20.0)
    assert time.perf_counter() - start < 1.0
    assert out.shape == y.shape and abs(out[100000:-100000].mean() - 0.5) < 0.01


def test_spectra_warn_on_short_driven_runs():
    """A 50 fs run under a changing field: warnings (resolution, length, driven) and no eps_0."""
    from mf_lightning.analysis.spectra import analyse, describe_length

    t = np.arange(0, 51, 1.0)
    p = np.c_[np.zeros((len(t), 2)), 0.01 * np.sin(2 * np.pi * t / 20)]
    field = np.c_[np.zeros((len(t), 2)), 0.1 * np.sin(2 * np.pi * t / 20)]
    res = analyse(t, p, np.full(len(t), 100.0), 300.0, field=field)
    text = " ".join(res["warnings"])
    assert "driven" in text and "resolves only" in text and "short (50 fs" in text
    assert np.all(np.isnan(res["eps_0"]))
    assert describe_length(50.0) == "50 fs" and describe_length(200000.0) == "200 ps"
