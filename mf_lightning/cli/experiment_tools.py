"""Shared by the simulation experiments in ``experiments/*/run.py``: get a model (given, or trained
with a ``train.py`` experiment into the work folder once) and write comparison tables."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Optional, Sequence

REPO = Path(__file__).resolve().parents[2]


def ensure_model(model: Optional[str], experiment: str, work_dir: Path, overrides: Sequence[str] = ()) -> Path:
    """``model`` if given; else ``work_dir/model_run/model.pt``, trained with
    ``python train.py experiment=<experiment>`` the first time it is needed."""
    if model:
        return Path(model)
    run_dir = Path(work_dir) / "model_run"
    path = run_dir / "model.pt"
    if not path.exists():
        print(f"no --model given: training one with `train.py experiment={experiment}` into {run_dir}", flush=True)
        cmd = [sys.executable, str(REPO / "train.py"), f"experiment={experiment}", f"hydra.run.dir={run_dir}",
               *overrides]
        subprocess.run(cmd, cwd=REPO, env={**os.environ, "PROJECT_ROOT": str(REPO)}, check=True)
    return path


def fmt(x, digits: int = 3) -> str:
    try:
        return f"{float(x):.{digits}g}"
    except (TypeError, ValueError):
        return str(x)
