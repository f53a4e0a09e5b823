"""One DataModule per data source (SPEC section 4). Keys and units come from conf/data/*.yaml;
these classes hold only what is specific to each source."""

from __future__ import annotations

from typing import List

from datamodules.base import FieldDataModule
from mf_lightning.data.polarisation import path_coordinates
from mf_lightning.data.reader import Record, reduced_formula


class MPDielectricDataModule(FieldDataModule):
    """MP-Dielectric (DFPT Z* and alpha). The file carries no material id, so a *material* is its
    reduced formula: polymorphs of one compound share a split (the conservative choice: no
    near-duplicate chemistry on both sides). Labels: Z* (e); alpha from ``REF_polarisability``,
    which is chi/(4 pi) in this file, converted with alpha = 4 pi eps0 * value."""

    default_name = "mp_dielectric"

    def group_of(self, record: Record) -> str:
        return reduced_formula(record.atoms)


class FerroelectricPathsDataModule(FieldDataModule):
    """Smidt et al. non-polar -> polar distortion paths (Berry-phase P, already on a branch).

    All frames of one path (``polar_mpid``) share a split, and sit together in it. Frames are
    ordered along their path
    by the interpolation coordinate: fractional coordinates (minimum image, relative to the
    path's first frame) projected on the path's principal direction, oriented so that |P| grows
    towards the polar end. The coordinate is stored as ``path_position`` (0 = non-polar end).
    """

    default_name = "ferroelectric"
    meta_keys = ("polar_mpid", "nonpolar_mpid")

    def group_of(self, record: Record) -> str:
        return str(record.meta.get("polar_mpid", record.id))

    def annotate(self, records: List[Record]) -> List[Record]:
        """Paths in order of first appearance, each path's frames ordered non-polar -> polar."""
        by_path = {}
        for r in records:
            by_path.setdefault(self.group_of(r), []).append(r)
        ordered = []
        for members in by_path.values():
            for r, s in zip(members, path_coordinates(members)):
                r.meta["path_position"] = float(s)
            ordered += sorted(members, key=lambda r: r.meta["path_position"])
        return ordered


class MDTrajectoryDataModule(FieldDataModule):
    """Single-material MD (BaTiO3, alpha-quartz): E, F, S, P, Z*, alpha. A time series, so the
    split is contiguous in time (train = first part). The field of every frame is a configured
    value (default 0): the labels are zero-field linear response, whatever the file's
    ``REF_electric_field`` says (BaTiO3 writes "0.3, 0.3, 0.3" in every frame)."""

    default_name = "md"
    split_mode = "contiguous"


class ReplayDataModule(FieldDataModule):
    """Replay structures with E/F/S labels (any extxyz / ASE-readable file, e.g. an MPtrj
    subset), so fine-tuning on response data does not forget energies and forces."""

    default_name = "replay"
