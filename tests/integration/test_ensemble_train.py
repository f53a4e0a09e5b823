"""A deep ensemble end to end: ``train.py ... ensemble=2`` trains two members on one split into
``member_<k>/`` and writes ``ensemble.pt`` calibrated on the validation split; ``mf-ensemble``
combining the same member runs with ``--calibrate <data config>`` gives the same file's
calibration; ``eval.py`` of the ensemble prints the coverage table."""

from __future__ import annotations

import json

import pytest

from mf_lightning.model.ensemble import FieldMACEEnsemble
from mf_lightning.model.io import load_model
from tests.integration.test_train_config_errors import TOY, run


@pytest.fixture(scope="module")
def ensemble_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("ensemble")
    proc = run(root, "train.py", "experiment=smoke", "ensemble=2", "seed=3", *TOY, f"hydra.run.dir={root / 'run'}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root, proc


def test_train_writes_members_on_one_split_and_a_calibrated_ensemble(ensemble_run):
    root, proc = ensemble_run
    folder = root / "run"
    splits = [json.loads((folder / f"member_{k}" / "splits" / "sio2.json").read_text()) for k in range(2)]
    assert splits[0]["ids"] == splits[1]["ids"] and splits[0]["seed"] == 3  # one split, the run's seed
    configs = [(folder / f"member_{k}" / ".hydra" / "config.yaml").read_text() for k in range(2)]
    assert "seed: 3\n" in configs[0] and "seed: 4\n" in configs[1]  # each member its own seed
    ens = load_model(folder / "ensemble.pt")
    assert isinstance(ens, FieldMACEEnsemble) and ens.n_members == 2 and ens.calibrated
    assert ens.calibration["split"] == "val" and ens.calibration["structures_left_out"] == 0
    assert set(ens.calibration["threshold"]) >= {"becs", "polarisability", "forces"}
    assert "| becs_diag |" in proc.stdout and "ensemble.pt: 2 members" in proc.stdout


def test_mf_ensemble_of_the_member_runs_calibrates_alike_and_eval_reports_coverage(ensemble_run):
    root, _ = ensemble_run
    folder = root / "run"
    proc = run(root, ["-m", "mf_lightning.cli.ensemble"], str(folder / "member_0"), str(folder / "member_1"),
               "--out", str(root / "combined.pt"), "--calibrate", "sio2", "--seed", "3")
    assert proc.returncode == 0, proc.stderr[-3000:]
    combined, trained = load_model(root / "combined.pt"), load_model(folder / "ensemble.pt")
    assert combined.calibration["scale"] == pytest.approx(trained.calibration["scale"], rel=1e-9)
    proc = run(root, "eval.py", f"model={root / 'combined.pt'}", "data=sio2", "seed=3", "split=val", "plots=false",
               f"hydra.run.dir={root / 'eval'}", "torch_threads=1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "within 1 sigma" in proc.stdout and "| sio2 | becs_diag |" in proc.stdout
    metrics = json.loads((root / "eval" / "metrics.json").read_text())
    becs = metrics["datasets"]["sio2"]["quantities"]["becs_diag"]["uncertainty"]
    assert becs["within_1_sigma"] == pytest.approx(0.6827, abs=1.0 / becs["n_values"] + 1e-9)  # calibrated here
    assert metrics["uncertainty"]["calibrated"] is True
