"""Outputs are ordinary files and nothing stray is left behind (issue 29, item 6): atomic writes
get the mode of a plain ``open`` (mkstemp's 0600 hid them from a group), a lock file is removed
by its holder, an errors table with no rows is never created."""

from __future__ import annotations

import multiprocessing as mp
import os
import stat
import time

import pytest

from mf_lightning.errors import InputError
from mf_lightning.files import FileLock, TableWriter, atomic_write_text


def test_atomic_writes_have_the_mode_of_an_ordinary_file(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.json", "{}")
        (tmp_path / "b.json").write_text("{}")
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()}
    assert modes == {"a.json": 0o644, "b.json": 0o644}


def test_a_lock_is_exclusive_and_leaves_no_file(tmp_path):
    lock = tmp_path / "t.csv.lock"
    with FileLock(lock, "busy"):
        assert lock.exists()
        with pytest.raises(InputError, match="busy"):
            with FileLock(lock, "busy"):
                pass
    assert not lock.exists()
    with FileLock(lock, "busy"):  # free again
        pass
    assert not lock.exists()



def _count(path, counter, n):
    for _ in range(n):
        with FileLock(path, blocking=True):
            value = counter.value
            time.sleep(0.001)
            counter.value = value + 1  # lost updates if two processes ever held the lock together


def test_blocking_waiters_never_share_a_lock_whose_file_was_removed(tmp_path):
    ctx = mp.get_context("fork")
    counter = ctx.Value("i", 0, lock=False)
    path = tmp_path / "registry.lock"
    procs = [ctx.Process(target=_count, args=(path, counter, 40)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert counter.value == 120 and not path.exists()


def test_an_errors_table_without_rows_is_not_created(tmp_path):
    writer = TableWriter(tmp_path / "t.errors.csv", ["id", "error"], fresh=True)
    writer.write([])
    writer.close()
    assert not (tmp_path / "t.errors.csv").exists()
    writer = TableWriter(tmp_path / "t.errors.csv", ["id", "error"], fresh=True)
    writer.write([{"id": "a", "error": "bad"}])
    writer.close()
    assert (tmp_path / "t.errors.csv").read_text().splitlines() == ["id,error", "a,bad"]
