"""Lightning DataModules, one per data source, on a shared base."""

# mf_lightning first: its _deps imports mace and e3nn in the order they need and keeps the
# user's TORCH_FORCE_* setting (mf_lightning.data.datamodules.base imports mace's DataLoader)
import mf_lightning._deps  # noqa: F401, I001  isort: skip
from mf_lightning.data.datamodules.base import FieldDataModule
from mf_lightning.data.datamodules.multi import MultiSourceDataModule
from mf_lightning.data.datamodules.sources import (
    FerroelectricPathsDataModule,
    MDTrajectoryDataModule,
    MPDielectricDataModule,
    ReplayDataModule,
)

__all__ = ["FieldDataModule", "MPDielectricDataModule", "FerroelectricPathsDataModule",
           "MDTrajectoryDataModule", "ReplayDataModule", "MultiSourceDataModule"]
