"""`python train.py` (what `make train` runs) works end to end in a subprocess."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from tests.conftest import REPO, SHARED_DATA


def test_train_entry_point_prints_response(tmp_path):
    env = {**os.environ, "MF_DATA_DIR": str(SHARED_DATA), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "train.py", "model.num_channels=8", "model.max_ell=2", "model.correlation=2",
           "model/coupling=basis_tp", "demo.electric_field=[0,0,0.05]", f"hydra.run.dir={tmp_path}/run",
           "torch_threads=1", "demo.only=true"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "UNTRAINED random-weight FieldMACE (basis_tp" in out
    assert "72 atoms" in out
    asr = float(re.search(r"max \|sum_k Z\*_k\| = (\S+) e", out).group(1))
    assert asr < 1e-10
    assert (tmp_path / "run" / ".hydra" / "config.yaml").is_file()
