"""Training callbacks of our own (Lightning's are used for everything else)."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, List

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Checkpoint, EMAWeightAveraging
from pytorch_lightning.trainer.states import TrainerFn

from mf_lightning.errors import RunFailedError

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------- noise, silenced where it comes from
class _DropLightningAdvert(logging.Filter):
    """Lightning >= 2.6 logs "Tip: ... try installing litlogger" at every Trainer: an advert."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in str(record.getMessage())


logging.getLogger("pytorch_lightning.utilities.rank_zero").addFilter(_DropLightningAdvert())
# Lightning's own _pytree helper still calls a torch API torch 2.13 deprecates (isinstance with
# LeafSpec), once per fit: nothing a user can act on
import warnings  # noqa: E402

warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")


class NonFiniteGuard(pl.Callback):
    """Detect a NaN/inf loss or gradient before the optimiser applies it.

    ``action="skip"`` (default): the step's gradients are set to None, so the optimiser skips
    every parameter (torch's optimisers leave a parameter without a gradient untouched: no
    update, no momentum, no weight decay; zeroed gradients would still move every weight by
    about lr through Adam's moments), the skip is counted (``train/skipped_steps``),
    and after ``max_consecutive`` consecutive bad steps training stops with an error naming the
    structures of the last bad batch. ``action="stop"``: stop at the first bad step.
    ``action="ignore"``: do nothing (Lightning's default behaviour).

    Weights and optimiser state are therefore never contaminated by a non-finite value, and a
    stop is loud: :class:`NonFiniteLossError` with the batch's structure ids.
    """

    def __init__(self, action: str = "skip", max_consecutive: int = 5):
        if action not in ("skip", "stop", "ignore"):
            raise ValueError(f"NonFiniteGuard action {action!r}: skip | stop | ignore")
        self.action, self.max_consecutive = action, int(max_consecutive)
        self.skipped = 0
        self.consecutive = 0
        self._batch_ids: List[str] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._batch_ids = describe_batch(batch, getattr(trainer, "datamodule", None))

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if self.action == "ignore":
            return
        loss = trainer.callback_metrics.get("train/loss")
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        finite = all(bool(torch.isfinite(p.grad).all()) for p in params)
        if loss is not None:
            finite = finite and math.isfinite(float(loss))
        if finite:
            self.consecutive = 0
            return
        self.skipped += 1
        self.consecutive += 1
        where = f"step {trainer.global_step}, structures {self._batch_ids}"
        largest = max((float(p.detach().abs().max()) for p in pl_module.parameters() if p.numel()), default=0.0)
        if not math.isfinite(largest) or largest > DIVERGED_WEIGHT:
            # the model, not the data: naming the batch's structures would blame innocent ones
            cause = (f"the training diverged (largest weight {largest:.3g}): lower module.lr "
                     f"(now {optimizer.param_groups[0]['lr']:g})")
        else:
            cause = ("check these structures' labels (mf-audit) or lower the learning "
                     "rate")
        if self.action == "stop" or self.consecutive >= self.max_consecutive:
            raise NonFiniteLossError(
                f"non-finite loss or gradient ({self.consecutive} consecutive, {self.skipped} in all) at {where}; "
                + cause)
        log.warning("non-finite loss or gradient at %s: step skipped (%d so far); %s", where, self.skipped, cause)
        for p in params:
            p.grad = None
        pl_module.log("train/skipped_steps", float(self.skipped))

    def state_dict(self) -> dict:
        return {"skipped": self.skipped, "consecutive": self.consecutive}

    def load_state_dict(self, state_dict: dict) -> None:
        self.skipped = int(state_dict.get("skipped", 0))
        self.consecutive = int(state_dict.get("consecutive", 0))


class NonFiniteLossError(RunFailedError, RuntimeError):
    """Training stopped on non-finite losses or gradients (the CLI exits 3 with its message)."""


# |weight| beyond this (weights are O(1) by construction) means the optimisation diverged
DIVERGED_WEIGHT = 1.0e4


def describe_batch(batch: Any, datamodule: Any = None) -> List[str]:
    """Structure ids of a batch (``source/file:frame``, from the ``structure_serial`` the
    MultiSourceDataModule gives every graph), or its size if it has none."""
    index = getattr(batch, "structure_serial", None)
    table = getattr(datamodule, "structure_ids", None)
    if index is not None and table:
        return [table[int(i)] for i in torch.as_tensor(index).reshape(-1).tolist()]
    ptr = getattr(batch, "ptr", None)
    return [f"<{int(ptr.numel() - 1)} structures without ids>"] if ptr is not None else []


