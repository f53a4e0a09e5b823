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
    from mf_lightning.cli import audit, distill, hysteresis, matbench, md, paths, phonons, predict, spectra, table

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
        ("phonons", phonons.main, [str(path), "--model", str(model), "--out", str(out / "ph")], False),
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
        rc = main(argv)  # spectra: a structure, not a trajectory, is refused as such, naming the file
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


def test_a_nearly_singular_cell_is_refused_quickly_and_the_good_structures_kept(case, tmp_path):
    """A cell with a3 almost in the plane of a1, a2 (0.025 A^3 for 3 atoms) hung every tool in the
    neighbour list (GBs of memory). The real CLIs run in subprocesses with a timeout and a memory
    ceiling (a regression fails, it does not hang): mf-predict on both engines keeps the good
    structures of the same call and lists the bad one in its errors file (exit 1); mf-md refuses
    it in one line (exit 2)."""
    import csv

    from tests.unit.data.test_bad_input import THIN_CELL, limited_memory

    root, _ = case
    thin = tmp_path / "thin.xyz"
    ase.io.write(thin, ase.Atoms("OSiO", scaled_positions=[[0, 0, 0], [0.3, 0.3, 0.5], [0.6, 0.2, 0.7]],
                                 cell=THIN_CELL, pbc=True), format="extxyz")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}

    def run(*argv):
        return subprocess.run([sys.executable, "-m", *argv], cwd=REPO, env=env, capture_output=True, text=True,
                              timeout=300, preexec_fn=limited_memory())

    for engine in ("ase", "torchsim"):
        out = tmp_path / f"{engine}.csv"
        proc = run("mf_lightning.cli.predict", str(root / "good.xyz"), str(thin), "--model", str(root / "model.pt"),
                   "--out", str(out), "--no-progress", "--engine", engine)
        assert proc.returncode == EXIT_PARTIAL and "Traceback" not in proc.stderr, (engine, proc.stderr[-2000:])
        with open(out, newline="") as fh:
            assert len(list(csv.DictReader(fh))) == 2  # both frames of good.xyz
        with open(tmp_path / f"{engine}.errors.csv", newline="") as fh:
            errors = list(csv.DictReader(fh))
        assert len(errors) == 1 and "thin.xyz" in errors[0]["id"], errors
        assert "0.001 A thick along a3" in errors[0]["error"] and "nearly singular" in errors[0]["error"], errors
    proc = run("mf_lightning.cli.md", str(thin), "--model", str(root / "model.pt"), "--out", str(tmp_path / "md.xyz"),
               "--steps", "2", "--no-progress")
    lines = [line for line in proc.stderr.splitlines() if ": error: " in line]
    assert proc.returncode == EXIT_INPUT and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert len(lines) == 1 and "thin.xyz" in lines[0] and "nearly singular" in lines[0], proc.stderr[-2000:]


# Inputs the finite-field tools (md, hysteresis, spectra) must refuse in one line, each class of
# them: (tool, arguments with {root}/{model}/{quartz}/... placeholders, exit code, words of the line)
FIELD_TOOL_CASES = {
    "md_on_a_slab": ("md", "{slab} --model {model} --out {out}/slab.xyz --steps 2", 2, "periodic along x, y only"),
    "quasistatic_loop_on_a_slab": ("hysteresis", "{slab} --model {model} --out {out}/hs --mode quasistatic --points 2",
                                   2, "periodic along x, y only"),
    "dynamic_loop_on_a_slab": ("hysteresis", "{slab} --model {model} --out {out}/hd --period-fs 4 --dt 1 --cycles 1",
                               2, "periodic along x, y only"),
    "zero_cycles": ("hysteresis", "{quartz} --model {model} --out {out}/h0 --cycles 0", 2, "cycles must be > 0"),
    "zero_points": ("hysteresis", "{quartz} --model {model} --out {out}/h1 --mode quasistatic --points 0", 2,
                    "points must be >= 2"),
    "loop_out_is_a_file": ("hysteresis", "{quartz} --model {model} --out {file} --mode quasistatic --points 2", 2,
                           "exists and is a file, not a folder"),
    "spectra_out_is_a_file": ("spectra", "{trajectory} --out {file}", 2, "exists and is a file, not a folder"),
    "out_through_a_file": ("md", "{quartz} --model {model} --out {file}/t.xyz --steps 1", 2,
                           "is a file, not a folder"),
    "md_out_is_a_folder": ("md", "{quartz} --model {model} --out {out} --steps 1", 2, "is a folder"),
    "nan_field_function": ("md", "{quartz} --model {model} --out {out}/f.xyz --steps 2 --field-function "
                                 "mf_probe_fields:nan_field", 2, "returned [nan, 0.0, 0.0] at t = 0 fs"),
    "missing_field_function": ("md", "{quartz} --model {model} --out {out}/f.xyz --steps 2 --field-function "
                                     "mf_probe_fields:nothing", 2, "has no function 'nothing'"),
    "bad_axis": ("hysteresis", "{quartz} --model {model} --out {out}/ha --axis q", 2, "axis must be x, y, z"),
    "spectra_on_a_poscar": ("spectra", "{poscar} --out {out}/s1", 2, "not an MD trajectory of mf-md"),
    "spectra_on_a_plain_extxyz": ("spectra", "{plain} --out {out}/s2", 2, "not an MD trajectory of mf-md"),
    "structure_is_a_folder": ("md", "{root} --model {model} --out {out}/d.xyz --steps 1", 2,
                              "is a folder, not a structure file"),
    "model_is_a_folder": ("md", "{quartz} --model {root} --out {out}/d.xyz --steps 1", 2,
                          "is a folder, not a model file"),
    "trajectory_is_a_folder": ("spectra", "{root} --out {out}/s3", 2, "is a folder, not a trajectory file"),
    "symlink_loop_as_structure": ("md", "{loop} --model {model} --out {out}/l.xyz --steps 1", 2,
                                  "too many levels of symbolic links"),
    "symlink_loop_as_model": ("hysteresis", "{quartz} --model {loop} --out {out}/hl", 2,
                              "too many levels of symbolic links"),
}


