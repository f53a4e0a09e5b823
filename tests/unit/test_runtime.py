"""mf_lightning.runtime: the malloc settings take effect (a freed 256 MB buffer is reused, not
faulted in again) and the environment or MF_MALLOC_TUNING=0 leaves malloc alone."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc mallopt")

PROBE = """
import json, resource, torch
from mf_lightning.runtime import tune_malloc
state = tune_malloc()
faults = []
for _ in range(3):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    x = torch.ones(32 * 2**20, dtype=torch.float64)  # 256 MB, touched
    del x
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"state": state, "faults": faults}))
"""


def probe(**env):
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k not in ("GLIBC_TUNABLES", "MF_MALLOC_TUNING")}
    out = subprocess.run([sys.executable, "-c", PROBE], env={**clean, **env}, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_tuned_malloc_reuses_freed_memory():
    tuned, default = probe(), probe(MF_MALLOC_TUNING="0")
    pages = 256 * 2**20 // 4096
    assert tuned["state"] == "tuned" and default["state"] == "default"
    assert default["faults"][-1] > 0.5 * pages  # glibc maps and unmaps it every time
    assert tuned["faults"][-1] < 0.05 * pages  # kept and reused


def test_environment_wins():
    assert probe(MALLOC_MMAP_MAX_="0")["state"] == "environment"
