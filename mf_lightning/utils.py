"""Small helpers used across the package (numerics are set in one place)."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Iterable, Sequence

if TYPE_CHECKING:
    import torch

# The compute dtypes by name (the --dtype choices, config checks): names, so that a tool's
# --help needs no torch; resolve_dtype gives the torch dtype.
DTYPES = ("float32", "float64")


def resolve_dtype(dtype) -> torch.dtype:
    """'float32' / 'float64' / torch dtype -> torch dtype."""
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {list(DTYPES)}, got {dtype!r}")
    return getattr(torch, dtype)


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype):
    """mace-torch creates tensors in torch's default dtype; run a block under the one we want."""
    import torch

    before = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(before)


def run_is_complete(metrics: dict) -> bool:
    """A run's metrics.json describes a complete run: it finished with finite metrics (files
    from before the flag: yes) and was not cut by ``trainer.max_time``. A resumed sweep continues
    an incomplete run from its last.ckpt; the table tool lists it instead of averaging it in."""
    return bool(metrics.get("finished", True)) and metrics.get("stopped_by") != "max_time"


def markdown_table(header: Sequence, rows: Iterable[Sequence]) -> str:
    """A GitHub markdown table (no trailing newline): every table the tools print or write."""
    lines = ["| " + " | ".join(str(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
