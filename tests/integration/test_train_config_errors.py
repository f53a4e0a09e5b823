"""Configuration errors through the real entry points (train.py, eval.py, the console scripts'
``main``), each a subprocess as a user runs it: one line ``<prog>: error: ...`` naming the key,
no traceback, exit code 2, and nothing of the run written. A run folder keeps its record: a
second training is refused before anything is written, a finished run is replaced only by
``overwrite=true`` (which leaves no stale checkpoint) and skipped by its own ``resume=true``. A
run whose optimised metric is infinite exits 3 and is not marked finished."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from mf_lightning.errors import EXIT_FAILED, EXIT_INPUT
from mf_lightning.files import FileLock
from tests.conftest import REPO, SHARED_DATA

TOY = ["model.num_channels=4", "model.max_ell=1", "model.correlation=2", "model.r_max=3.5",
       "model.radial_MLP=[8]", "model.MLP_irreps=4x0e", "trainer.max_epochs=1", "trainer.limit_train_batches=1",
       "trainer.limit_val_batches=1", "trainer.limit_test_batches=1", "trainer.enable_progress_bar=false",
       "torch_threads=1"]


def run(tmp_path, entry, *args):
    env = {**os.environ, "MF_DATA_DIR": str(SHARED_DATA), "MF_CACHE_DIR": str(tmp_path / "cache"),
           "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    command = [sys.executable, *(entry if isinstance(entry, list) else [entry]), *args]
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def one_line_error(proc, prog, code=EXIT_INPUT) -> str:
    err = proc.stderr
    assert proc.returncode == code, (proc.returncode, err[-3000:])
    assert "Traceback" not in err, err[-3000:]
    lines = [line for line in err.splitlines() if ": error: " in line]
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: error: "), err[-3000:]
    return lines[0]


def snapshot(folder):
    """Every file's bytes (the lock file aside: opening it is how a run asks for it)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != ".train.lock"}


def test_bad_training_values_are_one_line_naming_every_key(tmp_path):
    """The values issue 27 listed, all at once: each key is named in the one line, and the run
    stopped before reading data or writing anything (Hydra's empty log aside)."""
    bad = {"data.batch_size": "0", "loss.huber_delta": "0", "model.dtype": "float16", "model.max_ell": "-1",
           "model.coupling.form": "bogus", "data.labels.energy.unit": "kcal/mol", "model.correlation": "0",
           "model.num_channels": "0", "loss.weights.forces": "-1", "loss.weights.becs": "inf"}
    proc = run(tmp_path, "train.py", "experiment=smoke", f"hydra.run.dir={tmp_path / 'run'}",
               *(f"{k}={v}" for k, v in bad.items()))
    line = one_line_error(proc, "train.py")
    for key in bad:
        assert f"{key}: " in line, (key, line)
    assert "data.batch_size: must be a positive integer, got 0" in line
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["train.log"]
    assert (tmp_path / "run" / "train.log").read_text() == ""


def test_finetune_replay_without_its_replay_file(tmp_path):
    proc = run(tmp_path, "train.py", "experiment=finetune_replay", "model.source=MACE.model",
               f"hydra.run.dir={tmp_path / 'run'}")
    assert "data.sources.replay.file: needs a value" in one_line_error(proc, "train.py")


@pytest.mark.parametrize("entry, prog, args, expected", [
    ("train.py", "train.py", ["nonsense=1"], "nonsense: no such key in the configuration"),
    ("train.py", "train.py", ["model.nonsense=1"], "model.nonsense: no such key in the configuration"),
    ("train.py", "train.py", ["model/coupling=bogus"], "model/coupling=bogus: no such option in config group"),
    ("train.py", "train.py", ["experiment=bogus"], "experiment=bogus: no such option in config group 'experiment'"),
    (["-m", "mf_lightning.cli.train"], "train.py", ["-m", "experiment=smoke", "model/coupling=none,bogus"],
     "model/coupling=bogus: no such option"),  # mf-train's main; a sweep's second value
    ("eval.py", "eval.py", ["model=model.pt", "nonsense=1"], "nonsense: no such key in the configuration"),
    ("eval.py", "eval.py", ["model=model.pt", "data=bogus"], "data=bogus: no such option in config group 'data'"),
])
def test_hydra_configuration_errors_exit_2_before_any_folder_is_made(tmp_path, entry, prog, args, expected):
    proc = run(tmp_path, entry, *args, f"hydra.run.dir={tmp_path / 'run'}", f"hydra.sweep.dir={tmp_path / 'sweep'}")
    assert expected in one_line_error(proc, prog)
    assert not (tmp_path / "run").exists() and not (tmp_path / "sweep").exists()


