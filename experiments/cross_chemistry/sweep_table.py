"""The cross-chemistry sweep's table (issue 28 item 2): validation numbers of each run folder.

    python experiments/cross_chemistry/sweep_table.py RUN... [--out table.md]

Every run of the sweep trains one setting for the same wall-time or epoch budget, one torch
thread beside other runs (``sweep.sh``); runs cut by ``trainer.max_time`` are reported with the
epochs they reached (``mf-table`` lists such runs as unfinished, by design for resumable
sweeps). Only the validation split is read: the test split decides nothing here.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

COLUMNS = [  # (metric name in metrics.json, header, format)
    ("becs_diag", "Z* diag (e)", "{:.3f}"),
    ("becs_offdiag", "Z* off (e)", "{:.3f}"),
    ("polarisability_diag", "alpha diag (e/(V A))", "{:.4f}"),
    ("eps_inf_diag", "eps_inf diag", "{:.2f}"),
    ("polarisation", "P (uC/cm^2)", "{:.2f}"),
]


def row(run: Path):
    metrics = json.loads((run / "metrics.json").read_text())
    overrides = (run / ".hydra" / "overrides.yaml").read_text().splitlines()
    setting = " ".join(o.lstrip("- ").strip() for o in overrides
                       if not o.lstrip("- ").startswith(("hydra.", "torch_threads", "trainer.max_time")))
    values = {}
    for per_q in metrics["val"].values():
        for q, v in per_q.items():
            if isinstance(v, dict) and "rmse" in v:
                values[q] = v["rmse"]
    cells = [fmt.format(values[q]) if q in values else "-" for q, _, fmt in COLUMNS]
    return [run.name, setting, str(metrics.get("epochs", "-")), f"{float(metrics.get('train_time_s') or 0) / 60:.0f}",
            *cells]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    header = ["run", "overrides", "epochs", "min", *[h for _, h, _ in COLUMNS]]
    rows = [row(r) for r in args.runs if (r / "metrics.json").is_file()]
    keep = [i for i in range(len(header)) if i < 4 or any(r[i] != "-" for r in rows)]
    lines = ["| " + " | ".join(header[i] for i in keep) + " |", "|" + "---|" * len(keep)]
    lines += ["| " + " | ".join(r[i] for i in keep) + " |" for r in rows]
    text = "\n".join(lines) + "\n"
    print(text, end="")
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
