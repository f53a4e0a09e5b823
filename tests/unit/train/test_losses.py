"""Loss terms: folding invariance, exact zeros for absent labels, normalisation."""

from __future__ import annotations

import pytest
import torch

from mf_lightning.data import keys
from mf_lightning.data.keys import ref_key, weight_key
from mf_lightning.data.quantities import tasks
from mf_lightning.train.losses import MultiTaskLoss, fold_polarisation

TASKS = tasks()


def fake_batch(n_graphs=3, atoms_per=4, seed=0, present=TASKS):
    g = torch.Generator().manual_seed(seed)
    n = n_graphs * atoms_per
    cells = torch.stack([torch.diag(torch.tensor([4.0 + i, 5.0, 6.0 - 0.5 * i], dtype=torch.float64)) for i in range(n_graphs)])
    cells[:, 0, 1] = 0.7  # not orthogonal: quanta are not along the axes
    b = {keys.PTR: torch.arange(0, n + 1, atoms_per), keys.BATCH: torch.arange(n_graphs).repeat_interleave(atoms_per),
         keys.CELL: cells.reshape(-1, 3)}
    shapes = {"energy": (n_graphs,), "forces": (n, 3), "stress": (n_graphs, 3, 3), "polarisation": (n_graphs, 3),
              "becs": (n, 3, 3), "polarisability": (n_graphs, 3, 3)}
    for t in TASKS:
        b[ref_key(t)] = torch.randn(*shapes[t], generator=g, dtype=torch.float64) * 0.01
        b[weight_key(t)] = torch.full((n_graphs,), 1.0 if t in present else 0.0, dtype=torch.float64)
    pred = {keys.ENERGY: b[ref_key("energy")] + 0.01 * torch.randn(n_graphs, generator=g, dtype=torch.float64)}
    for t in TASKS[1:]:
        pred[t] = b[ref_key(t)] + 0.003 * torch.randn(*shapes[t], generator=g, dtype=torch.float64)
    return pred, b


WEIGHTS = {t: 1.0 for t in TASKS}


def test_folding_invariance():
    pred, b = fake_batch()
    loss = MultiTaskLoss({"polarisation": 1.0})
    base, _ = loss(pred, b)
    cells = b[keys.CELL].view(-1, 3, 3)
    Q = cells.transpose(-1, -2) / torch.linalg.det(cells).abs().view(-1, 1, 1)
    shifts = torch.tensor([[1, 0, -2], [0, 3, 1], [-1, -1, 5]], dtype=torch.float64)
    shifted = dict(b)
    shifted[ref_key("polarisation")] = b[ref_key("polarisation")] + (Q @ shifts.unsqueeze(-1)).squeeze(-1)
    again, _ = loss(pred, shifted)
    torch.testing.assert_close(again, base, rtol=1e-10, atol=1e-14)
    # an unfolded loss would see the quanta
    unfolded = torch.nn.functional.huber_loss(pred["polarisation"], shifted[ref_key("polarisation")], delta=0.01)
    assert unfolded > 10 * base


def test_fold_returns_smallest_equivalent():
    cell = torch.diag(torch.tensor([4.0, 5.0, 6.0], dtype=torch.float64)).unsqueeze(0)
    q = torch.tensor([4.0, 5.0, 6.0], dtype=torch.float64) / 120.0
    dP = torch.tensor([[0.1 * q[0] + 2 * q[0], -3 * q[1], 0.4 * q[2]]], dtype=torch.float64)
    torch.testing.assert_close(fold_polarisation(dP, cell), torch.tensor([[0.1 * q[0], 0.0, 0.4 * q[2]]], dtype=torch.float64))


def test_absent_labels_contribute_exactly_zero():
    pred, b = fake_batch(present=("becs",))
    b[ref_key("energy")][:] = float("nan")  # whatever sits in an unlabelled slot is never read
    total, parts = MultiTaskLoss(WEIGHTS)(pred, b)
    assert set(parts) == {"becs"} and torch.isfinite(total)
    only, _ = MultiTaskLoss({"becs": 1.0})(pred, b)
    assert total == only


def test_partially_labelled_batch_is_normalised_by_label_weights():
    pred, b = fake_batch()
    b[weight_key("becs")] = torch.tensor([1.0, 0.0, 1.0], dtype=torch.float64)
    _, parts = MultiTaskLoss({"becs": 1.0})(pred, b)
    keep = b[keys.BATCH] != 1
    h = torch.nn.functional.huber_loss(pred["becs"][keep], b[ref_key("becs")][keep], delta=0.01)
    torch.testing.assert_close(parts["becs"], h)


def test_energy_is_per_atom_and_unknown_task_rejected():
    pred, b = fake_batch()
    _, parts = MultiTaskLoss({"energy": 1.0}, huber_delta=100.0)(pred, b)
    expected = 0.5 * (((pred[keys.ENERGY] - b[ref_key("energy")]) / 4) ** 2).mean()
    torch.testing.assert_close(parts["energy"], expected)
    with pytest.raises(ValueError, match="unknown loss tasks"):
        MultiTaskLoss({"dipole": 1.0})


def test_properties_only_for_labelled_tasks():
    _, b = fake_batch(present=("polarisation",))
    assert MultiTaskLoss(WEIGHTS).properties(b) == (keys.ENERGY, "polarisation")
