"""Parity plots (model against reference, one per dataset and metric quantity), drawn after
training for the test split and by ``eval.py`` for any data: the first thing to look at to see
whether a quantity was learned. Also the one way every figure of the package is saved
(:func:`save_figure`: png, pdf or svg at :data:`FIGURE_DPI`)."""

from __future__ import annotations

from pathlib import Path
from typing import List

import numpy as np

from mf_lightning.data.quantities import metric_units
from mf_lightning.errors import ArgumentError
from mf_lightning.train.metrics import stats

# the figure formats of every tool that draws (--format) and the default resolution (--dpi): a
# paper takes pdf or svg (vector), or png at 300 dots per inch
FIGURE_FORMATS = ("png", "pdf", "svg")
FIGURE_DPI = 300


def save_figure(fig, path, fmt: str = "png", dpi: float = FIGURE_DPI) -> Path:
    """Save ``fig`` as ``path`` (no suffix) + ``.fmt``; returns the file written."""
    if fmt not in FIGURE_FORMATS:
        raise ArgumentError(f"figure format {fmt!r}: one of {', '.join(FIGURE_FORMATS)}")
    if not dpi > 0:
        raise ArgumentError(f"figure resolution must be > 0 dots per inch, got {dpi}")
    path = Path(f"{path}.{fmt}")
    path.parent.mkdir(parents=True, exist_ok=True)
    # metadata: no creation date in pdf/svg, so the same figure is the same file
    meta = {"png": {}, "pdf": {"CreationDate": None}, "svg": {"Date": None}}[fmt]
    fig.savefig(path, format=fmt, dpi=dpi, metadata=meta or None)
    return path


def parity_plots(predictions, run_dir: Path, fmt: str = "png", dpi: float = FIGURE_DPI) -> List[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for name, per_q in predictions.items():
        for q, chunks in per_q.items():
            data = np.concatenate([c.reshape(2, -1) for c in chunks], axis=1)
            ref, pred = data
            fig, ax = plt.subplots(figsize=(4, 4))
            ax.scatter(ref, pred, s=6, alpha=0.6)
            lo, hi = float(min(ref.min(), pred.min())), float(max(ref.max(), pred.max()))
            ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
            rmse = stats(ref, pred)["rmse"]
            unit = metric_units().get(q, "")
            ax.set(xlabel=f"reference ({unit})", ylabel=f"model ({unit})", title=f"{name}: {q}\nRMSE {rmse:.4g} {unit}")
            fig.tight_layout()
            written.append(save_figure(fig, run_dir / "parity" / f"{name}_{q}", fmt, dpi))
            plt.close(fig)
    return written
