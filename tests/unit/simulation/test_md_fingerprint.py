"""Every MD frame says which model wrote it and in what units (issue 29, item 6): continuing a
trajectory with another model is refused instead of mixing two models' dynamics."""

from __future__ import annotations

import ase.io
import pytest

from mf_lightning.errors import InputError
from mf_lightning.model.io import model_checksum
from mf_lightning.simulation.calculator import MACEFieldCalculator
from mf_lightning.simulation.md import run_md
from tests.helpers import elements_of, tiny_model


def test_frames_carry_units_and_the_model_and_a_restart_needs_the_same_model(sio2_atoms, tmp_path):
    atoms = sio2_atoms[:9].copy()
    one, other = tiny_model(elements_of(atoms), seed=0), tiny_model(elements_of(atoms), seed=1)
    out = tmp_path / "traj.xyz"
    run_md(atoms, MACEFieldCalculator(one), out, steps=2, temperature_K=100, log_every=1, progress=False)
    frames = ase.io.read(out, index=":")
    assert {f.info["model_sha256"] for f in frames} == {model_checksum(one)}
    assert "polarisation:e/A^2" in frames[0].info["units"] and "time_fs:fs" in frames[0].info["units"]
    run_md(atoms, MACEFieldCalculator(one), out, steps=3, temperature_K=100, log_every=1, progress=False)
    assert len(ase.io.read(out, index=":")) == 4  # the same model continues
    with pytest.raises(InputError, match="written by another model"):
        run_md(atoms, MACEFieldCalculator(other), out, steps=4, temperature_K=100, log_every=1, progress=False)
    assert len(ase.io.read(out, index=":")) == 4


def test_a_restart_with_other_settings_or_another_field_is_refused(sio2_atoms, tmp_path):
    """The review's case: mf-hysteresis rerun with another E0 in the same --out silently reused the
    old trajectory (a byte-identical loop)."""
    from mf_lightning.simulation.md import FieldProtocol

    atoms = sio2_atoms[:9].copy()
    model = tiny_model(elements_of(atoms))
    out = tmp_path / "traj.xyz"
    sine = FieldProtocol(kind="sine", E0=0.01, direction=(0, 0, 1), period_fs=8.0)
    run_md(atoms, MACEFieldCalculator(model), out, steps=2, temperature_K=100, log_every=1, field=sine,
           progress=False)
    with pytest.raises(InputError, match="other settings"):
        run_md(atoms, MACEFieldCalculator(model), out, steps=3, temperature_K=200, log_every=1, field=sine,
               progress=False)
    stronger = FieldProtocol(kind="sine", E0=0.1, direction=(0, 0, 1), period_fs=8.0)
    with pytest.raises(InputError, match="field"):
        run_md(atoms, MACEFieldCalculator(model), out, steps=3, temperature_K=100, log_every=1, field=stronger,
               progress=False)
    run_md(atoms, MACEFieldCalculator(model), out, steps=3, temperature_K=100, log_every=1, field=sine,
           progress=False)
    assert len(ase.io.read(out, index=":")) == 4
