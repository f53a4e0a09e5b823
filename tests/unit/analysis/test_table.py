"""The ablation table tool: grouping by setting, mean and std over seeds, best marked."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mf_lightning.analysis import table
from mf_lightning.cli.table import main as table_main


def fake_run(root, name, overrides, becs, p):
    run = root / name
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    metrics = {"test": {"sio2": {"becs_diag": {"unit": "e", "rmse": becs, "mae": becs / 2},
                                 "polarisation": {"unit": "uC/cm^2", "rmse": p, "mae": p / 2}}}}
    (run / "metrics.json").write_text(json.dumps(metrics))


def test_means_stds_and_best(tmp_path, capsys):
    fake_run(tmp_path, "0", ["model/coupling=residual_tp", "seed=1"], 0.10, 2.0)
    fake_run(tmp_path, "1", ["model/coupling=residual_tp", "seed=2"], 0.20, 4.0)
    fake_run(tmp_path, "2", ["model/coupling=basis_tp", "seed=1", "hydra.run.dir=x"], 0.05, 3.0)
    fake_run(tmp_path, "3", ["model/coupling=basis_tp", "seed=2"], 0.07, 5.0)
    tab, units, common, unfinished = table.collect([str(tmp_path)])
    assert unfinished == []
    assert common == {}
    columns, rows, best = table.summarise(tab, units)
    by_setting = dict(rows)
    mean, std, n = by_setting["model/coupling=residual_tp"]["sio2/becs_diag"]
    assert (mean, n) == (pytest.approx(0.15), 2) and std == pytest.approx(np.std([0.1, 0.2], ddof=1))
    assert by_setting["model/coupling=basis_tp"]["sio2/polarisation"][0] == pytest.approx(4.0)
    assert best["sio2/becs_diag"] == pytest.approx(0.06) and best["sio2/polarisation"] == pytest.approx(3.0)
    assert table_main([str(tmp_path), "--out", str(tmp_path / "tab" / "ablation")]) == 0
    md = (tmp_path / "tab" / "ablation.md").read_text()
    assert "sio2/becs_diag RMSE (e)" in md and "**0.06 ± 0.014**" in md and "**3 ± 1.4**" in md
    assert r"\textbf{0.06 $\pm$ 0.014}" in (tmp_path / "tab" / "ablation.tex").read_text()
    csv_text = (tmp_path / "tab" / "ablation.csv").read_text()
    assert "model/coupling=basis_tp,2,0.06" in csv_text


def test_no_runs_is_a_clear_error(tmp_path, capsys):
    assert table_main([str(tmp_path)]) == 2
    assert "no finished run (metrics.json)" in capsys.readouterr().err


def test_paired_comparison_finds_a_known_difference(tmp_path, capsys):
    """Synthetic runs: basis_tp is residual_tp + 0.03 e on every seed plus noise of 0.002;
    none is residual_tp plus pure noise. The paired test finds the first (p < 0.01) and not the
    second; the p-values are scipy's paired t-test on the same numbers."""
    from scipy import stats

    rng = np.random.default_rng(0)
    seeds = range(1, 6)
    base = {k: 0.1 + 0.05 * rng.random() for k in seeds}  # seed-to-seed spread 10x the noise
    noise = {k: 0.002 * rng.standard_normal() for k in seeds}
    same = {k: base[k] + 0.002 * rng.standard_normal() for k in seeds}
    for k in seeds:
        fake_run(tmp_path, f"r{k}", ["model/coupling=residual_tp", f"seed={k}"], base[k], 2.0)
        fake_run(tmp_path, f"b{k}", ["model/coupling=basis_tp", f"seed={k}"], base[k] + 0.03 + noise[k], 2.0)
        fake_run(tmp_path, f"n{k}", ["model/coupling=none", f"seed={k}"], same[k], 2.0)
    tab, units, _, _ = table.collect([str(tmp_path)])
    columns, _, _ = table.summarise(tab, units)
    base_name, diffs = table.paired(tab, columns, "model/coupling=residual_tp")
    assert base_name == "model/coupling=residual_tp"
    mean, std, n, p = diffs["model/coupling=basis_tp"]["sio2/becs_diag"]
    assert n == 5 and mean == pytest.approx(0.03 + np.mean(list(noise.values())))
    assert p == pytest.approx(stats.ttest_rel([base[k] + 0.03 + noise[k] for k in seeds], list(base.values())).pvalue)
    assert p < 0.01
    assert diffs["model/coupling=none"]["sio2/becs_diag"][3] > 0.05
    assert table_main([str(tmp_path), "--baseline", "model/coupling=residual_tp", "--out", str(tmp_path / "t")]) == 0
    md = (tmp_path / "t.md").read_text()
    assert "Paired difference to `model/coupling=residual_tp`" in md and "| model/coupling=basis_tp | 5 |" in md
    assert "sio2/becs_diag diff to baseline" in (tmp_path / "t.csv").read_text()


def test_unfinished_runs_are_listed_not_averaged(tmp_path, capsys):
    fake_run(tmp_path, "0", ["model/coupling=residual_tp", "seed=1"], 0.10, 2.0)
    fake_run(tmp_path, "1", ["model/coupling=residual_tp", "seed=2"], 0.20, 4.0)
    killed = tmp_path / "2"  # a job folder whose run was killed: no metrics.json
    (killed / ".hydra").mkdir(parents=True)
    (killed / ".hydra" / "overrides.yaml").write_text("- model/coupling=residual_tp\n- seed=3\n")
    failed = tmp_path / "3"  # a run whose metrics were non-finite
    fake_run(tmp_path, "3", ["model/coupling=residual_tp", "seed=4"], 0.3, 1.0)
    data = json.loads((failed / "metrics.json").read_text())
    (failed / "metrics.json").write_text(json.dumps({**data, "finished": False}))
    fake_run(tmp_path, "4", ["model/coupling=residual_tp", "seed=5"], 0.9, 9.0)  # cut by max_time
    data = json.loads((tmp_path / "4" / "metrics.json").read_text())
    (tmp_path / "4" / "metrics.json").write_text(json.dumps({**data, "finished": True, "stopped_by": "max_time"}))
    tab, units, _, unfinished = table.collect([str(tmp_path)])
    assert sorted(seed for _, seed, _ in unfinished) == ["3", "4", "5"]
    _, rows, _ = table.summarise(tab, units)
    assert dict(rows)["(all runs alike)"]["sio2/becs_diag"][2] == 2  # only the complete seeds
    assert table_main([str(tmp_path)]) == 0
    assert "Not finished, so not in the table" in capsys.readouterr().out


def test_cost_columns_steps_and_train_time(tmp_path):
    """Runs report steps and training time; a run from before train_time_s was recorded gives
    its process wall time only when it was never resumed (a resumed process saw part of it)."""
    for name, seed, extra in (("0", 1, {"steps": 123, "train_time_s": 300.0, "wall_time_s": 40.0, "resumed": True}),
                              ("1", 2, {"steps": 123, "wall_time_s": 320.0, "resumed": False}),
                              ("2", 3, {"steps": 123, "wall_time_s": 90.0, "resumed": True})):
        fake_run(tmp_path, name, ["model/coupling=basis_tp", f"seed={seed}"], 0.1, 1.0)
        path = tmp_path / name / "metrics.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), **extra}))
    tab, units, _, _ = table.collect([str(tmp_path)])
    row = tab["(all runs alike)"]
    assert row["train time"] == {"1": 300.0, "2": 320.0} and units["train time"] == "s"
    assert row["steps"] == {"1": 123.0, "2": 123.0, "3": 123.0}
