"""Replay mixing: every training batch holds a fixed share of replay structures.

Fine-tuning on response data (Z*, alpha, P) alone lets energies and forces drift; mixing in
structures with E/F/S labels (a real replay file, or structures labelled by the source model
itself, see :mod:`mf_lightning.simulation.distill`) keeps them. The sampler is seeded by (seed, epoch),
so a resumed run draws exactly the batches of an uninterrupted one.
"""

from __future__ import annotations

import math
from typing import Iterator, List

import torch


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The training order of an epoch is drawn from (seed, epoch) only, so a run resumed at
    that epoch draws exactly the batches an uninterrupted run draws."""
    return torch.Generator().manual_seed(int(seed) * 100003 + int(epoch))


class ReplayBatchSampler(torch.utils.data.Sampler):
    """Batches over ``ConcatDataset([main, replay])``; an epoch is one pass over the main set.

    ``per="batch"``: every batch has ``round(replay_fraction * batch_size)`` replay items (drawn
    without replacement, cycling) and the rest from the main set.
    ``per="epoch"``: the epoch holds ``replay_fraction`` replay items overall (the main set plus
    ``f/(1-f) * n_main`` replay items, cycling), shuffled together, so batches vary in mix.
    """

    def __init__(self, n_main: int, n_replay: int, batch_size: int, replay_fraction: float, seed: int = 0,
                 per: str = "batch"):
        if per not in ("batch", "epoch"):
            raise ValueError(f"replay mixing is per 'batch' or per 'epoch', got {per!r}")
        self.per = per
        if not 0.0 <= replay_fraction < 1.0:
            raise ValueError(f"replay_fraction must be in [0, 1), got {replay_fraction}")
        if n_replay == 0 and replay_fraction > 0:
            raise ValueError("replay_fraction > 0 but the replay set is empty")
        self.n_main, self.n_replay = int(n_main), int(n_replay)
        self.batch_size = int(batch_size)
        self.k_replay = int(round(replay_fraction * batch_size)) if n_replay else 0
        self.k_main = self.batch_size - self.k_replay
        if self.k_main < 1:
            raise ValueError("replay_fraction leaves no room for fine-tuning data in a batch")
        self.seed, self.epoch = int(seed), 0
        self.n_epoch_replay = int(round(replay_fraction / (1 - replay_fraction) * n_main)) if n_replay else 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        if self.per == "epoch":
            return math.ceil((self.n_main + self.n_epoch_replay) / self.batch_size)
        return math.ceil(self.n_main / self.k_main)

    def _replay_draws(self, g: torch.Generator, count: int) -> List[int]:
        out: List[int] = []
        while len(out) < count:
            out += (torch.randperm(self.n_replay, generator=g) + self.n_main).tolist()
        return out[:count]

    def __iter__(self) -> Iterator[List[int]]:
        g = epoch_generator(self.seed, self.epoch)
        main = torch.randperm(self.n_main, generator=g).tolist()
        if self.per == "epoch":
            pool = main + self._replay_draws(g, self.n_epoch_replay)
            order = torch.randperm(len(pool), generator=g).tolist()
            pool = [pool[i] for i in order]
            for b in range(len(self)):
                yield pool[b * self.batch_size:(b + 1) * self.batch_size]
            return
        replay: List[int] = []
        for b in range(len(self)):
            batch = main[b * self.k_main:(b + 1) * self.k_main]
            for _ in range(self.k_replay):
                if not replay:
                    replay = (torch.randperm(self.n_replay, generator=g) + self.n_main).tolist()
                batch.append(replay.pop())
            yield batch
