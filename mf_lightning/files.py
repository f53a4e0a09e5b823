"""Files, for every layer: atomic writes, guarded loads, strict JSON, checksums, run locks.

Every file the package writes goes through :func:`atomic_open` (temporary file in the same folder,
fsync, rename), so a crash mid-write leaves the previous file intact; torch files are read
weights-only through :func:`guarded_torch_load`, whose errors say what is wrong with the file.
It imports nothing of the package but its error types, so data, model, training and tools all may use it.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import hashlib
import json
import math
import os
import pickle
import stat
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import torch


def strict_json_value(obj):
    """``obj`` with NaN/inf floats as None and numpy scalars/arrays as plain values: what
    ``json.dumps(..., allow_nan=False)`` accepts (NaN is not valid JSON; other tools reject it)."""
    if isinstance(obj, dict):
        return {str(k): strict_json_value(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict_json_value(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return strict_json_value(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def dumps_json(obj, indent: int = 1) -> str:
    """Strict JSON text (non-finite numbers written as null), for every file the tools write."""
    return json.dumps(strict_json_value(obj), indent=indent, allow_nan=False)


def plain_value(value):
    """Tensors, arrays and numpy scalars -> plain Python values (JSON- and weights-only-safe)."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    return value


def sha256_of(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def tensor_checksum(state: Dict[str, torch.Tensor]) -> str:
    """SHA-256 over every tensor's name, dtype, shape and bytes, in name order."""
    h = hashlib.sha256()
    for name, t in sorted(state.items()):
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(_tensor_bytes(t))
    return h.hexdigest()


def _tensor_bytes(t: torch.Tensor) -> bytes:
    """The values of ``t``, in row-major order, as raw bytes."""
    t = t.detach().cpu().contiguous()
    return t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""


def record_checksum(obj) -> str:
    """SHA-256 of a whole saved record: nested dicts (in order), lists, tuples, tensors (dtype,
    shape, strides, bytes), arrays and plain values (exact ``repr``). torch does not check the zip's CRCs,
    so a flipped bit in a weight *or* in a config value (``max_ell`` -> ``lax_ell``, a float of
    r_max) would otherwise load silently. Objects of other types count by type name only (their
    ``repr`` may hold a memory address)."""
    h = hashlib.sha256()

    def feed(x):
        if isinstance(x, torch.Tensor):
            # strides too: a damaged stride of 0 gave a tensor of equal values whose in-place
            # update (an optimiser moment) fails or aliases
            h.update(f"T{x.dtype}{tuple(x.shape)}{x.stride()}".encode())
            h.update(_tensor_bytes(x))
        elif isinstance(x, np.ndarray):
            a = np.ascontiguousarray(x)
            h.update(f"A{a.dtype.str}{a.shape}".encode())
            h.update(a.tobytes() if a.dtype != object else repr(a.tolist()).encode())
        elif isinstance(x, dict):
            h.update(f"D{len(x)}(".encode())
            for k, v in x.items():
                feed(k)
                feed(v)
            h.update(b")")
        elif isinstance(x, (list, tuple)):
            h.update(f"{type(x).__name__}{len(x)}(".encode())
            for v in x:
                feed(v)
            h.update(b")")
        elif x is None or isinstance(x, (bool, int, float, complex, str, bytes, np.generic, torch.dtype, torch.device)):
            text = repr(x).encode()
            h.update(f"{type(x).__name__}{len(text)}:".encode() + text)
        else:
            h.update(f"O{type(x).__module__}.{type(x).__qualname__};".encode())

    feed(obj)
    return h.hexdigest()


def with_record_checksum(record: dict, key: str) -> dict:
    """``record`` with its :func:`record_checksum` added as the last entry, under ``key``."""
    return {**record, key: record_checksum(record)}


def verify_record_checksum(record: dict, key: str, older_last_keys: tuple = ()) -> Optional[str]:
    """Take the checksum :func:`with_record_checksum` put last in ``record`` (in place) and say
    what is wrong, or None. A record without one is from before checksums (None), unless its last
    entry is a SHA-256 under another name than ``older_last_keys`` (the hashes that records of
    earlier versions end with): then the checksum's own key was damaged."""
    if not record:
        return None
    last = next(reversed(record))
    if last == key:
        stored = record.pop(key)
        return None if record_checksum(record) == stored else "it does not match its checksum (a changed byte)"
    value = record[last]
    looks_like_one = isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)
    if looks_like_one and last not in older_last_keys:
        return f"its checksum entry is damaged ({last!r} instead of {key!r})"
    return None


