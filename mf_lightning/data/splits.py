"""Splits that do not leak, and the manifest that makes a run reproducible.

* by group (``group_split``): every structure of a group (a material, a distortion path) lands
  in the same split; groups are shuffled with a seeded generator and dealt until each split
  reaches its share of *structures*;
* contiguous (``contiguous_split``): for time series (MD), train = the first part of the
  trajectory, then validation, then test, so no frame's near-copy sits in another split.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np

from mf_lightning.files import atomic_write_text

SPLITS = ("train", "val", "test")


def _check(val: float, test: float) -> None:
    if not (0 <= val < 1 and 0 <= test < 1 and val + test < 1):
        raise ValueError(f"split fractions need 0 <= val, test and val + test < 1; got val={val}, test={test}")


def group_split(groups: Sequence[str], val: float, test: float, seed: int) -> Dict[str, List[int]]:
    _check(val, test)
    order: Dict[str, List[int]] = {}
    for i, g in enumerate(groups):
        order.setdefault(str(g), []).append(i)
    names = sorted(order)
    np.random.default_rng(seed).shuffle(names)
    n = len(groups)
    targets = {"test": test * n, "val": val * n}
    out: Dict[str, List[int]] = {s: [] for s in SPLITS}
    for name in names:
        members = order[name]
        for split in ("test", "val"):
            if len(out[split]) < targets[split] and len(out[split]) + len(members) / 2 <= targets[split] + 0.5:
                out[split].extend(members)
                break
        else:
            out["train"].extend(members)
    return {s: sorted(v) for s, v in out.items()}


def contiguous_split(n: int, val: float, test: float) -> Dict[str, List[int]]:
    _check(val, test)
    n_test = int(round(test * n))
    n_val = int(round(val * n))
    n_train = n - n_val - n_test
    return {
        "train": list(range(0, n_train)),
        "val": list(range(n_train, n_train + n_val)),
        "test": list(range(n_train + n_val, n)),
    }


def write_manifest(path, manifest: dict) -> Path:
    """JSON with the ids per split (and how they were made) beside the run."""
    path = Path(path)
    atomic_write_text(path, json.dumps(manifest, indent=1, sort_keys=True))
    return path
