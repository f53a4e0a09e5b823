"""The adversarial probe's cases (issue "Reliability"), each pinned: MD arguments, --out that
would destroy a file, silent corruption, leaks, disk full, odd environments, clear errors."""

from __future__ import annotations

import errno
import json
import logging
import os
import subprocess
import sys

import ase.io
import numpy as np
import pytest
import torch

from mf_lightning.errors import EXIT_FAILED, EXIT_INPUT, InputError
from mf_lightning.model.io import save_model
from tests.conftest import REPO, SHARED_DATA
from tests.helpers import tiny_model


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("probe")
    save_model(tiny_model([8, 14]), root / "model.pt")
    ase.io.write(root / "quartz.xyz", ase.io.read(SHARED_DATA / "md" / "SiO2.xyz", index=0), format="extxyz")
    return root


@pytest.mark.parametrize("args,message", [
    (["--dt", "0"], "time step must be > 0"),
    (["--temperature", "-300"], "temperature must be >= 0"),
    (["--friction", "-5"], "friction must be >= 0"),
    (["--log-every", "0"], "log_every must be >= 1"),
    (["--frame", "99"], "no frame 99"),
    (["--response-every", "0"], "response_every must be >= 1"),
])
def test_md_refuses_non_physical_arguments(files, args, message, capsys):
    from mf_lightning.cli import md

    argv = [str(files / "quartz.xyz"), "--model", str(files / "model.pt"), "--out", str(files / "t.xyz"),
            "--steps", "2", "--no-progress"]
    assert md.main(argv + args) == EXIT_INPUT
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_md_negative_steps_and_destructive_out(files, capsys):
    from mf_lightning.cli import md

    base = [str(files / "quartz.xyz"), "--model", str(files / "model.pt"), "--no-progress"]
    assert md.main(base + ["--out", str(files / "t.xyz"), "--steps", "-5"]) == EXIT_INPUT
    model_bytes = (files / "model.pt").read_bytes()
    assert md.main(base + ["--out", str(files / "model.pt"), "--steps", "1"]) == EXIT_INPUT
    assert (files / "model.pt").read_bytes() == model_bytes  # never "an incomplete last frame"
    structure = (files / "quartz.xyz").read_bytes()
    assert md.main(base + ["--out", str(files / "quartz.xyz"), "--steps", "1"]) == EXIT_INPUT
    assert (files / "quartz.xyz").read_bytes() == structure
    other = files / "other_model.pt"  # a file that is not an input, of another kind
    other.write_bytes(model_bytes)
    assert md.main(base + ["--out", str(other), "--steps", "1"]) == EXIT_INPUT
    assert other.read_bytes() == model_bytes
    err = capsys.readouterr().err
    assert "is also an input" in err and "other_model.pt exists and is not an mf-lightning MD trajectory" in err


def test_a_field_in_the_wrong_unit_is_named(files, caplog):
    from mf_lightning.cli import md

    caplog.set_level(logging.WARNING)
    out = files / "field.xyz"  # 0 steps: at 3600 MV/cm the untrained model's dynamics diverge at step 1 (exit 3)
    assert md.main([str(files / "quartz.xyz"), "--model", str(files / "model.pt"), "--out", str(out), "--steps", "0",
                    "--field-kind", "constant", "--E0", "36", "--field-unit", "V/A", "--no-progress",
                    "--no-restart"]) == 0
    assert "3600 MV/cm" in caplog.text and "did you mean --field-unit MV/cm" in caplog.text


def test_a_flipped_bit_in_a_model_file_is_caught(files, tmp_path):
    import zipfile

    from mf_lightning.model.io import ModelFileError, load_model

    path = tmp_path / "m.pt"
    path.write_bytes((files / "model.pt").read_bytes())
    with zipfile.ZipFile(path) as z:
        info = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)  # a weight
    data = bytearray(path.read_bytes())
    data[info.header_offset + 30 + len(info.filename) + len(info.extra) + info.file_size // 2] ^= 0x04
    path.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="checksum"):
        load_model(path)


