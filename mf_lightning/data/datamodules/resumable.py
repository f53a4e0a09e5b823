"""A training DataLoader that resumes mid-epoch.

Lightning saves the ``state_dict`` of a "stateful" loader in every checkpoint and hands it back
through ``load_state_dict`` before iterating again. Ours records how many batches of the current
epoch the trainer had processed when the checkpoint was written (read from the trainer's own
progress counters, so Lightning's one-batch prefetch does not matter); the next iteration of
that epoch skips exactly those batches. The order itself is a function of (seed, epoch) (see
:func:`mf_lightning.data.datamodules.replay.epoch_generator`), so a run killed at any step and resumed from its
last checkpoint sees the same batches in the same order as an uninterrupted one.
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Tuple

from mace.tools.torch_geometric.dataloader import DataLoader


class ResumableDataLoader(DataLoader):
    def __init__(self, *args, progress: Optional[Callable[[], Tuple[int, int, float]]] = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.progress = progress  # () -> (epoch, batches processed in it, batches the epoch runs)
        self.skip = 0

    def __iter__(self):
        iterator = super().__iter__()
        skip, self.skip = self.skip, 0
        for _ in range(skip):
            next(iterator)
        return iterator

    def state_dict(self) -> dict:
        """The epoch and how many of its batches were processed; 0 once the epoch's training
        batches are all done (a checkpoint written at the epoch's end, before Lightning counts
        the epoch as complete, must not make the *next* epoch skip anything)."""
        epoch, processed, per_epoch = self.progress() if self.progress is not None else (0, 0, math.inf)
        return {"epoch": int(epoch), "processed": int(processed) if processed < per_epoch else 0}

    def load_state_dict(self, state: dict) -> None:
        """Skip the batches done if the checkpoint is from the epoch being resumed (Lightning has
        restored the trainer's epoch before it calls this)."""
        if self.progress is None:
            return
        epoch, _, _ = self.progress()
        processed = int(state.get("processed", 0))
        if int(state.get("epoch", -1)) == epoch and 0 < processed < len(self):
            self.skip = processed
