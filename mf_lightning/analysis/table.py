"""Ablation tables from run directories: ``mf-table DIR... [--stage test]``.

Finds every ``metrics.json`` under the given folders (a Hydra multirun folder, or single runs),
reads the overrides each run was launched with (``.hydra/overrides.yaml``), and groups runs that
differ only in ``seed`` (rows are labelled by the overrides that vary between runs): one row
per setting, mean +- std over seeds (sample std, ddof=1; 0 for a single seed) per metric, the
best value of each column marked, units in the headers. Writes
markdown, CSV and LaTeX (``--out PREFIX``) and prints the markdown.
"""

from __future__ import annotations

import csv
import json
from collections import OrderedDict, defaultdict
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from mf_lightning.utils import markdown_table

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


# per-run values that are not per-dataset metrics: (metrics.json key, column, unit)
# "train time" is fit's time summed over a run's processes (resumes included); files from before
# it was recorded give the process wall time of a run that was never resumed (data set-up and
# the final validation/test included, so a few seconds more), else nothing
RUN_COLUMNS = (("n_parameters", "parameters", "count"), ("steps", "steps", "count"),
               ("train_time_s", "train time", "s"))


def _run_value(metrics: dict, key: str) -> Optional[float]:
    value = metrics.get(key)
    if value is None and key == "train_time_s" and not metrics.get("resumed"):
        value = metrics.get("wall_time_s")
    return None if value is None else float(value)


def find_runs(dirs: Sequence[str]):
    """(finished, unfinished) run folders under ``dirs``: a run is a folder with a metrics.json
    or a Hydra job folder (``.hydra/overrides.yaml``); it is finished when its metrics.json
    says it is complete (:func:`~mf_lightning.utils.run_is_complete`: not failed, not cut by
    ``max_time``)."""
    from mf_lightning.errors import InputError
    from mf_lightning.utils import run_is_complete

    missing = [d for d in dirs if not Path(d).is_dir()]
    if missing:
        raise InputError(f"{missing[0]}: not a folder (give run or multirun folders)")
    candidates = {p.parent for d in dirs for p in Path(d).rglob("metrics.json")}
    candidates |= {p.parent.parent for d in dirs for p in Path(d).rglob(".hydra/overrides.yaml")}
    finished, unfinished = [], []
    for run in sorted(candidates):
        path = run / "metrics.json"
        done = path.is_file() and run_is_complete(json.loads(path.read_text()))
        (finished if done else unfinished).append(run)
    if not finished:
        raise InputError(f"no finished run (metrics.json) under {', '.join(map(str, dirs))}"
                         + (f"; {len(unfinished)} unfinished" if unfinished else ""))
    return finished, unfinished


def _seed(run: Path) -> str:
    for o in _overrides(run):
        key, _, value = o.lstrip("+~").partition("=")
        if key == "seed":
            return value
    return "(default)"


def collect(dirs: Sequence[str], stage: str = "test", stat: str = "rmse", columns: Optional[Sequence[str]] = None):
    """{setting: {column: {seed: value}}}, {column: unit}, common overrides, unfinished runs.

    A setting is labelled by the overrides that *vary* between the runs found (seed excluded);
    overrides shared by every run are returned separately (printed under the table). Unfinished
    runs (killed, or failed with non-finite metrics) are returned as (setting, seed), never averaged.
    ``columns``: keep only these quantities (e.g. forces, becs_diag; the run columns are kept)."""
    runs, unfinished = find_runs(dirs)
    maps = {run: _override_map(run) for run in runs + unfinished}
    keys_all = sorted({k for m in maps.values() for k in m})
    varying = [k for k in keys_all if len({m.get(k) for m in maps.values()}) > 1]
    common = {k: v for k, v in maps[runs[0]].items() if k not in varying}

    def setting_of(run):
        return " ".join(f"{k}={maps[run].get(k, '(default)')}" for k in varying) or "(all runs alike)"

    table: Dict[str, Dict[str, Dict[str, float]]] = OrderedDict()
    units: Dict[str, str] = {}
    for run in runs:
        metrics = json.loads((run / "metrics.json").read_text())
        row = table.setdefault(setting_of(run), defaultdict(dict))
        seed = _seed(run)
        for dataset, per_q in metrics.get(stage, {}).items():
            for q, m in per_q.items():
                if stat in m and (columns is None or q in columns):
                    col = f"{dataset}/{q}"
                    row[col][seed] = float(m[stat])
                    units[col] = m.get("unit", "")
        for key, col, unit in RUN_COLUMNS:
            value = _run_value(metrics, key)
            if value is not None:
                row[col][seed] = value
                units[col] = unit
    return table, units, common, [(setting_of(run), _seed(run), str(run)) for run in unfinished]


def _ordered_columns(units, order: Optional[Sequence[str]] = None) -> List[str]:
    """Metric columns sorted (or in the order of the quantities ``order``), then the run columns."""
    run_cols = [c for _, c, _ in RUN_COLUMNS]
    metric = sorted(c for c in units if c not in run_cols)
    if order:
        rank = {q: i for i, q in enumerate(order)}
        metric.sort(key=lambda c: (rank.get(c.split("/", 1)[-1], len(rank)), c))
    return metric + [c for c in run_cols if c in units]


