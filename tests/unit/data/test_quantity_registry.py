"""Adding a labelled quantity is one place: a toy quantity registered here (and only here) is read
from a file in its own unit, becomes a label slot of every graph, gets a loss term and a scale,
and is reported by the metrics, the evaluation tables and the label audit."""

from __future__ import annotations

import ase.io
import numpy as np
import pytest
import torch
from ase.build import bulk

from mf_lightning.data import keys, quantities
from mf_lightning.data.audit import labels_for
from mf_lightning.data.dataset import record_to_graph
from mf_lightning.data.keys import ref_key, weight_key
from mf_lightning.data.quantities import Quantity
from mf_lightning.data.reader import read_records
from mf_lightning.train.losses import MultiTaskLoss, label_scales
from mf_lightning.train.metrics import error_sums, metric_rows, rmse_mae, stats

TOY = Quantity("toy_moment", (3, 3), False, "e*A", {"e*A": lambda v, vol: v, "D": lambda v, vol: v * 0.2082},
               metric_unit="mD", metric_scale=1000 / 0.2082, split_diagonal=True, file_keys={"REF_toy": "D"})


@pytest.fixture
def toy():
    quantities.register(TOY)
    yield TOY
    quantities.unregister(TOY.name)


def toy_file(tmp_path, n=3):
    frames = []
    for i in range(n):
        atoms = bulk("Si", "diamond", a=5.43)
        atoms.info["REF_toy"] = (np.arange(9.0) + i).tolist()  # Debye, row-major 3x3
        frames.append(atoms)
    path = tmp_path / "toy.xyz"
    ase.io.write(path, frames, format="extxyz")
    return path


def test_registering_twice_is_an_error(toy):
    with pytest.raises(ValueError, match="already registered"):
        quantities.register(TOY)


def test_a_toy_quantity_flows_from_file_to_loss_and_metrics(toy, tmp_path):
    assert "toy_moment" in quantities.tasks()
    path = toy_file(tmp_path)
    records = read_records(path, {"toy_moment": labels_for(path, None)["toy_moment"]})  # the audit knows its key
    assert np.allclose(records[1].labels["toy_moment"], (np.arange(9.0) + 1).reshape(3, 3) * 0.2082)  # D -> e*A

    graphs = [record_to_graph(r, [14], r_max=3.0, heads=["Default"], head="Default") for r in records]
    assert graphs[0][ref_key("toy_moment")].shape == (1, 3, 3) and float(graphs[0][weight_key("toy_moment")]) == 1
    assert float(graphs[0][weight_key("energy")]) == 0  # the other labels are absent, not invented

    scale = label_scales(graphs)["toy_moment"]
    expected = np.sqrt(np.mean([(r.labels["toy_moment"] ** 2).mean() for r in records]))
    assert scale == pytest.approx(expected)

    batch = {ref_key("toy_moment"): torch.stack([g[ref_key("toy_moment")][0] for g in graphs]),
             weight_key("toy_moment"): torch.ones(3, dtype=torch.float64),
             keys.PTR: torch.tensor([0, 2, 4, 6]), keys.BATCH: torch.arange(3).repeat_interleave(2)}
    for t in quantities.tasks():
        batch.setdefault(weight_key(t), torch.zeros(3, dtype=torch.float64))
    perfect = {keys.ENERGY: torch.zeros(3, dtype=torch.float64), "toy_moment": batch[ref_key("toy_moment")].clone()}
    off = dict(perfect, toy_moment=perfect["toy_moment"] + 0.01)

    loss = MultiTaskLoss({"toy_moment": 1.0}, scales={"toy_moment": scale})
    assert loss.properties(batch) == (keys.ENERGY, "toy_moment")
    assert float(loss(perfect, batch)[0]) == 0.0
    total, parts = loss(off, batch)
    assert float(total) > 0 and set(parts) == {"toy_moment"}

    rows = {q: (ref, pred, err, w) for _, q, ref, pred, err, w in metric_rows(off, batch)}
    assert set(rows) == {"toy_moment_diag", "toy_moment_offdiag"}  # split, as the record says
    assert quantities.metric_units()["toy_moment_diag"] == "mD"
    rmse, _ = rmse_mae(error_sums(rows["toy_moment_diag"][2], rows["toy_moment_diag"][3]))
    assert float(rmse) == pytest.approx(0.01 * 1000 / 0.2082)  # in the metric unit
    ref, pred, err, _ = rows["toy_moment_offdiag"]
    assert stats(ref.numpy(), pred.numpy())["rmse"] == pytest.approx(0.01 * 1000 / 0.2082)


def test_unregistered_after_the_test():
    assert "toy_moment" not in quantities.tasks()