@pytest.fixture(scope="module")
def field_inputs(case, sio2_atoms):
    root, _ = case
    slab = sio2_atoms.copy()
    slab.calc = None
    slab.center(vacuum=8.0, axis=2)
    slab.pbc = (True, True, False)
    ase.io.write(root / "slab.xyz", slab, format="extxyz")
    quartz = sio2_atoms.copy()
    quartz.calc = None
    ase.io.write(root / "POSCAR", quartz, format="vasp")
    plain = ase.Atoms(quartz.get_chemical_symbols(), positions=quartz.get_positions(), cell=quartz.get_cell(),
                      pbc=True)  # an extxyz without any logged column
    ase.io.write(root / "plain.xyz", [plain] * 12, format="extxyz")
    (root / "a_file").write_text("not a folder\n")
    (root / "mf_probe_fields.py").write_text("def nan_field(t):\n    return [float('nan'), 0.0, 0.0]\n")
    loop = root / "loop_a"
    if not loop.is_symlink():
        loop.symlink_to(root / "loop_b")
        (root / "loop_b").symlink_to(loop)
    from mf_lightning.cli import md

    md.main([str(root / "good.xyz"), "--model", str(root / "model.pt"), "--out", str(root / "traj.xyz"), "--steps", "2",
             "--log-every", "1", "--no-progress", "--no-restart"])
    return {"root": root, "model": root / "model.pt", "quartz": root / "good.xyz", "slab": root / "slab.xyz",
            "poscar": root / "POSCAR", "plain": root / "plain.xyz", "file": root / "a_file", "loop": loop,
            "trajectory": root / "traj.xyz", "out": root / "field_out"}


@pytest.mark.parametrize("name", list(FIELD_TOOL_CASES))
def test_field_tools_refuse_each_class_of_bad_input_in_one_line(field_inputs, name, capsys, monkeypatch):
    """md, hysteresis and spectra on slabs, impossible loop settings, outputs of the wrong kind,
    a NaN field function, plain structure files given as trajectories, folders and symbolic link
    loops given as files: each one line ``<tool>: error: ...`` and exit 2, never a traceback."""
    from mf_lightning.cli import hysteresis, md, spectra

    prog, argv, code, words = FIELD_TOOL_CASES[name]
    monkeypatch.syspath_prepend(str(field_inputs["root"]))  # where the field function's module is
    main = {"md": md.main, "hysteresis": hysteresis.main, "spectra": spectra.main}[prog]
    args = argv.format(**{k: str(v) for k, v in field_inputs.items()}).split() + (
        [] if prog == "spectra" else ["--no-progress"])
    rc = main(args)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if ": error: " in line]
    assert rc == code and "Traceback" not in err, (name, rc, err[-2000:])
    assert len(lines) == 1 and lines[0].startswith(f"mf-{prog}: error: ") and words in lines[0], (name, err[-2000:])


def test_a_read_only_output_location_is_one_line(field_inputs, tmp_path):
    """A read-only file system (EROFS: a plain OSError, not a PermissionError) under --out, for
    each tool: one line naming the location, exit 2. The location is a read-only bind mount in a
    private mount namespace (``unshare -m``), so the real CLIs run on a real EROFS."""
    import shutil

    ro = tmp_path / "ro"
    ro.mkdir()
    unshare = shutil.which("unshare")
    probe = subprocess.run([unshare or "unshare", "-m", "sh", "-c", f"mount --bind {ro} {ro} && "
                            f"mount -o remount,bind,ro {ro} && ! touch {ro}/x"], capture_output=True, text=True)
    if unshare is None or probe.returncode != 0:
        pytest.skip(f"no private mount namespace here (unshare -m: {probe.stderr.strip()[:200]})")
    f = {k: str(v) for k, v in field_inputs.items()}
    commands = {
        "md": f"mf_lightning.cli.md {f['quartz']} --model {f['model']} --out {ro}/t.xyz --steps 1 --no-progress",
        "hysteresis": f"mf_lightning.cli.hysteresis {f['quartz']} --model {f['model']} --out {ro}/loop --no-progress",
        "spectra": f"mf_lightning.cli.spectra {f['trajectory']} --out {ro}/spectra",
        "predict": f"mf_lightning.cli.predict {f['quartz']} --model {f['model']} --out {ro}/p.csv --no-progress",
    }
    script = " ; ".join(f"{sys.executable} -m {cmd} ; echo rc=$?" for cmd in commands.values())
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([unshare, "-m", "sh", "-c", f"mount --bind {ro} {ro} && mount -o remount,bind,ro {ro} && "
                           f"{script}"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert "Traceback" not in out, out[-3000:]
    assert [line for line in proc.stdout.splitlines() if line.startswith("rc=")] == [f"rc={EXIT_INPUT}"] * 4, out
    for prog in commands:
        lines = [line for line in proc.stderr.splitlines() if line.startswith(f"mf-{prog}: error: ")]
        assert len(lines) == 1 and str(ro) in lines[0] and "read-only file system" in lines[0], (prog, out[-3000:])