def summarise(table, units, order: Optional[Sequence[str]] = None):
    columns = _ordered_columns(units, order)
    rows = []
    for setting, values in table.items():
        cells = {}
        for c in columns:
            v = np.asarray(list(values.get(c, {}).values()), dtype=float)
            if v.size:
                cells[c] = (float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0, int(v.size))
        rows.append((setting, cells))
    lower_is_better = [c for c in columns if c not in [rc for _, rc, _ in RUN_COLUMNS]]
    best = {c: min((cells[c][0] for _, cells in rows if c in cells), default=None) for c in lower_is_better}
    return columns, rows, best


def paired(table, columns, baseline: str):
    """Per setting and column, the paired difference to the ``baseline`` row over the seeds both
    have: (mean difference, its std, n, p of a two-sided paired t-test; None below 2 pairs)."""
    from scipy import stats

    matches = [s for s in table if baseline in s.split(" ")]
    if len(matches) != 1:
        from mf_lightning.errors import InputError

        raise InputError(f"baseline {baseline!r} matches {len(matches)} settings of {list(table)}")
    base = table[matches[0]]
    run_cols = [rc for _, rc, _ in RUN_COLUMNS]
    out = OrderedDict()
    for setting, values in table.items():
        if setting == matches[0]:
            continue
        cells = {}
        for c in columns:
            seeds = sorted(set(values.get(c, {})) & set(base.get(c, {})))
            if not seeds:
                continue
            d = np.array([values[c][k] - base[c][k] for k in seeds])
            p = None  # no test of run columns (parameters, time) or of identical differences
            if len(d) > 1 and c not in run_cols and np.ptp(d) > 0:
                p = float(stats.ttest_rel([values[c][k] for k in seeds], [base[c][k] for k in seeds]).pvalue)
            cells[c] = (float(d.mean()), float(d.std(ddof=1)) if len(d) > 1 else 0.0, len(d), p)
        out[setting] = cells
    return matches[0], out


def paired_markdown(base: str, diffs, columns, units) -> str:
    header = ["setting", "pairs"] + [f"Δ {c}" + (f" ({units[c]})" if units[c] else "") for c in columns]
    rows = []
    for setting, cells in diffs.items():
        n = max((c[2] for c in cells.values()), default=0)
        texts = []
        for c in columns:
            if c not in cells:
                texts.append("-")
                continue
            mean, std, _, p = cells[c]
            texts.append(f"{mean:+.3g} ± {std:.2g}" + ("" if p is None else f" (p={p:.2g})"))
        rows.append([setting, n, *texts])
    return (f"Paired difference to `{base}` over the same seeds (mean ± std; p: two-sided paired t-test; "
            "negative = lower error than the baseline):\n\n" + markdown_table(header, rows) + "\n")


def _fmt(cell, is_best: bool, bold=("**", "**")) -> str:
    if cell is None:
        return "-"
    mean, std, _ = cell
    text = f"{mean:.4g} ± {std:.2g}" if std else f"{mean:.4g}"
    return f"{bold[0]}{text}{bold[1]}" if is_best else text


def _header(c, units, stat) -> str:
    run_cols = [rc for _, rc, _ in RUN_COLUMNS]
    unit = f" ({units[c]})" if units[c] else ""
    return f"{c}{unit}" if c in run_cols else f"{c} {stat.upper()}{unit}"


def to_markdown(columns, rows, best, units, stat) -> str:
    body = []
    for setting, cells in rows:
        n = max((c[2] for c in cells.values()), default=0)
        body.append([setting, n, *(_fmt(cells.get(c), c in cells and c in best and cells[c][0] == best[c])
                                   for c in columns)])
    return markdown_table(["setting", "seeds", *(_header(c, units, stat) for c in columns)], body) + "\n"


def to_latex(columns, rows, best, units, stat) -> str:
    esc = lambda s: s.replace("_", r"\_").replace("%", r"\%")  # noqa: E731
    lines = [r"\begin{tabular}{l" + "c" * (len(columns) + 1) + "}", r"\hline",
             "setting & seeds & " + " & ".join(esc(_header(c, units, stat)) for c in columns) + r" \\", r"\hline"]
    for setting, cells in rows:
        n = max((c[2] for c in cells.values()), default=0)
        bold = (r"\textbf{", "}")
        vals = [_fmt(cells.get(c), c in cells and c in best and cells[c][0] == best[c], bold).replace("±", r"$\pm$")
                for c in columns]
        lines.append(esc(setting) + f" & {n} & " + " & ".join(vals) + r" \\")
    lines += [r"\hline", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def write_csv(path: Path, columns, rows, units, stat, diffs=None) -> None:
    """One row per setting: seeds, mean and std per column, and with ``diffs`` the paired
    difference to the baseline and its p-value."""
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        head = (["setting", "seeds"] + [f"{_header(c, units, stat)} mean" for c in columns]
                + [f"{_header(c, units, stat)} std" for c in columns])
        if diffs is not None:
            head += [f"{c} diff to baseline" for c in columns] + [f"{c} p" for c in columns]
        w.writerow(head)
        for setting, cells in rows:
            n = max((c[2] for c in cells.values()), default=0)
            row = ([setting, n] + [cells[c][0] if c in cells else "" for c in columns]
                   + [cells[c][1] if c in cells else "" for c in columns])
            if diffs is not None:
                d = diffs.get(setting, {})
                row += [d[c][0] if c in d else "" for c in columns]
                row += [d[c][3] if c in d and d[c][3] is not None else "" for c in columns]
            w.writerow(row)