class FileLock:
    """An exclusive, non-blocking ``flock`` on ``path`` (released on exit or when the process
    dies): a second process that wants the same output is refused with ``message`` instead of
    interleaving rows or checkpoints with the first. ``blocking=True``: wait for the lock
    instead (short critical sections, e.g. updating a shared registry file)."""

    def __init__(self, path, message: str = "", blocking: bool = False):
        self.path, self.message, self.fh, self.blocking = Path(path), message, None, blocking

    def __enter__(self):
        import fcntl

        from mf_lightning.errors import InputError

        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            self.fh = open(self.path, "a")
            try:
                fcntl.flock(self.fh, fcntl.LOCK_EX if self.blocking else fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as exc:
                self.fh.close()
                raise InputError(f"{self.message} (lock {self.path} is held); "
                                 "wait for it or choose another output") from exc
            # the holder before us removes the file as it lets go: locked a removed file, try again
            try:
                same = os.stat(self.path).st_ino == os.fstat(self.fh.fileno()).st_ino
            except FileNotFoundError:
                same = False
            if same:
                return self
            self.fh.close()

    def __exit__(self, *exc):
        import fcntl

        # removed while still held, so no stray .lock file stays behind and no one can lock it
        # after us and believe it shares the lock with a newcomer (the inode check above)
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        fcntl.flock(self.fh, fcntl.LOCK_UN)
        self.fh.close()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_open(path, mode: str = "w"):
    """A file object whose content replaces ``path`` only when the block succeeds: written to a
    temporary file beside it, fsync'ed, then renamed over it; on any error (or a kill) ``path``
    is untouched and the temporary file is removed (a kill leaves it: see atomic_torch_save)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600: the result gets an ordinary file's mode
        with os.fdopen(fd, mode) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_text(path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (:func:`atomic_open`): never a truncated file."""
    with atomic_open(path, "w") as fh:
        fh.write(text)


def atomic_torch_save(obj, path) -> None:
    """``torch.save`` through :func:`atomic_open` (temporary file beside
    ``path``, fsync, rename over it).

    Temporary files left by earlier writes of the same ``path`` that were killed (SIGKILL runs no
    clean-up) are removed first: one writer per target is the rule (a training run holds a lock
    on its run folder). A write that fails because the disk is full raises ``OSError(ENOSPC)``
    naming the file, not torch's ``enforce fail at inline_container.cc``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        stale.unlink(missing_ok=True)
    try:
        with atomic_open(path, "wb") as fh:
            torch.save(obj, fh)
    except RuntimeError as exc:
        if "file write failed" in str(exc) or "unexpected pos" in str(exc):
            raise OSError(errno.ENOSPC, "No space left on device (disk full)", str(path)) from exc
        raise


def unreadable_reason(path, kind: str = "file") -> Optional[str]:
    """Why ``path`` cannot be read as a ``kind`` (None: it can be opened): missing, a folder, a
    device, a symbolic link loop, no permission... each in its own words (a folder or a loop
    is not "no such file")."""
    try:
        st = os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            return f"no such {kind}"
        from mf_lightning.errors import OS_ERRORS  # the words the CLIs' errno classification uses

        known = OS_ERRORS.get(exc.errno)
        return known[1] if known else (os.strerror(exc.errno) if exc.errno else str(exc))
    if stat.S_ISDIR(st.st_mode):
        return f"is a folder, not a {kind}"
    if not stat.S_ISREG(st.st_mode):
        return f"not a regular file (a device, a pipe or a socket), not a {kind}"
    if not os.access(path, os.R_OK):
        return "permission denied"
    return None


def check_readable_file(path, kind: str, error: type = None) -> None:
    """Raise ``error`` (default :class:`~mf_lightning.errors.InputError`) ``"<path>: <reason>"``
    if ``path`` cannot be read (:func:`unreadable_reason`)."""
    from mf_lightning.errors import InputError

    reason = unreadable_reason(path, kind)
    if reason is not None:
        raise (error or InputError)(f"{path}: {reason}")


def guarded_torch_load(path, error: type, kind: str, pickle_message: str, corrupt_hint: str = "",
                       allow_pickle: bool = False, map_location="cpu"):
    """``torch.load`` (weights-only unless ``allow_pickle``) whose failures are ``error`` with a
    message: no such ``kind``; truncated or corrupted (+ ``corrupt_hint``); or, for a file that
    needs unpickling, ``pickle_message``. Shared by model files and training checkpoints."""
    path = Path(path)
    check_readable_file(path, kind, error)
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive; a cut one has no directory
        raise error(f"{path}: truncated or corrupted {kind} (not a complete torch archive).{corrupt_hint}")
    try:
        return torch.load(path, map_location=map_location, weights_only=not allow_pickle)
    except pickle.UnpicklingError as exc:
        # the weights-only unpickler refuses a Python object it does not allow (a global, a class);
        # any other complaint of its (an unknown opcode, a stack underflow) is a damaged record
        if any(word in str(exc) for word in ("GLOBAL", "global", "allowlist")):
            raise error(f"{path}: {pickle_message}") from exc
        raise error(f"{path}: truncated or corrupted {kind} (its pickled record does not parse)."
                    f"{corrupt_hint}") from exc
    except Exception as exc:  # noqa: BLE001 - a damaged archive fails in torch/zip/pickle code in many ways
        # (found by fuzzing: IndexError, KeyError, UnicodeDecodeError, RuntimeError, EOFError, ...)
        raise error(f"{path}: truncated or corrupted {kind} ({type(exc).__name__}: "
                    f"{str(exc).splitlines()[0] if str(exc) else ''}).{corrupt_hint}") from exc


class TableWriter:
    """Appends rows to a CSV (header written once), flushing after every batch: a table that
    survives a kill and is resumed by the next run with the same columns. The file is created
    with the first row, so a run that writes none (no failures: ``errors.csv``) leaves no file."""

    def __init__(self, path: Path, columns: List[str], fresh: bool = False):
        from mf_lightning.errors import InputError

        self.path, self.columns = Path(path), columns
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if fresh and self.path.exists():
            self.path.unlink()
        if self.path.exists() and self.path.stat().st_size > 0:
            with open(self.path, newline="") as fh:
                header = next(csv.reader(fh), [])
            if header != columns:
                raise InputError(f"{self.path} has columns {header}, expected {columns}: "
                                 "use another --out, or the same options as the run that wrote it")
        self.fh = self.writer = None

    def write(self, rows: List[Dict[str, Any]]) -> None:
        if not rows:
            return
        if self.fh is None:
            new = not self.path.exists() or self.path.stat().st_size == 0
            self.fh = open(self.path, "a", newline="")
            self.writer = csv.DictWriter(self.fh, fieldnames=self.columns, extrasaction="ignore")
            if new:
                self.writer.writeheader()
        for row in rows:
            self.writer.writerow(row)
        self.fh.flush()
        os.fsync(self.fh.fileno())

    def close(self) -> None:
        if self.fh is not None:
            self.fh.close()