class LastCheckpoint(Checkpoint):
    """``<dirpath>/last.ckpt``, the file to resume from: rewritten every ``every_n_train_steps``
    optimisation steps and at the end of every training epoch (after its validation, so it holds
    the plateau scheduler's update and the best-model bookkeeping).

    One callback owns the file. Lightning's ModelCheckpoint can save either every N steps or
    per epoch, not both, and two ModelCheckpoints both saving "last" do not share the file: the
    second writes ``last-v1.ckpt`` and resuming from ``last.ckpt`` silently uses the older one.
    Saves go through the trainer (so through :class:`~mf_lightning.train.checkpointing.AtomicCheckpointIO`).
    Being a ``Checkpoint``, Lightning runs its hooks after every other callback's, so the file
    includes this step's EMA update and the other callbacks' state."""

    def __init__(self, dirpath, every_n_train_steps: int = 20, filename: str = "last.ckpt"):
        self.path = Path(dirpath) / filename
        self.every_n_train_steps = int(every_n_train_steps)

    def _save(self, trainer) -> None:
        if not trainer.sanity_checking:
            # the full training state; Lightning's "weights_only" here is what is *saved* (it logged
            # "weights_only was not set, defaulting to False" otherwise). Loading is always
            # torch's weights_only=True (mf_lightning.train.checkpointing.AtomicCheckpointIO).
            trainer.save_checkpoint(self.path, weights_only=False)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        # Not after an epoch's last batch: a kill during that epoch's validation would resume from
        # a checkpoint whose epoch counts as trained, and Lightning would skip its validation
        # (the plateau scheduler, ModelCheckpoint and EarlyStopping would miss the epoch). The
        # end-of-epoch save below follows the validation; a kill before it redoes the last batch.
        last = batch_idx + 1 >= trainer.num_training_batches
        if self.every_n_train_steps > 0 and trainer.global_step % self.every_n_train_steps == 0 and not last:
            self._save(trainer)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        # An epoch cut short (max_time, a stop signal) still calls this hook, and a checkpoint
        # saved here would count the cut epoch as complete: a resume skipped its remaining
        # batches (measured: 109 of 123 steps). The last step checkpoint stands instead.
        done = trainer.fit_loop.epoch_loop.batch_progress.current.completed
        if done < trainer.num_training_batches:
            return
        self._save(trainer)


class WarmupEMADecay:
    """EMA update with a decay that grows with the number of updates n (as in TensorFlow's and
    timm's EMA): d_n = min(decay, (1 + n) / (10 + n)). Early averages therefore follow the
    weights closely instead of staying near the random initial ones (with a fixed 0.995, 79 % of
    the average is still the initial weights after 48 steps); d_n reaches 0.995 after about
    1,800 updates. A class, not a closure, so the callback pickles (DDP spawn, SLURM)."""

    def __init__(self, decay: float, warmup: bool = True):
        self.decay, self.warmup = float(decay), bool(warmup)

    def __call__(self, averaged: torch.Tensor, current: torch.Tensor, num_averaged) -> torch.Tensor:
        if not averaged.is_floating_point() or torch.equal(averaged, current):
            # Integer buffers (mace's atomic_numbers, the cutoff exponent) are not weights:
            # averaging them in floating point and truncating back turned Z = 9 into 8. Constant
            # float buffers (E0s, loss scales, CG tables) must stay bit-exact too: d x + (1-d) x
            # is x only up to rounding, and the drift broke bit-exact resume.
            return current
        n = float(num_averaged)
        d = min(self.decay, (1.0 + n) / (10.0 + n)) if self.warmup else self.decay
        return averaged * d + current * (1.0 - d)


