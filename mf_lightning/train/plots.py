"""Parity plots (model against reference, one per dataset and metric quantity), drawn after
training for the test split and by ``eval.py`` for any data: the first thing to look at to see
whether a quantity was learned."""

from __future__ import annotations

from pathlib import Path
from typing import List

import numpy as np

from mf_lightning.data.quantities import metric_units
from mf_lightning.train.metrics import stats


def parity_plots(predictions, run_dir: Path) -> List[Path]:
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
            path = run_dir / "parity" / f"{name}_{q}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            fig.savefig(path, dpi=120)
            plt.close(fig)
            written.append(path)
    return written