def test_killed_saves_leave_no_temporary_files_and_disk_full_is_named(tmp_path, monkeypatch):
    from mf_lightning.cli._common import classify
    from mf_lightning.files import atomic_torch_save

    stale = tmp_path / ".last.ckpt.abc123.tmp"  # what a SIGKILL during a save leaves
    stale.write_bytes(b"x" * 1000)
    atomic_torch_save({"w": torch.zeros(2)}, tmp_path / "last.ckpt")
    assert not stale.exists() and (tmp_path / "last.ckpt").is_file()

    def full(*args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:664] . PytorchStreamWriter failed writing "
                           "file data/0: file write failed")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(OSError) as info:
        atomic_torch_save({"w": torch.zeros(2)}, tmp_path / "last.ckpt")
    assert info.value.errno == errno.ENOSPC and "last.ckpt" in str(info.value)
    code, message = classify(info.value)
    assert code == EXIT_FAILED and "disk full" in message
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # the previous file intact, no temp


def test_checkpoint_of_another_model_is_one_clear_line(tmp_path):
    import pytorch_lightning as pl

    from mf_lightning.train.checkpointing import CheckpointError, check_checkpoint

    class M(pl.LightningModule):
        def __init__(self, n):
            super().__init__()
            self.layer = torch.nn.Linear(n, 1)

    ckpt = {"state_dict": M(3).state_dict(), "global_step": 1, "loops": {}}
    torch.save(ckpt, tmp_path / "c.ckpt")
    with pytest.raises(CheckpointError, match=r"different model \(1 weights of another shape.*layer.weight"):
        check_checkpoint(tmp_path / "c.ckpt", module=M(2))


def test_audit_finds_an_asr_break_when_frame_0_has_no_born_charges(tmp_path):
    from mf_lightning.cli import audit

    frames = ase.io.read(SHARED_DATA / "md" / "BaTiO3.xyz", index="0:3")
    for a in frames[1:]:
        a.arrays["REF_becs"] = a.arrays["REF_becs"] + 0.5  # ASR broken by 0.5 e per atom
    del frames[0].arrays["REF_becs"]
    ase.io.write(tmp_path / "f.xyz", frames, format="extxyz")
    assert audit.main([str(tmp_path / "f.xyz"), "--out", str(tmp_path / "a"),
                       "--polarisability-unit", "e/(V*A)"]) == 0
    md = (tmp_path / "a" / "audit.md").read_text()
    assert "| asr | 2 |" in md


def test_environment_traps(tmp_path):
    """TORCH_FORCE_WEIGHTS_ONLY_LOAD=1 no longer breaks the import; an MF_DATA_DIR that does not
    exist is an error, not a silent fall-back to ../shared/data."""
    env = {**os.environ, "TORCH_FORCE_WEIGHTS_ONLY_LOAD": "1"}
    code = "import mf_lightning, os; print(os.environ['TORCH_FORCE_WEIGHTS_ONLY_LOAD'])"
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip().splitlines()[-1] == "1", proc.stderr[-2000:]
    from mf_lightning.data.root import DataNotFoundError, resolve_file

    os.environ["MF_DATA_DIR"], before = str(tmp_path / "nowhere"), os.environ.get("MF_DATA_DIR")
    try:
        with pytest.raises(DataNotFoundError, match="MF_DATA_DIR .* is not an existing folder"):
            resolve_file("md/SiO2.xyz")
    finally:
        if before is None:
            os.environ.pop("MF_DATA_DIR")
        else:
            os.environ["MF_DATA_DIR"] = before


def test_non_finite_values_are_written_as_json_null():
    from mf_lightning.files import dumps_json

    text = dumps_json({"mae": float("nan"), "v": np.array([1.0, np.inf]), "n": np.int64(3)})
    assert json.loads(text) == {"mae": None, "v": [1.0, None], "n": 3} and "NaN" not in text


