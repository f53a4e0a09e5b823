"""experiments/sio2_spectra and experiments/batio3_hysteresis run end to end (toy length, tiny
models) and write their figures and comparison tables."""

from __future__ import annotations

import importlib.util
import json

import ase.io

from mf_lightning.model.io import save_model
from tests.conftest import REPO, shared_file
from tests.helpers import elements_of, tiny_model


def load_script(name):
    spec = importlib.util.spec_from_file_location(name.replace("/", "_"), REPO / "experiments" / name / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_sio2_spectra_experiment(tmp_path, sio2_atoms):
    save_model(tiny_model(elements_of(sio2_atoms)), tmp_path / "model.pt")
    run = load_script("sio2_spectra")
    assert run.main(["--model", str(tmp_path / "model.pt"), "--out", str(tmp_path / "out"), "--production-fs", "60",
                     "--equilibration-fs", "10", "--no-progress"]) == 0
    text = (tmp_path / "out" / "comparison.md").read_text()
    assert "IR peaks" in text and "1036, 428, 759" in text and "Allegro-pol" in text
    summary = json.loads((tmp_path / "out" / "spectra" / "summary.json").read_text())
    assert len(summary["eps_inf"]) == 3 and summary["duration_fs"] >= 58
    assert (tmp_path / "out" / "spectra" / "spectra.png").is_file()
    frames = ase.io.read(tmp_path / "out" / "trajectory.xyz", index=":")
    assert sum("polarisability" in f.info for f in frames) >= 15  # alpha every 4 fs


def test_batio3_hysteresis_experiment(tmp_path):
    atoms = ase.io.read(shared_file("md", "BaTiO3.xyz"), index=0)
    save_model(tiny_model(elements_of(atoms)), tmp_path / "model.pt")
    run = load_script("batio3_hysteresis")
    assert run.main(["--model", str(tmp_path / "model.pt"), "--out", str(tmp_path / "out"), "--period-fs", "24",
                     "--cycles", "1.5", "--dt", "2", "--points", "2", "--relax-steps", "3", "--no-progress"]) == 0
    text = (tmp_path / "out" / "comparison.md").read_text()
    assert "dynamic" in text and "quasi-static" in text and "39.0" in text
    for mode in ("dynamic", "quasistatic"):
        loop = json.loads((tmp_path / "out" / mode / "loop.json").read_text())
        assert loop["units"] == {"P": "uC/cm^2", "E": "MV/cm"}
        assert (tmp_path / "out" / mode / "loop.png").is_file()
