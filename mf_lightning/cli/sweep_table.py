"""A Hydra callback that writes the ablation table when a multirun ends (the reducer of a
runner/reducer pair): ``hydra.callbacks.table._target_=mf_lightning.cli.sweep_table.WriteTable``.

It runs :mod:`mf_lightning.analysis.table` on the sweep folder and writes ``table.md``, ``table.csv`` and
``table.tex`` there (test metrics; with ``baseline``, the paired comparison against that row).
The same table by hand: ``mf-table multirun/<sweep> --out <sweep>/table``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger(__name__)


class WriteTable(Callback):
    def __init__(self, baseline: Optional[str] = None, stage: str = "test", stat: str = "rmse",
                 columns: Optional[str] = None):
        self.baseline, self.stage, self.stat, self.columns = baseline, stage, stat, columns

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from mf_lightning.cli import table

        sweep = Path(config.hydra.sweep.dir)
        argv = [str(sweep), "--stage", self.stage, "--stat", self.stat, "--out", str(sweep / "table")]
        if self.baseline:
            argv += ["--baseline", self.baseline]
        if self.columns:
            argv += ["--columns", self.columns]
        code = table.main(argv)
        if code == 0:
            log.info("ablation table: %s (.md, .csv, .tex)", sweep / "table")
