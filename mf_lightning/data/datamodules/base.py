"""The shared base of every data source: read once (labels in internal units), build graphs
once (disk cache), split without leakage, write the split manifest, serve batches.

Subclasses say only what differs: how structures group for splitting (``group_of``), whether the
split is by group or contiguous in time, and any ordering or metadata of their source.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

import pytorch_lightning as pl
import torch
from mace.tools.torch_geometric.dataloader import DataLoader

from mf_lightning.data.audit import structure_checks
from mf_lightning.data.dataset import GraphCache, cache_key, file_sha256, record_to_graph, ref_key, weight_key
from mf_lightning.data.reader import Record, iter_frames, read_records, reduced_formula
from mf_lightning.data.root import resolve_file
from mf_lightning.data.splits import contiguous_split, group_split, write_manifest
from mf_lightning.files import plain_value

log = logging.getLogger(__name__)


class FieldDataModule(pl.LightningDataModule):
    """Args (all in ``conf/data/*.yaml``):
        file: data file (relative to the data root, or a path). test_file: optional held-out
            file used as the test split directly (then ``test_fraction`` is ignored).
        labels: ``{quantity: {key, unit}}``; electric_field: ``{key, unit}`` or ``{value}``.
        atomic_numbers: the model's element table (default: the elements in the files); a
            structure with another element is an error naming file and frame.
        r_max: graph cutoff (A). heads / head: the model's heads and this source's head.
        val_fraction, test_fraction, seed: the split. batch_size, eval_batch_size, num_workers.
        cache_dir: graph cache (None: no cache). output_dir: where the split manifest goes.
        drop_flagged: drop training structures whose labels fail the audit's single-structure
            checks (Z* acoustic sum rule, alpha symmetry/positivity); the count of flagged
            structures is in the manifest either way.
    """

    split_mode = "group"  # "group" | "contiguous"
    meta_keys: Sequence[str] = ()
    default_name = "data"

    def __init__(
        self,
        file: str,
        labels: Mapping[str, Any],
        electric_field: Optional[Mapping[str, Any]] = None,
        root: Optional[str] = None,
        test_file: Optional[str] = None,
        atomic_numbers: Optional[Sequence[int]] = None,
        r_max: float = 5.0,
        heads: Optional[Sequence[str]] = None,
        head: Optional[str] = None,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        seed: int = 0,
        batch_size: int = 4,
        eval_batch_size: Optional[int] = None,
        num_workers: int = 0,
        cache_dir: Optional[str] = None,
        output_dir: Optional[str] = None,
        drop_flagged: bool = False,
        name: Optional[str] = None,
        labels_required: str = "all",
        test_only: bool = False,
    ):
        super().__init__()
        self.name = name or self.default_name
        self.file, self.test_file, self.root = file, test_file, root
        self.labels = {k: dict(v) for k, v in (labels or {}).items() if v is not None}
        self.electric_field = dict(electric_field) if electric_field else None
        self.atomic_numbers = None if atomic_numbers is None else [int(z) for z in atomic_numbers]
        self.r_max = float(r_max)
        self.heads = list(heads) if heads else ["Default"]
        self.head_given = head is not None  # else MultiSourceDataModule may name one per source
        self.head = head or self.heads[-1]
        self.val_fraction, self.test_fraction, self.seed = val_fraction, test_fraction, int(seed)
        self.batch_size = int(batch_size)
        self.eval_batch_size = int(eval_batch_size or batch_size)
        self.num_workers = int(num_workers)
        self.cache = GraphCache(cache_dir)
        self.output_dir = output_dir
        self.drop_flagged = bool(drop_flagged)
        # "all": every configured label key must occur in the file (a typo'd or wrong key is an
        # error naming the file's keys, not an empty table); "any" for catch-all configs
        self.labels_required = labels_required
        # eval.py on a held-out test_file: read only that file (not the training file)
        self.test_only = bool(test_only)
        self.datasets: Dict[str, List] = {}
        self.meta: Dict[str, List[Dict[str, Any]]] = {}
        self.manifest: Optional[dict] = None

    # ------------------------------------------------------------------ per-source hooks
    def group_of(self, record: Record) -> str:
        """The unit no split may cut (default: the structure itself)."""
        return record.id

    def annotate(self, records: List[Record]) -> List[Record]:
        """Add per-record metadata (e.g. position along a path) and/or reorder the records
        before graphs are built."""
        return records

    # ------------------------------------------------------------------ building
    def _settings(self) -> Dict[str, Any]:
        return {"r_max": self.r_max, "z": self.atomic_numbers, "heads": self.heads, "head": self.head,
                "labels": self.labels, "field": self.electric_field, "meta": list(self.meta_keys),
                "source": type(self).__name__, "labels_required": self.labels_required}

    def _records(self, path: Path) -> List[Record]:
        records = read_records(path, self.labels, self.electric_field, meta_keys=tuple(self.meta_keys),
                               labels_required=self.labels_required)
        return self.annotate(records)

    def load_file(self, path: Path):
        """Graphs and per-structure metadata for one file, from the cache when possible."""
        key = cache_key(path, **self._settings())
        graphs = self.cache.load(key)
        if graphs is not None:
            return graphs, self.cache.last_info["meta"]
        records = self._records(path)
        graphs = [record_to_graph(r, self.atomic_numbers, self.r_max, self.heads, self.head) for r in records]
        meta = [{"id": r.id, "frame": r.frame, "group": self.group_of(r),
                 "formula": reduced_formula(r.atoms), **{k: plain_value(v) for k, v in r.meta.items()}}
                for r in records]
        self.cache.store(key, graphs, {"meta": meta, "file": str(path)})
        return graphs, meta

    def elements(self) -> List[int]:
        """Elements of this source's files (without building graphs)."""
        paths = [resolve_file(self.file, self.root)]
        paths += [resolve_file(self.test_file, self.root)] if self.test_file else []
        return self._element_table(paths)

    def _element_table(self, paths: List[Path]) -> List[int]:
        """Elements present in the files; cached beside the graphs (reading every frame of a
        large file just to learn its elements would defeat the graph cache)."""
        z = set()
        for p in paths:
            key = cache_key(p, kind="elements")
            found = self.cache.load_json(key)
            if found is None:
                found = sorted({int(x) for _, atoms in iter_frames(p) for x in atoms.get_atomic_numbers()})
                self.cache.store_json(key, found)
            z.update(found)
        return sorted(z)

    def setup(self, stage: Optional[str] = None) -> None:
        if self.datasets:
            return
        test_path = resolve_file(self.test_file, self.root) if self.test_file else None
        if self.test_only:
            self._setup_test_only(test_path)
            return
        path = resolve_file(self.file, self.root)
        if self.atomic_numbers is None:
            self.atomic_numbers = self.elements()
        graphs, meta = self.load_file(path)
        test_fraction = 0.0 if test_path else self.test_fraction
        if self.split_mode == "contiguous":
            idx = contiguous_split(len(graphs), self.val_fraction, test_fraction)
        else:
            idx = group_split([m["group"] for m in meta], self.val_fraction, test_fraction, self.seed)
        self.datasets = {s: [graphs[i] for i in ids] for s, ids in idx.items()}
        self.meta = {s: [meta[i] for i in ids] for s, ids in idx.items()}
        files = {"train": str(path), "val": str(path), "test": str(path)}
        if test_path:
            test_graphs, test_meta = self.load_file(test_path)
            self.datasets["test"], self.meta["test"] = test_graphs, test_meta
            files["test"] = str(test_path)
        flagged = [i for i, g in enumerate(self.datasets["train"]) if flags_of(g)]
        flagged_ids = [self.meta["train"][i]["id"] for i in flagged]
        if self.drop_flagged and flagged:
            keep = sorted(set(range(len(self.datasets["train"]))) - set(flagged))
            self.datasets["train"] = [self.datasets["train"][i] for i in keep]
            self.meta["train"] = [self.meta["train"][i] for i in keep]
        self.manifest = {
            "source": type(self).__name__, "name": self.name, "split_mode": self.split_mode,
            "seed": self.seed, "val_fraction": self.val_fraction, "test_fraction": test_fraction,
            "files": files, "sha256": {s: file_sha256(f) for s, f in files.items()},
            "ids": {s: [m["id"] for m in self.meta[s]] for s in self.meta},
            "groups": {s: sorted({str(m["group"]) for m in self.meta[s]}) for s in self.meta},
            "audit": {"flagged_in_train": flagged_ids, "dropped": self.drop_flagged},
        }
        if flagged_ids:
            log.info("%s: %d training structures fail the label audit (%s)", self.name, len(flagged_ids),
                     "dropped" if self.drop_flagged else "kept; data.drop_flagged=true drops them")
        if self.output_dir:
            write_manifest(Path(self.output_dir) / "splits" / f"{self.name}.json", self.manifest)

    def _setup_test_only(self, test_path: Optional[Path]) -> None:
        """Only the held-out ``test_file``, as the test split: the training file is neither read
        nor audited, and the manifest names the file that was evaluated."""
        from mf_lightning.errors import InputError

        if test_path is None:
            raise InputError(f"data source {self.name}: test_only needs data.test_file=<held-out file>")
        if self.atomic_numbers is None:
            self.atomic_numbers = self._element_table([test_path])
        graphs, meta = self.load_file(test_path)
        self.datasets = {"train": [], "val": [], "test": graphs}
        self.meta = {"train": [], "val": [], "test": meta}
        self.manifest = {"source": type(self).__name__, "name": self.name, "files": {"test": str(test_path)},
                         "sha256": {"test": file_sha256(test_path)}, "ids": {"test": [m["id"] for m in meta]}}

    # ------------------------------------------------------------------ loaders
    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        generator = torch.Generator().manual_seed(self.seed)
        return DataLoader(self.datasets[split], batch_size=self.batch_size if shuffle else self.eval_batch_size,
                          shuffle=shuffle, drop_last=False, num_workers=self.num_workers, generator=generator)

    def train_dataloader(self):
        return self._loader("train", shuffle=True)

    def eval_loader(self, split: str, rank: int = 0, world: int = 1) -> DataLoader:
        """``split`` in order; with ``world`` > 1 this rank's share (every world-th structure)."""
        data = self.datasets[split][rank::world] if world > 1 else self.datasets[split]
        return DataLoader(data, batch_size=self.eval_batch_size, shuffle=False, drop_last=False,
                          num_workers=self.num_workers)

    def val_dataloader(self):
        return self.eval_loader("val")

    def test_dataloader(self):
        return self.eval_loader("test")


def flags_of(graph) -> List[str]:
    """Audit flags of one labelled graph (its labels that exist)."""
    becs = graph[ref_key("becs")].numpy() if float(graph[weight_key("becs")]) > 0 else None
    alpha = graph[ref_key("polarisability")][0].numpy() if float(graph[weight_key("polarisability")]) > 0 else None
    return structure_checks(becs, alpha)[1]



