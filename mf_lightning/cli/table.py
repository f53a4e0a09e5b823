"""``mf-table``: the command line of :mod:`mf_lightning.analysis.table`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional, Sequence

from mf_lightning.cli._common import cli_main, doc_summary
from mf_lightning.cli._common import parser as cli_parser

PROG = "mf-table"


def build_parser():
    p = cli_parser(PROG, description=doc_summary("mf_lightning.analysis.table"))
    p.add_argument("dirs", nargs="+", help="run or multirun folders")
    p.add_argument("--stage", default="test", choices=["val", "test"], help="the metrics of this split")
    p.add_argument("--stat", default="rmse", choices=["rmse", "mae"], help="the statistic tabulated")
    p.add_argument("--columns", default=None,
                   help="comma-separated quantities to keep (e.g. forces,becs_diag); default all")
    p.add_argument("--baseline", default=None,
                   help="a setting, e.g. model/coupling=residual_tp: add the paired comparison against it")
    p.add_argument("--out", default=None, help="prefix for PREFIX.md, PREFIX.csv, PREFIX.tex")
    return p


@cli_main(PROG)
def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    from mf_lightning.analysis.table import (
        collect,
        paired,
        paired_markdown,
        summarise,
        to_latex,
        to_markdown,
        write_csv,
    )

    wanted = args.columns.split(",") if args.columns else None
    table, units, common, unfinished = collect(args.dirs, args.stage, args.stat, wanted)
    columns, rows, best = summarise(table, units, wanted)
    md = to_markdown(columns, rows, best, units, args.stat)
    diffs = None
    if args.baseline:
        base, diffs = paired(table, columns, args.baseline)
        md += "\n" + paired_markdown(base, diffs, columns, units)
    if common:
        md += "\nCommon to all runs: " + " ".join(f"`{k}={v}`" for k, v in sorted(common.items())) + "\n"
    if unfinished:
        md += ("\nNot finished, so not in the table (rerun the sweep's command to finish them): "
               + "; ".join(f"{s} seed={seed} ({run})" for s, seed, run in unfinished) + "\n")
    print(md)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".md").write_text(md)
        out.with_suffix(".tex").write_text(to_latex(columns, rows, best, units, args.stat))
        write_csv(out.with_suffix(".csv"), columns, rows, units, args.stat, diffs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
