"""mf_lightning.runtime: the malloc settings take effect (a 256 MB buffer comes from the heap and
stays there after it is freed, for reuse) and the environment or MF_MALLOC_TUNING=0 leaves malloc alone."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc mallopt")

PROBE = """
import ctypes, json, torch
from mf_lightning.runtime import tune_malloc

class MallInfo2(ctypes.Structure):  # glibc >= 2.33; sums over all arenas
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
state = tune_malloc()
before = libc.mallinfo2()
x = torch.ones(32 * 2**20, dtype=torch.float64)  # 256 MB
during = libc.mallinfo2()
del x
after = libc.mallinfo2()
print(json.dumps({"state": state, "mmapped": during.hblkhd - before.hblkhd, "kept_free": after.fordblks}))
"""


def probe(**env):
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k not in ("GLIBC_TUNABLES", "MF_MALLOC_TUNING")}
    out = subprocess.run([sys.executable, "-c", PROBE], env={**clean, **env}, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_tuned_malloc_keeps_freed_memory():
    """glibc's own accounting (mallinfo2), not page faults, which the kernel can add anyway."""
    tuned, default = probe(), probe(MF_MALLOC_TUNING="0")
    size = 256 * 2**20
    assert tuned["state"] == "tuned" and default["state"] == "default"
    assert default["mmapped"] >= size  # glibc maps it and unmaps it on free
    assert tuned["mmapped"] == 0 and tuned["kept_free"] >= size  # from the heap, kept for reuse


def test_environment_wins():
    assert probe(MALLOC_MMAP_MAX_="0")["state"] == "environment"
