"""Learning curves: validation RMSE per quantity against wall time, from runs' metrics.csv.

    python experiments/learning_curves.py RUN_DIR [RUN_DIR ...] --out experiments/learning_curves/sio2.png \
        [--baselines baselines.json] [--labels a b ...]

Each run directory is a train.py output (``metrics.csv`` or ``csv/**/metrics.csv``); the x axis
is ``time/elapsed_s`` (logged at every validation), one panel per validated quantity, log scale.
``--baselines``: the JSON of ``mf-baselines --out`` (validation
split): the zero, per-element-mean and per-element (fitted charges, additive alpha: what an
untrained model starts from) predictors are drawn as horizontal lines. Also writes
the curve as a CSV beside the PNG.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path


def read_curve(run: Path):
    files = [run / "metrics.csv"] if (run / "metrics.csv").is_file() else sorted(run.glob("csv/**/metrics.csv"))
    if not files:
        raise SystemExit(f"{run}: no metrics.csv")
    rows = [r for r in csv.DictReader(open(files[0])) if r.get("time/elapsed_s")]
    quantities = sorted({k.split("/")[-1][:-5] for r in rows for k, v in r.items()
                         if v and k.startswith("val/") and k.endswith("_rmse") and k.count("/") == 2})
    curve = []
    for r in rows:
        point = {"minutes": float(r["time/elapsed_s"]) / 60.0, "epoch": int(float(r["epoch"]))}
        for k, v in r.items():
            if v and k.startswith("val/") and k.endswith("_rmse") and k.count("/") == 2:
                point[k.split("/")[-1][:-5]] = float(v)
        curve.append(point)
    return quantities, curve


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--labels", nargs="*")
    parser.add_argument("--baselines", type=Path)
    parser.add_argument("--title", default="")
    args = parser.parse_args(argv)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = [read_curve(r) for r in args.runs]
    labels = args.labels or [r.name for r in args.runs]
    quantities = sorted({q for qs, _ in curves for q in qs})
    baselines = json.loads(args.baselines.read_text()) if args.baselines else {}
    ncol = min(4, len(quantities))
    nrow = (len(quantities) + ncol - 1) // ncol
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.6 * ncol, 2.8 * nrow), squeeze=False)
    for ax, q in zip(axes.ravel(), quantities):
        for (_, curve), label in zip(curves, labels):
            pts = [(p["minutes"], p[q]) for p in curve if q in p]
            if pts:
                ax.plot(*zip(*pts), marker=".", label=label)
        for kind, style in (("zero", ":"), ("mean", "--"), ("per_element", "-.")):
            value = baselines.get(f"{q}_rmse", {}).get(kind)
            if value:
                ax.axhline(value, color="grey", ls=style, lw=0.8, label=f"{kind} predictor")
        ax.set(title=q, xlabel="wall time (min)", yscale="log")
        ax.grid(alpha=0.3)
    for ax in axes.ravel()[len(quantities):]:
        ax.axis("off")
    axes.ravel()[0].legend(fontsize=7)
    if args.title:
        fig.suptitle(args.title)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    with open(args.out.with_suffix(".csv"), "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["run", "minutes", "epoch", *quantities])
        for (_, curve), label in zip(curves, labels):
            for p in curve:
                values = [f"{p[q]:.5g}" if q in p else "" for q in quantities]
                writer.writerow([label, f"{p['minutes']:.2f}", p["epoch"], *values])
    print(f"wrote {args.out} and {args.out.with_suffix('.csv')}")


if __name__ == "__main__":
    main()
