"""One behaviour for bad input across every command-line tool (mf_lightning.errors): each tool
runs on the same bad files and bad model files. A single-input tool prints one line
``<prog>: error: ...`` naming the file, no traceback, and exits 2; a batch tool (predict,
distill) skips the structure, lists it in ``<out>.errors.csv`` and exits 1. ``--debug`` (or
``debug=true`` for the Hydra entry points) shows the traceback instead."""

from __future__ import annotations

import os
import subprocess
import sys

import ase.io
import numpy as np
import pytest
import torch

from mf_lightning.errors import EXIT_INPUT, EXIT_PARTIAL
from mf_lightning.model.io import save_model
from tests.conftest import REPO, SHARED_DATA
from tests.helpers import tiny_model


def quartz():
    return ase.io.read(SHARED_DATA / "md" / "SiO2.xyz", index=0)


BAD_FILES = {
    "missing": None,
    "empty": "",
    "garbage": "this is not a structure\n\x01\x02 at all\n",
    "truncated": "cut",
    "nan_position": "nan",
    "nan_cell": "nan_cell",
    "overlapping_atoms": "overlap",
}


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad_input")
    model = tiny_model([8, 14])
    save_model(model, root / "model.pt")
    ase.io.write(root / "good.xyz", [quartz()] * 2, format="extxyz")
    good_text = (root / "good.xyz").read_text()
    files = {}
    for name, kind in BAD_FILES.items():
        path = root / f"{name}.xyz"
        files[name] = path
        if kind is None:
            continue
        if kind == "cut":
            path.write_text(good_text[: len(good_text) // 3])
        elif kind == "nan":
            a = quartz()
            a.positions[3] = np.nan
            ase.io.write(path, a, format="extxyz")
        elif kind == "nan_cell":  # matscipy's neighbour list never returned on one
            a = quartz()
            a.cell[2, 2] = np.nan
            ase.io.write(path, a, format="extxyz")
        elif kind == "overlap":
            a = quartz()
            a.positions[1] = a.positions[0]
            ase.io.write(path, a, format="extxyz")
        else:
            path.write_text(kind)
    (root / "truncated_model.pt").write_bytes((root / "model.pt").read_bytes()[:500])
    torch.save({"a": ValueError("x")}, root / "pickled_model.pt")  # a Python object: needs unpickling
    return root, files


def tools(root, path, model):
    """(prog, main, argv, batch) for every module CLI, run on ``path`` with ``model``."""
    from mf_lightning.cli import audit, distill, hysteresis, matbench, md, paths, predict, spectra, table

    out = root / "out"
    return [
        ("predict", predict.main, [str(path), "--model", str(model), "--out", str(out / "p.csv"), "--no-progress"], True),
        ("distill", distill.main, [str(path), "--model", str(model), "--out", str(out / "d.xyz")], True),
        ("md", md.main, [str(path), "--model", str(model), "--out", str(out / "md.xyz"), "--steps", "2",
                         "--no-progress", "--no-restart"], False),
        ("hysteresis", hysteresis.main, [str(path), "--model", str(model), "--out", str(out / "h"),
                                         "--mode", "quasistatic", "--points", "2", "--no-progress"], False),
        ("spectra", spectra.main, [str(path), "--out", str(out / "s")], False),
        ("paths", paths.main, [str(path), "--model", str(model), "--out", str(out / "ps")], False),
        ("audit", audit.main, [str(path), "--out", str(out / "a")], False),
        ("matbench", matbench.main, ["--file", str(path), "--model", str(model), "--out", str(out / "m"),
                                     "--no-progress"], False),
        ("table", table.main, [str(path)], False),
    ]


def check(capsys, rc, batch, path, root):
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    if batch and rc == EXIT_PARTIAL:  # skipped and reported, the same way in every batch tool
        return
    assert rc == EXIT_INPUT, err
    lines = [line for line in err.splitlines() if ": error: " in line]
    assert len(lines) == 1, err
    assert path.name in lines[0] or str(path) in lines[0], lines[0]


@pytest.mark.parametrize("bad", list(BAD_FILES))
def test_every_module_cli_on_the_same_bad_files(case, bad, capsys, caplog):
    root, files = case
    path = files[bad]
    for prog, main, argv, batch in tools(root, path, root / "model.pt"):
        if prog == "spectra" and bad in ("nan_position", "nan_cell", "overlapping_atoms"):
            continue  # a structure, not a trajectory: refused as such (the "no P samples" line)
        rc = main(argv)
        if batch:
            err = capsys.readouterr().err
            assert rc == EXIT_PARTIAL and "Traceback" not in err, (prog, bad, rc, err)
            errors = (root / "out" / ("p.errors.csv" if prog == "predict" else "d.errors.csv")).read_text()
            assert path.name in errors, (prog, bad, errors)
            continue
        try:
            check(capsys, rc, batch, path, root)
        except AssertionError as exc:
            raise AssertionError(f"{prog} on {bad}: {exc}") from exc


@pytest.mark.parametrize("bad_model", ["missing_model.pt", "truncated_model.pt", "pickled_model.pt"])
def test_every_model_cli_on_bad_model_files(case, bad_model, capsys):
    root, files = case
    ase.io.write(root / "one.xyz", quartz(), format="extxyz")
    for prog, main, argv, batch in tools(root, root / "one.xyz", root / bad_model):
        if "--model" not in argv:
            continue
        rc = main(argv)
        err = capsys.readouterr().err
        assert rc == EXIT_INPUT and "Traceback" not in err, (prog, bad_model, rc, err)
        assert bad_model in err and len([line for line in err.splitlines() if ": error: " in line]) == 1, (prog, err)


def test_debug_shows_the_traceback(case):
    from mf_lightning.cli import md

    root, files = case
    with pytest.raises(Exception, match="no such structure file"):
        md.main([str(files["missing"]), "--model", str(root / "model.pt"), "--out", str(root / "x.xyz"),
                 "--steps", "1", "--debug"])


@pytest.mark.parametrize("entry", ["train", "eval"])
def test_hydra_entry_points_on_the_same_bad_files(case, entry, tmp_path):
    """train.py and eval.py (subprocesses: Hydra owns the process) on each bad file: exit 2, one
    line, no traceback; with debug=true the traceback is shown."""
    root, files = case
    env = {**os.environ, "MF_DATA_DIR": str(SHARED_DATA), "MF_CACHE_DIR": str(tmp_path / "cache"),
           "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    for bad, path in files.items():
        if entry == "train":
            cmd = [sys.executable, "train.py", "experiment=smoke", "data=extxyz", f"data.file={path}",
                   "data.val_fraction=0.5", f"hydra.run.dir={tmp_path / bad}", "torch_threads=1"]
        else:
            cmd = [sys.executable, "eval.py", f"model={root / 'model.pt'}", f"data={path}",
                   f"hydra.run.dir={tmp_path / bad}", "torch_threads=1"]
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
        err = proc.stderr
        assert proc.returncode == EXIT_INPUT, (entry, bad, proc.returncode, err[-2000:])
        assert "Traceback" not in err and path.name in err, (entry, bad, err[-2000:])
        assert len([line for line in err.splitlines() if ": error: " in line]) == 1, (entry, bad, err[-2000:])
    proc = subprocess.run(cmd + ["debug=true"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0 and "Traceback" in proc.stderr