def test_negative_cutoff_and_absurd_coordinates_are_input_errors(files):
    from mf_lightning.data.graphs import GeometryError, atoms_to_graph

    atoms = ase.io.read(files / "quartz.xyz")
    with pytest.raises(InputError, match="r_max must be positive"):
        atoms_to_graph(atoms, [8, 14], -1.0)
    overlapping = atoms.copy()
    overlapping.positions[1] = overlapping.positions[0]  # found on the graph's own edges
    with pytest.raises(GeometryError, match="atoms 1 and 0 are 0 A apart|atoms 0 and 1 are 0 A apart"):
        atoms_to_graph(overlapping, [8, 14], 4.0)
    atoms.positions[0] = 1e30
    with pytest.raises(GeometryError, match="not a structure in Angstrom"):
        atoms_to_graph(atoms, [8, 14], 4.0)


def test_a_second_training_in_the_same_run_folder_is_refused(tmp_path):
    from mf_lightning.files import FileLock

    run = tmp_path / "run"
    env = {**os.environ, "MF_DATA_DIR": str(SHARED_DATA), "MF_CACHE_DIR": str(tmp_path / "cache"),
           "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    with FileLock(run / ".train.lock", "held by the test"):
        proc = subprocess.run([sys.executable, "train.py", "experiment=smoke", f"hydra.run.dir={run}",
                               "torch_threads=1"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == EXIT_INPUT and "another training is running in this run folder" in proc.stderr


def _raised(action):
    try:
        action()
    except OSError as exc:
        return exc
    raise AssertionError("no OSError")


def test_os_errors_are_classified_by_errno_with_their_own_wording(tmp_path):
    """By errno, not by exception class: a read-only file system is a plain OSError (it used to
    be a traceback), EACCES and EPERM are both PermissionError. Where this machine can produce the
    error it is a real one (a missing file, a folder, a path through a file, a symbolic link loop,
    a name too long, an existing folder); the rest are the OSErrors the OS would raise."""
    from mf_lightning.cli._common import classify

    (tmp_path / "f").write_text("x")
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    cases = [
        (_raised(lambda: open(tmp_path / "missing")), EXIT_INPUT, "missing: no such file or folder"),
        (_raised(lambda: open(tmp_path, "w")), EXIT_INPUT, ": is a folder, not a file"),
        (_raised(lambda: open(tmp_path / "f" / "x", "w")), EXIT_INPUT, "f/x: not a folder (a part of this path is a file)"),
        (_raised(lambda: open(tmp_path / "a")), EXIT_INPUT, "a: too many levels of symbolic links"),
        (_raised(lambda: open(tmp_path / ("n" * 300), "w")), EXIT_INPUT, "nnn...nnn"),  # shortened
        (_raised(lambda: open(tmp_path / ("m" * 300), "w")), EXIT_INPUT, "mmm: file name too long"),
        (_raised(lambda: os.mkdir(tmp_path)), EXIT_INPUT, ": already exists"),
        (OSError(errno.EROFS, os.strerror(errno.EROFS), "/mnt/ro/out"), EXIT_INPUT,
         "/mnt/ro/out: read-only file system: choose a location you can write to"),
        (OSError(errno.EACCES, os.strerror(errno.EACCES), "/srv/x"), EXIT_INPUT, "/srv/x: permission denied"),
        (OSError(errno.EPERM, os.strerror(errno.EPERM), "/sys/x"), EXIT_INPUT, "/sys/x: operation not permitted"),
        (OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "m.pt"), EXIT_FAILED, "disk full while writing m.pt"),
        (OSError(errno.EDQUOT, os.strerror(errno.EDQUOT), "m.pt"), EXIT_FAILED, "m.pt: disk quota exceeded"),
        (OSError(errno.EIO, os.strerror(errno.EIO), "m.pt"), EXIT_FAILED, "m.pt: input/output error"),
        (OSError(errno.EROFS, os.strerror(errno.EROFS)), EXIT_INPUT, "read-only file system: choose a location you "
                                                                     "can write to (Read-only file system)"),
    ]
    for exc, code, words in cases:
        got = classify(exc)
        assert got is not None and got[0] == code and words in got[1] and "\n" not in got[1], (exc, got)
        assert len(got[1]) < 400, got  # a name of thousands of characters is shortened
    assert classify(OSError(errno.EINVAL, "Invalid argument")) is None  # no user meaning: a bug, keeps its traceback