class EMA(EMAWeightAveraging):
    """Lightning's EMA of the weights, with a warm-up decay and *one set of weights* everywhere.

    - During fit, validation runs on the averaged weights (Lightning swaps them in), and every
      checkpoint's ``state_dict`` holds the averaged weights (the live ones ride along under
      ``current_model_state`` for resuming), so checkpoint selection, early stopping, the
      plateau schedule and sweeps judge the averaged weights.
    - Outside fit (``trainer.validate``/``test`` with a checkpoint, after training), Lightning's
      callback would load the checkpoint's *live* weights and swap the average in only for
      validation: validation and test would then see different weights, and the exported model
      the live ones. Here a checkpoint loaded outside fit keeps its ``state_dict`` (the average)
      and nothing is swapped, so validation, test and the exported ``model.pt`` use the same
      (averaged) weights. After fit the module holds the final average (Lightning's
      ``on_train_end``).
    - ``warmup=True``: the decay grows with the step count (:class:`WarmupEMADecay`).
    - Integer buffers (the element table) are copied, never averaged: Lightning's averaging
      function rounds them down through floating point and corrupted the exported element table.
    """

    def __init__(self, decay: float = 0.995, warmup: bool = True, **kwargs):
        super().__init__(decay=decay, **kwargs)
        self._kwargs["avg_fn"] = WarmupEMADecay(decay, warmup)
        self.decay, self.warmup = float(decay), bool(warmup)

    @staticmethod
    def _fitting(trainer) -> bool:
        return trainer.state.fn == TrainerFn.FITTING

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        if self._fitting(trainer):
            super().on_validation_epoch_start(trainer, pl_module)

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if self._fitting(trainer):
            super().on_validation_epoch_end(trainer, pl_module)

    def on_load_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        if self._fitting(trainer):  # resuming: restore both the average and the live weights
            super().on_load_checkpoint(trainer, pl_module, checkpoint)


# ---------------------------------------------------------------------- progress
SHORT_NAMES = {"energy": "E", "forces": "F", "stress": "S", "polarisation": "P", "becs_diag": "Z*",
               "becs_offdiag": "Z*_od", "polarisability_diag": "alpha", "polarisability_offdiag": "alpha_od",
               "n": "n"}


def format_duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


def progress_items(metrics, steps_done: int, steps_left: float, elapsed_s: float,
                   time_left_s=None) -> dict:
    """What the progress bar adds to Lightning's: the last validation RMSE of every quantity
    (``E``, ``F``, ``Z*``, ... from ``metrics``, in the metric units of ``metrics.json``;
    ``<dataset>:`` first when there are several) and the whole run's ETA (``run ETA``: from this
    process's rate over ``steps_done``; at most, early stopping may end the run sooner;
    ``time_left_s`` of ``max_time`` caps it)."""
    import re

    items = {}
    rmse = {}
    for key, value in metrics.items():
        m = re.fullmatch(r"val/([^/]+)/(\w+)_rmse", key)
        if m:
            rmse[(m.group(1), m.group(2))] = float(value)
    several = len({d for d, _ in rmse}) > 1
    for (dataset, q), v in sorted(rmse.items()):
        items[f"{dataset}:" * several + SHORT_NAMES.get(q, q)] = f"{v:.3g}"
    if steps_done > 0 and math.isfinite(steps_left) and steps_left > 0:
        remaining = elapsed_s / steps_done * steps_left
        if time_left_s is not None:
            remaining = min(remaining, time_left_s)
        items["run ETA"] = format_duration(remaining)
    return items


def run_progress_bar():
    """Lightning's own progress bar (rich where installed, as Lightning chooses) with
    :func:`progress_items` added to its metrics."""
    import time

    from pytorch_lightning.callbacks import RichProgressBar, Timer, TQDMProgressBar

    try:
        import rich  # noqa: F401

        base = RichProgressBar
    except ImportError:
        base = TQDMProgressBar

    class RunProgressBar(base):
        def on_train_start(self, trainer, pl_module):
            self._started, self._steps_before = time.time(), trainer.global_step  # a resume: its own rate
            super().on_train_start(trainer, pl_module)

        def get_metrics(self, trainer, pl_module):
            items = dict(super().get_metrics(trainer, pl_module))
            items.pop("v_num", None)
            if getattr(self, "_started", None) is not None:
                timer = next((c for c in trainer.callbacks if isinstance(c, Timer) and c._duration), None)
                items.update(progress_items(
                    trainer.callback_metrics, trainer.global_step - self._steps_before,
                    trainer.estimated_stepping_batches - trainer.global_step, time.time() - self._started,
                    timer.time_remaining("train") if timer is not None else None))
            return items

    return RunProgressBar()
