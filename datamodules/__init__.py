"""Lightning DataModules, one per data source, on a shared base."""

# mf_lightning first: its _deps imports mace and e3nn in the order they need and keeps the
# user's TORCH_FORCE_* setting (datamodules.base imports mace's DataLoader)
import mf_lightning  # noqa: F401, I001  isort: skip
from datamodules.base import FieldDataModule
from datamodules.multi import MultiSourceDataModule
from datamodules.sources import (
    FerroelectricPathsDataModule,
    MDTrajectoryDataModule,
    MPDielectricDataModule,
    ReplayDataModule,
)

__all__ = ["FieldDataModule", "MPDielectricDataModule", "FerroelectricPathsDataModule",
           "MDTrajectoryDataModule", "ReplayDataModule", "MultiSourceDataModule"]
