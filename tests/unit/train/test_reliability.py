"""Checkpoints written atomically and loaded safely; the non-finite loss guard."""

from __future__ import annotations

import pickle

import pytest
import pytorch_lightning as pl
import torch

from mf_lightning.train.callbacks import NonFiniteGuard, NonFiniteLossError, describe_batch
from mf_lightning.train.checkpointing import AtomicCheckpointIO, CheckpointError, check_checkpoint, load_checkpoint


class Bomb:
    """Pickling this raises: a save interrupted halfway through writing."""

    def __reduce__(self):
        raise KeyboardInterrupt("killed during the save")


class Custom:
    """Any class: a checkpoint holding one needs unpickling of arbitrary objects."""

    def __init__(self, x=1):
        self.x = x


def lightning_like(step=3):
    return {"state_dict": {"w": torch.full((4,), float(step))}, "global_step": step, "loops": {}}


def test_interrupted_save_leaves_the_previous_checkpoint_intact(tmp_path):
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint(lightning_like(3), path)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"state_dict": {"w": torch.zeros(10_000)}, "bomb": Bomb()}, path)
    assert load_checkpoint(path)["global_step"] == 3
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temporary file left


def test_checkpoints_load_weights_only_and_unsafe_ones_are_refused(tmp_path):
    good = tmp_path / "good.ckpt"
    AtomicCheckpointIO().save_checkpoint(lightning_like(), good)
    assert check_checkpoint(good) == good

    unsafe = tmp_path / "unsafe.ckpt"
    torch.save({**lightning_like(), "hyper_parameters": {"obj": Custom()}}, unsafe)
    with pytest.raises(CheckpointError, match="unpickling.*allow_pickle=true"):
        check_checkpoint(unsafe)
    assert check_checkpoint(unsafe, allow_pickle=True) == unsafe  # the explicit opt-in
    # what the trainer calls on resume and on validate/test(ckpt_path=best): weights-only whatever
    # Lightning asks for (it passes weights_only=None or False there)
    for asked in (None, False, True):
        with pytest.raises(CheckpointError, match="unpickling"):
            AtomicCheckpointIO().load_checkpoint(unsafe, weights_only=asked)
    assert AtomicCheckpointIO().load_checkpoint(good, weights_only=False)["global_step"] == 3

    data = good.read_bytes()
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupted"):
        check_checkpoint(truncated)
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"\x00\x01not a checkpoint" * 10)
    with pytest.raises(CheckpointError, match="truncated or corrupted"):
        check_checkpoint(garbage)
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        check_checkpoint(tmp_path / "missing.ckpt")
    other = tmp_path / "weights.pt"
    torch.save({"w": torch.zeros(2)}, other)
    with pytest.raises(CheckpointError, match="not a Lightning training checkpoint"):
        check_checkpoint(other)
    assert isinstance(pickle.UnpicklingError(), Exception)


class Toy(pl.LightningModule):
    """A linear model whose loss is NaN on the steps listed in ``bad``."""

    def __init__(self, bad):
        super().__init__()
        self.layer = torch.nn.Linear(2, 1, dtype=torch.float64)
        self.bad = set(bad)
        self.weights_seen = []

    def training_step(self, batch, batch_idx):
        self.weights_seen.append(self.layer.weight.detach().clone())
        loss = (self.layer(batch[0]) ** 2).mean()
        if self.global_step in self.bad:
            loss = loss * float("nan")
        self.log("train/loss", loss)
        return loss

    def configure_optimizers(self):
        # Adam's momentum and weight decay: a step whose gradients were merely zeroed would
        # still move every weight; a skipped step must move none
        return torch.optim.AdamW(self.parameters(), lr=0.1, weight_decay=0.1)


def fit(bad, steps=6, **guard):
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.ones(steps, 2, dtype=torch.float64)))
    model = Toy(bad)
    g = NonFiniteGuard(**guard)
    trainer = pl.Trainer(max_steps=steps, callbacks=[g], logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
    trainer.fit(model, data)
    return model, g


def test_non_finite_steps_are_skipped_and_counted():
    model, guard = fit(bad=[2, 4])
    assert guard.skipped == 2
    w = model.weights_seen
    torch.testing.assert_close(w[3], w[2], rtol=0, atol=0)  # step 2 changed nothing
    torch.testing.assert_close(w[5], w[4], rtol=0, atol=0)
    assert not torch.equal(w[2], w[1]) and all(torch.isfinite(x).all() for x in w)


def test_consecutive_non_finite_steps_stop_training_with_a_message():
    with pytest.raises(NonFiniteLossError, match="3 consecutive") as info:
        fit(bad=[1, 2, 3, 4], max_consecutive=3)
    assert "structures" in str(info.value) and "diverged" not in str(info.value)
    with pytest.raises(NonFiniteLossError, match="1 consecutive"):
        fit(bad=[2], action="stop")


def test_batches_are_named_by_their_structures():
    class Batch:
        structure_serial = torch.tensor([2, 0])
        ptr = torch.tensor([0, 3, 6])

    class DM:
        structure_ids = ["sio2/SiO2.xyz:0", "sio2/SiO2.xyz:1", "sio2/SiO2.xyz:7"]

    assert describe_batch(Batch(), DM()) == ["sio2/SiO2.xyz:7", "sio2/SiO2.xyz:0"]
    assert describe_batch(Batch(), None) == ["<2 structures without ids>"]


def test_ema_never_averages_integer_buffers():
    """Averaging an integer buffer in floating point and truncating back corrupts it (Z = 9 -> 8);
    the EMA copies integer buffers and averages only floating-point tensors (with warm-up)."""
    from mf_lightning.train.callbacks import WarmupEMADecay

    fn = WarmupEMADecay(0.995)
    z = torch.tensor([1, 3, 9, 56, 83])
    for n in range(1, 50):
        assert torch.equal(fn(z.clone(), z.clone(), torch.tensor(n)), z)
    avg = fn(torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64), torch.tensor(1))
    torch.testing.assert_close(avg, torch.full((3,), 1 - 2 / 11, dtype=torch.float64))  # d_1 = 2/11
    fixed = WarmupEMADecay(0.995, warmup=False)
    torch.testing.assert_close(fixed(torch.zeros(1, dtype=torch.float64), torch.ones(1, dtype=torch.float64), 1),
                               torch.full((1,), 0.005, dtype=torch.float64))


def test_a_diverged_run_is_blamed_on_the_learning_rate_not_the_structures():
    class Diverged(Toy):
        def on_train_start(self):
            with torch.no_grad():
                self.layer.weight.fill_(1e6)

    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.ones(4, 2, dtype=torch.float64)))
    trainer = pl.Trainer(max_steps=4, callbacks=[NonFiniteGuard(action="stop")], logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         accelerator="cpu")
    with pytest.raises(NonFiniteLossError, match=r"diverged \(largest weight [0-9.e+]+\): lower module.lr"):
        trainer.fit(Diverged(bad=[1]), data)
