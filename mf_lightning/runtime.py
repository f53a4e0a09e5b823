"""Process-wide CPU settings that every entry point makes deliberately, in one place.

glibc malloc. A training step with forces, Z* and alpha allocates and frees tensors of hundreds
of MB many times per step. glibc serves each block above its mmap threshold (128 KiB, rising to at
most 32 MiB) with a fresh ``mmap`` and returns it with ``munmap`` (or trims the heap top), so
every such tensor is faulted in page by page again: measured here, millions of minor page faults
per step, and 1.4x (E/F/S) to 1.8x (with Z*/alpha) the step time (bench/RESULTS.md, "Training
step, glibc malloc defaults"). :func:`tune_malloc` calls ``mallopt(M_MMAP_MAX, 0)`` (large
blocks come from the heap) and ``mallopt(M_TRIM_THRESHOLD, -1)`` (freed memory is kept for
reuse, never trimmed: documented in mallopt(3)). It is what
``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=<huge>`` in the environment does, applied at run
time, so no launcher (make, SLURM, submitit, a notebook) has to remember the variables.
The price: the resident size stays at its peak until the process ends.

Set ``MF_MALLOC_TUNING=0`` to leave malloc alone; if ``MALLOC_MMAP_MAX_``,
``MALLOC_TRIM_THRESHOLD_`` or ``GLIBC_TUNABLES`` is set, the environment wins and nothing is
changed. Other C libraries (macOS, musl) are left alone.

Threads. ``torch.set_num_threads`` only where asked: on a shared or small machine one thread
per process is often faster than two (SPEC/README), so configs expose ``torch_threads``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
from typing import Optional

import torch

M_TRIM_THRESHOLD = -1  # glibc malloc.h
M_MMAP_MAX = -4
_ENV_OVERRIDES = ("MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")
_state = {"malloc": "default"}


def tune_malloc(enabled: bool = True) -> str:
    """Apply the malloc settings above; returns what is in force: ``"tuned"``, ``"environment"``,
    ``"default"`` (disabled or not glibc)."""
    if any(name in os.environ for name in _ENV_OVERRIDES):
        _state["malloc"] = "environment"
        return _state["malloc"]
    if not enabled or os.environ.get("MF_MALLOC_TUNING", "1") == "0" or platform.libc_ver()[0] != "glibc":
        return _state["malloc"]
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        ok = libc.mallopt(M_MMAP_MAX, 0) == 1 and libc.mallopt(M_TRIM_THRESHOLD, -1) == 1
    except (OSError, AttributeError):
        ok = False
    if ok:
        _state["malloc"] = "tuned"
    return _state["malloc"]


def configure_process(threads: Optional[int] = None, malloc: bool = True) -> str:
    """The settings every entry point makes before heavy work: malloc, then torch threads."""
    state = tune_malloc(malloc)
    if threads:
        torch.set_num_threads(int(threads))
    return state
