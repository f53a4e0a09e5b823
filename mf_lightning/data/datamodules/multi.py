"""Several data sources trained together (e.g. dielectric + ferroelectric + replay heads).

One element table for all sources (the model has one), the training sets concatenated and
shuffled with a generator derived from ``seed`` and the epoch (so a resumed run draws the same
batches), and one validation / test loader per source, named, so metrics read
``val/<source>/<quantity>_rmse``.
"""

from __future__ import annotations

from typing import Dict, List, Mapping, Optional

import pytorch_lightning as pl
import torch
from torch.utils.data import ConcatDataset

from mf_lightning.data.datamodules.base import FieldDataModule
from mf_lightning.data.datamodules.replay import ReplayBatchSampler, epoch_generator
from mf_lightning.data.datamodules.resumable import ResumableDataLoader


class EpochSeededSampler(torch.utils.data.Sampler):
    """A permutation drawn from (seed, epoch): deterministic, and resumable from the epoch.

    Under data parallelism (``world`` > 1) rank r takes every world-th index of that one
    permutation, starting at r (padded by wrapping so every rank has as many), so the union of
    the ranks' k-th batches of size b is exactly the single-process k-th batch of size world*b:
    DDP with the same global batch trains on the same structures in the same order."""

    def __init__(self, n: int, seed: int, rank: int = 0, world: int = 1):
        self.n, self.seed, self.epoch = n, int(seed), 0
        self.rank, self.world = int(rank), int(world)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self):
        order = torch.randperm(self.n, generator=epoch_generator(self.seed, self.epoch)).tolist()
        if self.world > 1:
            order += order[: len(self) * self.world - self.n]
            order = order[self.rank::self.world]
        return iter(order)

    def __len__(self) -> int:
        return -(-self.n // self.world)


class MultiSourceDataModule(pl.LightningDataModule):
    def __init__(self, sources: Mapping[str, FieldDataModule], batch_size: int = 4, seed: int = 0,
                 atomic_numbers: Optional[List[int]] = None, num_workers: int = 0,
                 replay: Optional[str] = None, replay_fraction: float = 0.0, replay_per: str = "batch"):
        """``replay``: the name of the source used as replay; with ``replay_fraction`` > 0 each
        training batch holds that share of replay structures (:class:`ReplayBatchSampler`),
        (``replay_per="batch"``) or of each epoch (``"epoch"``), see :class:`ReplayBatchSampler`;
        otherwise all training sets are simply concatenated and shuffled."""
        super().__init__()
        if replay is not None and replay not in sources:
            raise ValueError(f"replay source {replay!r} is not among the sources {list(sources)}")
        self.replay, self.replay_fraction, self.replay_per = replay, float(replay_fraction), replay_per
        self.sources: Dict[str, FieldDataModule] = dict(sources)
        for name, src in self.sources.items():
            src.name = name
            if len(self.sources) > 1 and not src.head_given:
                src.head = name  # one head per data source (replay, dielectric, ...), as in the paper
        self.batch_size, self.seed, self.num_workers = int(batch_size), int(seed), int(num_workers)
        self.atomic_numbers = atomic_numbers
        self.sampler: Optional[EpochSeededSampler] = None
        self.fixed_heads: Optional[List[str]] = None  # an upgraded model's heads, if any

    @property
    def names(self) -> List[str]:
        return list(self.sources)

    @property
    def heads(self) -> List[str]:
        if self.fixed_heads is not None:
            return list(self.fixed_heads)
        heads = []
        for src in self.sources.values():
            if src.head not in heads:
                heads.append(src.head)
        return heads

    def setup(self, stage: Optional[str] = None) -> None:
        if self.atomic_numbers is None:
            table = set()
            for src in self.sources.values():
                table |= set(src.atomic_numbers or src.elements())
            self.atomic_numbers = sorted(table)
        for src in self.sources.values():
            src.atomic_numbers = list(self.atomic_numbers)
            src.heads = self.heads
            src.setup(stage)
        # every graph gets an integer serial (it batches as a tensor; not named *index*, which
        # torch_geometric would offset by node counts) into ``structure_ids``, so a
        # batch can be named, e.g. by the non-finite-loss guard
        self.structure_ids: List[str] = []
        for name, src in self.sources.items():
            for split in ("train", "val", "test"):
                for g, m in zip(src.datasets[split], src.meta[split]):
                    g.structure_serial = len(self.structure_ids)
                    self.structure_ids.append(f"{name}/{m['id']}")

    def train_graphs(self) -> List:
        return [g for src in self.sources.values() for g in src.datasets["train"]]

    def _progress(self):
        """(epoch, batches the trainer has processed in it, batches it runs per epoch, after
        ``limit_train_batches``): what a mid-epoch checkpoint records."""
        if self.trainer is None:
            return 0, 0, float("inf")
        t = self.trainer
        return t.current_epoch, t.fit_loop.epoch_loop.batch_progress.current.processed, t.num_training_batches

    def _rank_world(self):
        if self.trainer is None:
            return 0, 1
        return int(self.trainer.global_rank), int(self.trainer.world_size)

    def train_dataloader(self):
        epoch = self.trainer.current_epoch if self.trainer is not None else 0
        rank, world = self._rank_world()
        if self.replay is not None and self.replay_fraction > 0:
            if world > 1:
                raise NotImplementedError("replay mixing (data.replay_fraction > 0) is not sharded across DDP ranks "
                                          "yet: train it on one device, or set data.replay_fraction=0")
            main = [g for n, src in self.sources.items() if n != self.replay for g in src.datasets["train"]]
            replay = self.sources[self.replay].datasets["train"]
            self.sampler = ReplayBatchSampler(len(main), len(replay), self.batch_size, self.replay_fraction,
                                              self.seed, per=self.replay_per)
            self.sampler.set_epoch(epoch)
            return ResumableDataLoader(ConcatDataset([main, replay]), batch_sampler=self.sampler,
                                       num_workers=self.num_workers, progress=self._progress)
        dataset = ConcatDataset([src.datasets["train"] for src in self.sources.values()])
        self.sampler = EpochSeededSampler(len(dataset), self.seed, rank=rank, world=world)
        self.sampler.set_epoch(epoch)
        return ResumableDataLoader(dataset, batch_size=self.batch_size, sampler=self.sampler, drop_last=False,
                                   num_workers=self.num_workers, progress=self._progress)

    # evaluation: each rank takes every world-th structure (no padding, so no structure is counted
    # twice; the module sums its metric accumulators over ranks)
    def val_dataloader(self):
        return [src.eval_loader("val", *self._rank_world()) for src in self.sources.values()]

    def test_dataloader(self):
        return [src.eval_loader("test", *self._rank_world()) for src in self.sources.values()]