def test_bad_eval_values_are_one_line(tmp_path):
    proc = run(tmp_path, ["-m", "mf_lightning.cli.eval"], "model=model.pt", "data=sio2", "batch_size=0",
               "dtype=float16", f"hydra.run.dir={tmp_path / 'run'}")
    line = one_line_error(proc, "eval.py")
    assert "batch_size: must be a positive integer, got 0" in line and "dtype: unknown dtype 'float16'" in line


def test_debug_shows_the_traceback_of_a_composition_error(tmp_path):
    proc = run(tmp_path, "train.py", "nonsense=1", "debug=true", f"hydra.run.dir={tmp_path / 'run'}")
    assert proc.returncode != 0 and "Traceback" in proc.stderr


def test_a_run_folder_keeps_its_record(tmp_path):
    """A finished run; then, in its folder: a training while its lock is held (as by a running
    training), another config, another config with resume=true, the response demo: each refused
    with not a byte changed (.hydra/, the log, model.pt, metrics, checkpoints). Its own resume=true skips it;
    overwrite=true replaces it and leaves no stale best checkpoint beside the new one."""
    folder = tmp_path / "run"
    common = ["train.py", "experiment=smoke", f"hydra.run.dir={folder}", *TOY]
    first = run(tmp_path, *common)
    assert first.returncode == 0, first.stderr[-3000:]
    record = snapshot(folder)
    assert {".hydra/config.yaml", ".hydra/overrides.yaml", "checkpoints/best.ckpt", "model.pt",
            "metrics.json"} <= set(record)

    with FileLock(folder / ".train.lock", "the test holds it"):
        line = one_line_error(run(tmp_path, *common, "seed=1", "overwrite=true"), "train.py")
    assert "another training is running in this run folder" in line
    assert snapshot(folder) == record

    line = one_line_error(run(tmp_path, *common, "seed=1"), "train.py")
    assert f"{folder} holds a finished run" in line and "overwrite=true replaces it" in line
    assert snapshot(folder) == record
    line = one_line_error(run(tmp_path, *common, "seed=1", "resume=true"), "train.py")
    assert "with another configuration (it differs at seed)" in line
    assert snapshot(folder) == record

    line = one_line_error(run(tmp_path, *common, "demo.only=true"), "train.py")
    assert "holds a training run: the demo would replace its record" in line
    assert snapshot(folder) == record

    again = run(tmp_path, *common, "resume=true")
    assert again.returncode == 0 and "finished already, skipped" in again.stdout, again.stderr[-3000:]
    assert {k: v for k, v in snapshot(folder).items() if k != "train.log"} == {
        k: v for k, v in record.items() if k != "train.log"}

    replaced = run(tmp_path, *common, "seed=1", "overwrite=true")
    assert replaced.returncode == 0, replaced.stderr[-3000:]
    assert sorted(p.name for p in (folder / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    assert "- seed=1" in (folder / ".hydra" / "overrides.yaml").read_text()
    now = snapshot(folder)
    assert all(now[f] != record[f] for f in ("model.pt", "metrics.json", "checkpoints/best.ckpt"))
    assert now["train.log"].startswith(record["train.log"])  # the log keeps both runs


def test_an_infinite_optimised_metric_exits_3_and_is_not_finished(tmp_path):
    """loss.weights.forces=1e300: every step and every per-dataset metric is finite, but
    val/loss, the metric checkpoints, early stopping and sweeps use, is not. This run used to
    exit 0 with finished: true."""
    proc = run(tmp_path, "train.py", "experiment=smoke", f"hydra.run.dir={tmp_path / 'run'}", *TOY,
               "loss.weights.forces=1e300")
    assert "optimized_metric val/loss" in one_line_error(proc, "train.py", code=EXIT_FAILED)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["finished"] is False and metrics["optimized_metric"]["value"] is None
