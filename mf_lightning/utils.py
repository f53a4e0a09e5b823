"""Small helpers used across the package (numerics are set in one place)."""

from __future__ import annotations

import contextlib

import torch

DTYPES = {"float32": torch.float32, "float64": torch.float64}


def resolve_dtype(dtype) -> torch.dtype:
    """'float32' / 'float64' / torch dtype -> torch dtype."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {list(DTYPES)}, got {dtype!r}")
    return DTYPES[dtype]


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype):
    """mace-torch creates tensors in torch's default dtype; run a block under the one we want."""
    before = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(before)


def strict_json_value(obj):
    """``obj`` with NaN/inf floats as None and numpy scalars/arrays as plain values: what
    ``json.dumps(..., allow_nan=False)`` accepts (NaN is not valid JSON; other tools reject it)."""
    import math

    import numpy as np

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
    import json

    return json.dumps(strict_json_value(obj), indent=indent, allow_nan=False)


class FileLock:
    """An exclusive, non-blocking ``flock`` on ``path`` (released on exit or when the process
    dies): a second process that wants the same output is refused with ``message`` instead of
    interleaving rows or checkpoints with the first. ``blocking=True``: wait for the lock
    instead (short critical sections, e.g. updating a shared registry file)."""

    def __init__(self, path, message: str = "", blocking: bool = False):
        from pathlib import Path

        self.path, self.message, self.fh, self.blocking = Path(path), message, None, blocking

    def __enter__(self):
        import fcntl

        from mf_lightning.errors import InputError

        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fh = open(self.path, "a")
        try:
            fcntl.flock(self.fh, fcntl.LOCK_EX if self.blocking else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            self.fh.close()
            raise InputError(f"{self.message} (lock {self.path} is held); "
                             "wait for it or choose another output") from exc
        return self

    def __exit__(self, *exc):
        import fcntl

        fcntl.flock(self.fh, fcntl.LOCK_UN)
        self.fh.close()


@contextlib.contextmanager
def atomic_open(path, mode: str = "w"):
    """A file object whose content replaces ``path`` only when the block succeeds: written to a
    temporary file beside it, fsync'ed, then renamed over it; on any error (or a kill) ``path``
    is untouched and the temporary file is removed (a kill leaves it: see atomic_torch_save)."""
    import os
    import tempfile
    from pathlib import Path

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
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


def run_is_complete(metrics: dict) -> bool:
    """A run's metrics.json describes a complete run: it finished with finite metrics (files
    from before the flag: yes) and was not cut by ``trainer.max_time``. A resumed sweep continues
    an incomplete run from its last.ckpt; the table tool lists it instead of averaging it in."""
    return bool(metrics.get("finished", True)) and metrics.get("stopped_by") != "max_time"
