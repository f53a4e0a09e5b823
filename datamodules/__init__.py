"""Lightning DataModules, one per data source, on a shared base."""

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
