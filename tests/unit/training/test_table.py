"""The ablation table tool: grouping by setting, mean and std over seeds, best marked."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mf_lightning import table


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
    tab, units, common = table.collect([str(tmp_path)])
    assert common == {}
    columns, rows, best = table.summarise(tab, units)
    by_setting = dict(rows)
    mean, std, n = by_setting["model/coupling=residual_tp"]["sio2/becs_diag"]
    assert (mean, n) == (pytest.approx(0.15), 2) and std == pytest.approx(np.std([0.1, 0.2], ddof=1))
    assert by_setting["model/coupling=basis_tp"]["sio2/polarisation"][0] == pytest.approx(4.0)
    assert best["sio2/becs_diag"] == pytest.approx(0.06) and best["sio2/polarisation"] == pytest.approx(3.0)
    assert table.main([str(tmp_path), "--out", str(tmp_path / "tab" / "ablation")]) == 0
    md = (tmp_path / "tab" / "ablation.md").read_text()
    assert "sio2/becs_diag RMSE (e)" in md and "**0.06 ± 0.014**" in md and "**3 ± 1.4**" in md
    assert r"\textbf{0.06 $\pm$ 0.014}" in (tmp_path / "tab" / "ablation.tex").read_text()
    csv_text = (tmp_path / "tab" / "ablation.csv").read_text()
    assert "model/coupling=basis_tp,2,0.06" in csv_text


def test_no_runs_is_a_clear_error(tmp_path, capsys):
    assert table.main([str(tmp_path)]) == 2
    assert "no metrics.json" in capsys.readouterr().err
