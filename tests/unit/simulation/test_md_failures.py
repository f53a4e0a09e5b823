"""MD that fails: dynamics that diverge are a failed run (exit 3) naming the step and time, not
bad input, and keep the frames before; a head that never learned the forces is refused (exit 2)
unless --allow-untrained, which is then written into the outputs."""

from __future__ import annotations

import json

import ase.io
import pytest

from mf_lightning import save_model
from mf_lightning.errors import EXIT_FAILED, EXIT_INPUT, RunFailedError
from mf_lightning.simulation.calculator import MACEFieldCalculator
from mf_lightning.simulation.md import FieldProtocol, run_md
from tests.helpers import elements_of, tiny_model


@pytest.fixture(scope="module")
def case(tmp_path_factory, sio2_atoms):
    root = tmp_path_factory.mktemp("md_failures")
    quartz = sio2_atoms.copy()
    quartz.calc = None
    ase.io.write(root / "quartz.xyz", quartz, format="extxyz")
    model = tiny_model(elements_of(quartz))  # untrained: O(1) random field coupling
    save_model(model, root / "model.pt")
    partial = tiny_model(elements_of(quartz))
    partial.head_quantities = {partial.heads[0]: ["becs", "polarisability"]}  # never learned E, F
    save_model(partial, root / "response_only.pt")
    return root, model, quartz


def error_lines(err):
    return [line for line in err.splitlines() if ": error: " in line]


def test_dynamics_diverging_under_an_extreme_field_is_a_failed_run_not_bad_input(case, capsys):
    """50 V/A (5000 MV/cm) switched on at 4 fs: the atoms fly apart. Before, the evolved positions
    failed a geometry check and the run blamed the input structure ("overlapping atoms", exit 2)
    after writing frames at 1e9 K; now it stops at the step the integration blew up (exit 3),
    says so with the time and what to change, and keeps the sound frames before it."""
    from mf_lightning.cli import md

    root, _, _ = case
    out = root / "diverged.xyz"
    rc = md.main([str(root / "quartz.xyz"), "--model", str(root / "model.pt"), "--out", str(out), "--steps", "30",
                  "--log-every", "1", "--field-kind", "constant", "--E0", "50", "--field-unit", "V/A", "--axis", "z",
                  "--t-on-fs", "4", "--no-progress", "--no-restart"])
    err = capsys.readouterr().err
    lines = error_lines(err)
    assert rc == EXIT_FAILED and "Traceback" not in err and len(lines) == 1, err
    line = lines[0]
    assert "the dynamics diverged at step 4 (t = 4 fs)" in line and "smaller time step" in line, line
    assert "weaker field" in line and "keeps the frames up to step 3" in line, line
    assert "not a structure" not in line and "overlapping" not in line, line
    frames = ase.io.read(out, index=":")
    assert [f.info["step"] for f in frames] == [0, 1, 2, 3]  # the frames before the divergence stay
    assert max(f.info["temperature"] for f in frames) < 1000  # and none of the blown-up state


def test_run_md_raises_run_failed_and_a_restart_continues_from_the_last_sound_frame(case, tmp_path):
    root, model, quartz = case
    out = tmp_path / "t.xyz"
    field = FieldProtocol(kind="constant", E0=50.0, direction=(0, 0, 1), t_on_fs=3.0)
    with pytest.raises(RunFailedError, match=r"diverged at step 3 \(t = 3 fs\)"):
        run_md(quartz, MACEFieldCalculator(model), out, steps=10, field=field, log_every=1, progress=False)
    assert [f.info["step"] for f in ase.io.read(out, index=":")] == [0, 1, 2]
    result = run_md(quartz, MACEFieldCalculator(model), out, steps=6, log_every=1, progress=False)  # no field now
    assert result["started_at"] == 2 and [f.info["step"] for f in ase.io.read(out, index=":")] == list(range(7))


def test_a_head_that_never_learned_forces_is_refused_unless_allowed_and_then_recorded(case, capsys):
    from mf_lightning.cli import hysteresis, md

    root, _, _ = case
    model = root / "response_only.pt"
    out = root / "untrained.xyz"
    base = [str(root / "quartz.xyz"), "--model", str(model), "--out", str(out), "--steps", "2", "--log-every", "1",
            "--no-progress", "--no-restart"]
    assert md.main(base) == EXIT_INPUT
    captured = capsys.readouterr()
    lines = error_lines(captured.err)
    assert len(lines) == 1 and "Traceback" not in captured.err, captured.err
    assert "never learned" in lines[0] and "forces" in lines[0] and "--allow-untrained" in lines[0], lines[0]
    assert not out.exists()  # refused before anything is written

    assert md.main(base + ["--allow-untrained"]) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out.strip().splitlines()[-1])
    # the forces, the enthalpy and the P(t) logged beside them: each named once
    notes = result["untrained"]
    assert any("forces" in n for n in notes) and any("P(t)" in n and "polarisation" in n for n in notes), notes
    assert any("needs energy" in n for n in notes) and len(notes) == len(set(notes)) == 3, notes
    frames = ase.io.read(out, index=":")
    assert len(frames) == 3 and all("never learned" in f.info["untrained"] for f in frames)
    assert "warning: untrained" in captured.err
    # spectra from such a trajectory inherit the warning (summary.json and stderr)
    from mf_lightning.cli import spectra

    longer = root / "untrained_long.xyz"
    assert md.main([str(root / "quartz.xyz"), "--model", str(model), "--out", str(longer), "--steps", "9",
                    "--log-every", "1", "--no-progress", "--allow-untrained"]) == 0
    capsys.readouterr()
    assert spectra.main([str(longer), "--out", str(root / "spectra"), "--temperature", "300"]) == 0
    summary = json.loads((root / "spectra" / "summary.json").read_text())
    assert "--allow-untrained" in summary["warnings"][0] and "never learned" in summary["warnings"][0]
    assert "--allow-untrained" in capsys.readouterr().err

    loop = root / "loop"
    assert hysteresis.main([str(root / "quartz.xyz"), "--model", str(model), "--out", str(loop), "--mode",
                            "quasistatic", "--points", "2", "--E0", "0.1", "--fmax", "1.0", "--no-progress",
                            "--allow-untrained"]) == 0
    metrics = json.loads((loop / "loop.json").read_text())
    assert any("forces" in w for w in metrics["warnings"]) and any("polarisation" in w for w in metrics["warnings"])
