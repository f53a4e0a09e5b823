"""Ablation tables from run directories: ``python -m mf_lightning.table DIR... [--stage test]``.

Finds every ``metrics.json`` under the given folders (a Hydra multirun folder, or single runs),
reads the overrides each run was launched with (``.hydra/overrides.yaml``), and groups runs that
differ only in ``seed`` (rows are labelled by the overrides that vary between runs): one row per setting, mean +- std over seeds (sample std, ddof=1; 0 for a
single seed) per metric, the best value of each column marked, units in the headers. Writes
markdown, CSV and LaTeX (``--out PREFIX``) and prints the markdown.
"""

from __future__ import annotations

import csv
import json
from collections import OrderedDict, defaultdict
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from mf_lightning.cli.runner import cli_main, parser as cli_parser

IGNORED_OVERRIDES = ("seed", "hydra.", "paths.", "torch_threads", "malloc_tuning", "ckpt_path")


def _overrides(run: Path) -> List[str]:
    path = run / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return []
    import yaml

    return [str(o) for o in (yaml.safe_load(path.read_text()) or [])]


def _override_map(run: Path) -> Dict[str, str]:
    """The run's overrides as {key: value}, without seed / paths / hydra internals."""
    out = {}
    for o in _overrides(run):
        key, _, value = o.lstrip("+~").partition("=")
        if key != "seed" and not key.startswith(IGNORED_OVERRIDES):
            out[key] = value
    return out


def collect(dirs: Sequence[str], stage: str = "test", stat: str = "rmse"):
    """{setting: {column: [values over seeds]}}, {column: unit}, common overrides.

    A setting is labelled by the overrides that *vary* between the runs found (seed excluded);
    overrides shared by every run are returned separately (printed under the table)."""
    from mf_lightning.errors import InputError

    missing = [d for d in dirs if not Path(d).is_dir()]
    if missing:
        raise InputError(f"{missing[0]}: not a folder (give run or multirun folders)")
    runs = sorted({p.parent for d in dirs for p in Path(d).rglob("metrics.json")})
    if not runs:
        raise InputError(f"no metrics.json under {', '.join(map(str, dirs))}")
    maps = {run: _override_map(run) for run in runs}
    keys_all = sorted({k for m in maps.values() for k in m})
    varying = [k for k in keys_all if len({m.get(k) for m in maps.values()}) > 1]
    common = {k: v for k, v in maps[runs[0]].items() if k not in varying}
    table: Dict[str, Dict[str, List[float]]] = OrderedDict()
    units: Dict[str, str] = {}
    for run in runs:
        metrics = json.loads((run / "metrics.json").read_text())
        setting = " ".join(f"{k}={maps[run].get(k, '(default)')}" for k in varying) or "(all runs alike)"
        row = table.setdefault(setting, defaultdict(list))
        for dataset, per_q in metrics.get(stage, {}).items():
            for q, m in per_q.items():
                if stat in m:
                    col = f"{dataset}/{q}"
                    row[col].append(float(m[stat]))
                    units[col] = m.get("unit", "")
    return table, units, common


def summarise(table, units):
    columns = sorted(units)
    rows = []
    for setting, values in table.items():
        cells = {}
        for c in columns:
            v = np.asarray(values.get(c, []), dtype=float)
            if v.size:
                cells[c] = (float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0, int(v.size))
        rows.append((setting, cells))
    best = {c: min((cells[c][0] for _, cells in rows if c in cells), default=None) for c in columns}
    return columns, rows, best


def _fmt(cell, is_best: bool, bold=("**", "**")) -> str:
    if cell is None:
        return "-"
    mean, std, _ = cell
    text = f"{mean:.4g} ± {std:.2g}"
    return f"{bold[0]}{text}{bold[1]}" if is_best else text


def to_markdown(columns, rows, best, units, stat) -> str:
    head = "| setting | seeds | " + " | ".join(f"{c} {stat.upper()} ({units[c]})" for c in columns) + " |"
    lines = [head, "|" + "---|" * (len(columns) + 2)]
    for setting, cells in rows:
        n = max((c[2] for c in cells.values()), default=0)
        lines.append(f"| {setting} | {n} | " + " | ".join(
            _fmt(cells.get(c), c in cells and cells[c][0] == best[c]) for c in columns) + " |")
    return "\n".join(lines) + "\n"


def to_latex(columns, rows, best, units, stat) -> str:
    esc = lambda s: s.replace("_", r"\_").replace("%", r"\%")  # noqa: E731
    lines = [r"\begin{tabular}{l" + "c" * (len(columns) + 1) + "}", r"\hline",
             "setting & seeds & " + " & ".join(esc(f"{c} {stat.upper()} ({units[c]})") for c in columns) + r" \\", r"\hline"]
    for setting, cells in rows:
        n = max((c[2] for c in cells.values()), default=0)
        vals = [_fmt(cells.get(c), c in cells and cells[c][0] == best[c], (r"\textbf{", "}")).replace("±", r"$\pm$")
                for c in columns]
        lines.append(esc(setting) + f" & {n} & " + " & ".join(vals) + r" \\")
    lines += [r"\hline", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def write_csv(path: Path, columns, rows, units, stat) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["setting", "seeds"] + [f"{c} {stat} mean ({units[c]})" for c in columns]
                   + [f"{c} {stat} std ({units[c]})" for c in columns])
        for setting, cells in rows:
            n = max((c[2] for c in cells.values()), default=0)
            w.writerow([setting, n] + [cells[c][0] if c in cells else "" for c in columns]
                       + [cells[c][1] if c in cells else "" for c in columns])


PROG = "python -m mf_lightning.table"


@cli_main(PROG)
def main(argv: Optional[Sequence[str]] = None) -> int:
    p = cli_parser(PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("dirs", nargs="+", help="run or multirun folders")
    p.add_argument("--stage", default="test", choices=["val", "test"])
    p.add_argument("--stat", default="rmse", choices=["rmse", "mae"])
    p.add_argument("--out", default=None, help="prefix for PREFIX.md, PREFIX.csv, PREFIX.tex")
    args = p.parse_args(argv)
    table, units, common = collect(args.dirs, args.stage, args.stat)
    columns, rows, best = summarise(table, units)
    md = to_markdown(columns, rows, best, units, args.stat)
    if common:
        md += "\nCommon to all runs: " + " ".join(f"`{k}={v}`" for k, v in sorted(common.items())) + "\n"
    print(md)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".md").write_text(md)
        out.with_suffix(".tex").write_text(to_latex(columns, rows, best, units, args.stat))
        write_csv(out.with_suffix(".csv"), columns, rows, units, args.stat)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
