"""One DataModule per data source (SPEC section 4). Keys and units come from conf/data/*.yaml;
these classes hold only what is specific to each source."""

from __future__ import annotations

from typing import List

from mf_lightning.data.datamodules.base import FieldDataModule
from mf_lightning.data.polarisation import order_along_paths, path_id
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

    A path is a (``nonpolar_mpid``, ``polar_mpid``) pair; all frames with one ``polar_mpid``
    (every path ending in that polar structure) share a split. Frames are ordered along their path
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
        return [r for members in order_along_paths(records, path_id).values() for r in members]


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

    def __init__(self, file=None, labels=None, *args, distill=None, **kwargs):
        """``distill``: ``{structures: [files], every: N, head: null}``: with ``file: null``,
        the replay set is those structures labelled at zero field by the source model of a
        fine-tune (:meth:`distill_from`, called by train.py before setup), cached by the
        model's weights and the files, so the paper's fine-tune is one command."""
        super().__init__(file, labels, *args, **kwargs)
        self.distill = dict(distill) if distill else None
        if file is None and not self.distill:
            raise ValueError("replay source: give a file, or distill: {structures: [...]} with a source model")

    def distill_from(self, model, label) -> str:
        """Label ``distill.structures`` with ``model`` (a FieldMACE at zero field: the source
        model) into ``<cache_dir>/replay-<key>.xyz`` unless already there; sets ``self.file``.
        ``label(model, structures, out, every, head=...) -> count`` runs the model
        (:func:`mf_lightning.simulation.distill.distill`): the data layer decides what to label
        and where to cache it, the caller above it brings the simulation."""
        import hashlib
        from pathlib import Path

        from mf_lightning.data.root import resolve_file
        from mf_lightning.data.structures import iter_structures
        from mf_lightning.files import tensor_checksum

        spec = self.distill or {}
        files = [str(resolve_file(f, self.root)) for f in spec.get("structures") or []]
        if not files:
            raise ValueError("replay source: distill.structures lists no structure file")
        every, head = int(spec.get("every", 1)), spec.get("head")
        h = hashlib.sha256(tensor_checksum(model.state_dict()).encode())
        for f in files:
            h.update(f"{f}:{Path(f).stat().st_size}:{Path(f).stat().st_mtime_ns}".encode())
        h.update(f"{every}:{head}".encode())
        folder = self.cache.dir or Path(self.output_dir or ".")
        out = Path(folder) / f"replay-{h.hexdigest()[:16]}.xyz"
        if not out.is_file():
            n = label(model, iter_structures(files), out, every, head=head)
            if n == 0:
                raise ValueError(f"replay source: no structure of {files} could be labelled (see {out}.errors.csv)")
        self.file = str(out)
        return self.file

    def setup(self, stage=None) -> None:
        if self.file is None:
            raise ValueError("replay source: distill needs a source model to label its structures "
                             "(model.source), or give data.sources.replay.file")
        super().setup(stage)
