"""Finite-field MD: energy conservation, the field term in the forces, the field's timing, the
model's own P logged unfolded, restart from the last complete frame."""

from __future__ import annotations

import numpy as np
import pytest

from mf_lightning.data.polarisation import polarisation_quanta
from mf_lightning.simulation.calculator import MACEFieldCalculator
from mf_lightning.simulation.md import FieldProtocol, complete_frames_end, read_log, run_md
from tests.helpers import elements_of, tiny_model


@pytest.fixture(scope="module")
def model(sio2_atoms):
    return tiny_model(elements_of(sio2_atoms))


@pytest.fixture()
def quartz(sio2_atoms):
    a = sio2_atoms.copy()
    a.calc = None
    return a


def test_nve_conserves_energy_with_second_order_error(model, quartz, tmp_path):
    """Velocity Verlet on conservative forces: the total energy fluctuates by O(dt^2). Halving dt
    must divide the fluctuation by ~4 (measured 4.00 here), and at 0.5 fs it stays below 1e-3 of
    the kinetic energy: a wrong force (not -dF/dR) or a field applied at the wrong time breaks both."""
    spread = {}
    for dt in (1.0, 0.5):
        out = tmp_path / f"nve_{dt}.xyz"
        run_md(quartz, MACEFieldCalculator(model), out, steps=int(20 / dt), timestep_fs=dt, ensemble="nve",
               init_temperature_K=300.0, log_every=1, progress=False)
        logged = read_log(out, keys=("time_fs", "total_energy", "temperature"))
        spread[dt] = np.ptp(logged["total_energy"])
        kinetic = 1.5 * len(quartz) * 8.617e-5 * logged["temperature"].mean()
    assert 3.5 < spread[1.0] / spread[0.5] < 4.5
    assert spread[0.5] < 1e-3 * kinetic


def test_constant_field_enters_the_forces(model, quartz):
    """f(E) - f(-E) = 2 Z*^T E + O(E^3) (Z*_{k,ij} = d f_kj / dE_i), and the forces at a field are
    -dF/dR of the enthalpy at that field (central finite differences)."""
    E = np.array([0.0, 0.01, 0.02])
    plus, minus, zero = (MACEFieldCalculator(model, electric_field=s * E) for s in (1, -1, 0))
    df = 0.5 * (plus.get_forces(quartz) - minus.get_forces(quartz))
    expected = np.einsum("i,kij->kj", E, zero.get_becs(quartz))
    assert np.abs(expected).max() > 1e-4  # the field term is not negligible here
    np.testing.assert_allclose(df, expected, atol=1e-6)
    h = 1e-4
    for k, j in [(0, 2), (40, 1)]:
        a, b = quartz.copy(), quartz.copy()
        a.positions[k, j] += h
        b.positions[k, j] -= h
        fd = -(plus.get_potential_energy(a) - plus.get_potential_energy(b)) / (2 * h)
        assert plus.get_forces(quartz)[k, j] == pytest.approx(fd, abs=1e-6)


def test_time_dependent_field_is_applied_at_the_time_of_the_positions(model, quartz, tmp_path):
    field = FieldProtocol(kind="sine", E0=0.05, direction=(0, 0, 1), period_fs=8.0, t_on_fs=2.0)
    out = tmp_path / "sine.xyz"
    run_md(quartz, MACEFieldCalculator(model), out, steps=6, timestep_fs=1.0, ensemble="nvt", temperature_K=300.0,
           field=field, log_every=1, progress=False)
    import ase.io

    frames = ase.io.read(out, index=":")
    assert [f.info["step"] for f in frames] == list(range(7))
    check = MACEFieldCalculator(model)
    for f in frames:
        np.testing.assert_allclose(f.info["electric_field"], field(f.info["time_fs"]), atol=1e-15)
        check.set_field(f.info["electric_field"])
        a = f.copy()
        np.testing.assert_allclose(f.get_forces(), check.get_forces(a), atol=1e-6)  # ASE: forces -> f.calc
        np.testing.assert_allclose(f.info["polarisation"], check.get_polarisation(a), atol=1e-8)
    assert np.abs(frames[0].info["electric_field"]).max() == 0 and np.abs(frames[4].info["electric_field"]).max() > 0


def test_model_polarisation_is_logged_as_it_is_even_across_quanta(quartz, tmp_path):
    """The model's P is single-valued and smooth: a change of more than half a quantum between
    two samples (here P = alpha E with a large alpha and a field that swings fast) is real and must
    be logged as such, not folded back onto the previous sample's branch."""
    import torch

    model = tiny_model(elements_of(quartz))
    with torch.no_grad():
        model.atomic_polarisabilities.fill_(3.0)  # alpha ~ 0.6 e/(V A): P swings by quanta
    field = FieldProtocol(kind="sine", E0=0.2, direction=(0, 0, 1), period_fs=8.0)
    out = tmp_path / "swing.xyz"
    run_md(quartz, MACEFieldCalculator(model), out, steps=6, timestep_fs=1.0, ensemble="nvt", temperature_K=0.0,
           field=field, log_every=1, progress=False)
    import ase.io

    frames = ase.io.read(out, index=":")
    p = np.array([f.info["polarisation"][2] for f in frames])
    q = polarisation_quanta(quartz.cell.array)[:, 2][2]
    assert np.abs(np.diff(p)).max() > 0.5 * q  # jumps a folding logger would alias
    check = MACEFieldCalculator(model)
    for f in frames:
        check.set_field(f.info["electric_field"])
        np.testing.assert_allclose(f.info["polarisation"], check.get_polarisation(f.copy()), atol=1e-8)


def test_restart_continues_from_the_last_complete_frame(model, quartz, tmp_path):
    straight = tmp_path / "straight.xyz"
    run_md(quartz, MACEFieldCalculator(model), straight, steps=8, timestep_fs=1.0, ensemble="nve",
           init_temperature_K=300.0, log_every=2, progress=False)
    broken = tmp_path / "broken.xyz"
    run_md(quartz, MACEFieldCalculator(model), broken, steps=6, timestep_fs=1.0, ensemble="nve",
           init_temperature_K=300.0, log_every=2, progress=False)
    text = broken.read_text()
    broken.write_text(text[: len(text) - len(text.splitlines(keepends=True)[-1]) - 200])  # killed mid-frame
    frames, _ = complete_frames_end(broken)
    assert frames == 3  # steps 0, 2, 4 survive; step 6 was cut
    result = run_md(quartz, MACEFieldCalculator(model), broken, steps=8, timestep_fs=1.0, ensemble="nve",
                    init_temperature_K=300.0, log_every=2, progress=False)
    assert result["started_at"] == 4
    import ase.io

    a, b = ase.io.read(straight, index=":"), ase.io.read(broken, index=":")
    assert [f.info["step"] for f in b] == [0, 2, 4, 6, 8]
    # extxyz stores 8 decimals, so the continued run agrees to that precision, not bit for bit
    np.testing.assert_allclose(b[-1].positions, a[-1].positions, atol=1e-6)
    np.testing.assert_allclose(b[-1].info["total_energy"], a[-1].info["total_energy"], atol=1e-6)
