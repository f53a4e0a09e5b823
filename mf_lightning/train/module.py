"""The LightningModule: FieldMACE + the multi-task loss + per-dataset metrics + optimiser.

Metrics (names, units, how they are computed) are those of :mod:`mf_lightning.train.metrics`,
summed per dataset over an epoch and reduced over DDP ranks before the RMSE/MAE are formed.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np
import pytorch_lightning as pl
import torch

from mf_lightning.data import keys
from mf_lightning.model.field_mace import FieldMACE
from mf_lightning.train.losses import MultiTaskLoss
from mf_lightning.train.metrics import add_sums, batch_to_dict, error_sums, labelled_tasks, metric_rows, rmse_mae

SCHEDULERS = ("plateau", "cosine", "none")  # module.scheduler (conf/module), checked by config_check


class FieldMACEModule(pl.LightningModule):
    def __init__(
        self,
        model: FieldMACE,
        loss_weights: Mapping[str, float],
        dataset_names: Sequence[str] = ("data",),
        huber_delta: Any = 1.0,
        loss_scales: Optional[Mapping[str, float]] = None,
        lr: float = 1e-2,
        weight_decay: float = 1e-8,
        amsgrad: bool = True,
        scheduler: str = "plateau",
        scheduler_kwargs: Optional[Mapping[str, Any]] = None,
        monitor: str = "val/loss",
        freeze_backbone_epochs: int = 0,
        batched_response: bool = False,
    ):
        super().__init__()
        self.save_hyperparameters(ignore=["model"])
        self.model = model
        # loss_scales: {task: RMS of its training labels} (losses.label_scales); also a buffer of
        # the loss, so a resumed run restores the ones it started with
        self.loss_fn = MultiTaskLoss(loss_weights, huber_delta, scales=loss_scales)
        self.dataset_names = list(dataset_names)
        self._sums: Dict[str, Dict[str, torch.Tensor]] = {}
        self._plateau: Optional[torch.optim.lr_scheduler.ReduceLROnPlateau] = None
        self._plateau_state: Optional[dict] = None  # from a checkpoint, applied when it exists
        self.predictions: Dict[str, Dict[str, List[np.ndarray]]] = defaultdict(lambda: defaultdict(list))

    # ------------------------------------------------------------------ steps
    @property
    def model_dtype(self) -> torch.dtype:
        return self.model.dtype

    def forward(self, batch: Mapping[str, torch.Tensor], properties, training: bool = False):
        return self.model(batch, properties=properties, training=training,
                          batched_response=self.hparams.batched_response)

    def on_train_epoch_start(self) -> None:
        frozen = self.current_epoch < self.hparams.freeze_backbone_epochs
        for p in self.model.backbone.parameters():
            p.requires_grad_(not frozen)

    def training_step(self, batch, batch_idx):
        d = batch_to_dict(batch, self.model_dtype)
        out = self(d, self.loss_fn.properties(d), training=True)
        loss, parts = self.loss_fn(out, d)
        n = int(d[keys.PTR].numel() - 1)
        self.log("train/loss", loss, batch_size=n, prog_bar=True)
        for task, value in parts.items():
            self.log(f"train/{task}", value, batch_size=n)
        return loss

    def _eval_step(self, stage: str, batch, dataloader_idx: int) -> None:
        name = self.dataset_names[dataloader_idx]
        d = batch_to_dict(batch, self.model_dtype)
        with torch.enable_grad():
            out = self(d, self.loss_fn.properties(d) if stage != "test" else self._labelled(d), training=False)
        loss, _ = self.loss_fn(out, d)
        sums = self._sums.setdefault(f"{stage}/{name}", {})
        n = torch.tensor(float(d[keys.PTR].numel() - 1), dtype=torch.float64, device=loss.device)
        sums["loss"] = sums.get("loss", 0) + loss.detach().double() * n
        sums["n"] = sums.get("n", 0) + n
        for _, q, ref, pred, err, w_rows in metric_rows(out, d):
            add_sums(sums, error_sums(err, w_rows), prefix=f"{q}_")
            if stage == "test":  # (reference, prediction) pairs for parity plots
                mask = w_rows > 0
                self.predictions[name][q].append(np.stack([ref[mask].double().cpu().numpy(),
                                                           pred[mask].double().cpu().numpy()]))

    def _labelled(self, d) -> tuple:
        return (keys.ENERGY, *labelled_tasks(d))

    def validation_step(self, batch, batch_idx, dataloader_idx: int = 0):
        self._eval_step("val", batch, dataloader_idx)

    def test_step(self, batch, batch_idx, dataloader_idx: int = 0):
        self._eval_step("test", batch, dataloader_idx)

    def _log_epoch(self, stage: str) -> Dict[str, torch.Tensor]:
        """Log the epoch's metrics (sums reduced over ranks); returns them by name."""
        logged: Dict[str, torch.Tensor] = {}

        def log(name, value, **kw):
            logged[name] = torch.as_tensor(value)
            self.log(name, value, add_dataloader_idx=False, **kw)

        total_loss, total_n = 0.0, 0.0
        for prefix, sums in sorted(self._sums.items()):
            if not prefix.startswith(stage + "/"):
                continue
            reduced = {k: self.trainer.strategy.reduce(torch.as_tensor(v, device=self.device), reduce_op="sum")
                       for k, v in sums.items()}
            total_loss += float(reduced["loss"])
            total_n += float(reduced["n"])
            log(f"{prefix}/loss", reduced["loss"] / reduced["n"], sync_dist=False)
            for k in reduced:
                if k.endswith("_sq"):
                    q = k[:-3]
                    rmse, mae = rmse_mae(reduced, prefix=f"{q}_")
                    log(f"{prefix}/{q}_rmse", rmse)
                    log(f"{prefix}/{q}_mae", mae)
        if total_n > 0:
            log(f"{stage}/loss", total_loss / total_n, prog_bar=stage == "val")
        self._sums = {k: v for k, v in self._sums.items() if not k.startswith(stage + "/")}
        return logged

    def on_fit_start(self) -> None:
        self._fit_t0 = time.perf_counter()

    def on_validation_epoch_end(self) -> None:
        logged = self._log_epoch("val")
        if self.trainer.state.fn == "fit" and hasattr(self, "_fit_t0"):
            # wall time since fit started (this process): learning curves per minute
            self.log("time/elapsed_s", time.perf_counter() - self._fit_t0, add_dataloader_idx=False)
        # The plateau scheduler is stepped here, not by Lightning at the end of the fit epoch:
        # checkpoints written at the epoch's end (ModelCheckpoint) then hold the stepped state,
        # and a run resumed from one does not miss an update (Lightning skips the plateau update
        # of an epoch it restarts from).
        fitting = self.trainer.state.fn == "fit" and not self.trainer.sanity_checking
        if self._plateau is not None and fitting:
            monitor = self.hparams.monitor
            if monitor not in logged:
                raise KeyError(f"scheduler monitor {monitor!r} was not logged; logged: {sorted(logged)}")
            self._plateau.step(float(logged[monitor]))

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test")

    # ------------------------------------------------------------------ optimisation
    def on_save_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        if self._plateau is not None:
            checkpoint["plateau_scheduler"] = self._plateau.state_dict()

    def on_load_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        # applied now if the scheduler exists, else when configure_optimizers builds it
        self._plateau_state = checkpoint.get("plateau_scheduler")
        if self._plateau is not None and self._plateau_state is not None:
            self._plateau.load_state_dict(self._plateau_state)

    def configure_optimizers(self):
        params = [p for p in self.model.parameters()]
        opt = torch.optim.Adam(params, lr=self.hparams.lr, weight_decay=self.hparams.weight_decay,
                               amsgrad=self.hparams.amsgrad)
        kw = dict(self.hparams.scheduler_kwargs or {})
        if self.hparams.scheduler == "none":
            return opt
        if self.hparams.scheduler == "plateau":  # stepped in on_validation_epoch_end
            self._plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=kw.get("factor", 0.8),
                                                                       patience=kw.get("patience", 50))
            if self._plateau_state is not None:
                self._plateau.load_state_dict(self._plateau_state)
            return opt
        if self.hparams.scheduler == "cosine":
            warmup = int(kw.get("warmup_steps", 0))
            total = int(kw.get("total_steps", 0)) or int(self.trainer.estimated_stepping_batches)
            floor = float(kw.get("min_lr_ratio", 0.01))

            def factor(step: int) -> float:
                if step < warmup:
                    return (step + 1) / warmup
                progress = min(1.0, (step - warmup) / max(1, total - warmup))
                return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

            sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
        raise ValueError(f"unknown scheduler {self.hparams.scheduler!r}: {' | '.join(SCHEDULERS)}")

