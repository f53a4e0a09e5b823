"""Labelled graphs, built once and cached on disk.

Every graph carries *every* task's label slot (``ref_<task>``) and a per-structure weight
(``weight_<task>``): a label the structure lacks is zeros with weight 0, so batches mixing
dielectric (Z*, alpha), ferroelectric (P) and replay (E, F, S) structures collate, and a missing
label contributes exactly nothing to its loss term (never a NaN).

The cache key is the SHA-256 of the file's bytes plus everything that shapes a graph (cutoff,
element table, heads, label and field specs, format version): a changed file or setting gives a
new key, so stale graphs are never reused. Cache files hold only tensors and plain values and
are read with ``weights_only=True``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
from mace.tools.torch_geometric.data import Data

import mf_lightning._deps  # noqa: F401
from mf_lightning.data import keys
from mf_lightning.data.graphs import atoms_to_graph
from mf_lightning.data.keys import ref_key, weight_key
from mf_lightning.data.quantities import QUANTITIES, tasks
from mf_lightning.data.reader import Record
from mf_lightning.files import FileLock, atomic_torch_save, atomic_write_text
from mf_lightning.files import sha256_of as file_sha256

CACHE_FORMAT = 3  # bump when what a cached graph list holds changes (3: paths ordered per (non-polar, polar) pair)


def record_to_graph(record: Record, atomic_numbers: Sequence[int], r_max: float,
                    heads: Sequence[str], head: str) -> Data:
    """A labelled graph: mace's AtomicData fields plus ``ref_*``/``weight_*`` for every task."""
    g = atoms_to_graph(record.atoms, atomic_numbers, r_max, heads=heads, head=head,
                       electric_field=record.electric_field, source=record.id)
    d = {k: v for k, v in g.to_dict().items() if v is not None}
    n = len(record.atoms)
    d["num_nodes"] = n  # batching offsets edge_index by it; a plain Data cannot infer it
    for task in tasks():
        q = QUANTITIES[task]
        shape, lead = q.shape, ((n,) if q.per_atom else (1,))
        value = record.labels.get(task)
        if value is None:
            d[ref_key(task)] = torch.zeros(lead + shape, dtype=torch.float64)
            d[weight_key(task)] = torch.zeros(1, dtype=torch.float64)
        else:
            d[ref_key(task)] = torch.as_tensor(np.asarray(value), dtype=torch.float64).reshape(lead + shape)
            d[weight_key(task)] = torch.ones(1, dtype=torch.float64)
    return Data(**d)


def cache_key(path, **settings: Any) -> str:
    blob = json.dumps({"file": file_sha256(path), "format": CACHE_FORMAT, **settings}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def pack(dicts: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Graph dicts -> one concatenated tensor per key (+ lengths). The weights-only unpickler
    costs ~0.1 ms per tensor, so 600 graphs x 40 tensors each would take seconds to load."""
    packed: Dict[str, Any] = {"n": len(dicts)}
    for k in sorted({k for d in dicts for k in d}):
        values = [d[k] for d in dicts]
        if all(isinstance(v, int) for v in values):
            packed[k] = ("int", torch.tensor(values, dtype=torch.int64))
        elif all(torch.is_tensor(v) and v.dim() == 0 for v in values):
            packed[k] = ("stack", torch.stack(values))
        elif all(torch.is_tensor(v) and v.dim() > 0 for v in values):
            lengths = torch.tensor([v.shape[0] for v in values], dtype=torch.int64)
            # edge_index is (2, n_edges): concatenate along its last axis
            dim = 1 if k == keys.EDGE_INDEX else 0
            if dim == 1:
                lengths = torch.tensor([v.shape[1] for v in values], dtype=torch.int64)
            packed[k] = ("cat", torch.cat(values, dim=dim), lengths, dim)
        else:
            raise TypeError(f"cannot cache graph field {k!r}")
    return packed


def unpack(packed: Dict[str, Any]) -> List[Dict[str, Any]]:
    n = packed["n"]
    out: List[Dict[str, Any]] = [{} for _ in range(n)]
    for k, entry in packed.items():
        if k == "n":
            continue
        kind = entry[0]
        if kind == "int":
            for d, v in zip(out, entry[1].tolist()):
                d[k] = int(v)
        elif kind == "stack":
            for d, v in zip(out, entry[1].unbind(0)):
                d[k] = v
        else:
            _, flat, lengths, dim = entry
            for d, v in zip(out, flat.split(lengths.tolist(), dim=dim)):
                d[k] = v
    return out


class GraphCache:
    """``<cache_dir>/<key>.pt``: a list of graph dicts. ``hits``/``misses`` count uses."""

    def __init__(self, cache_dir: Optional[str]):
        self.dir = Path(cache_dir) if cache_dir else None
        self.hits = 0
        self.misses = 0
        self.last_info: Dict[str, Any] = {}

    def load(self, key: str) -> Optional[List[Data]]:
        if self.dir is None:
            return None
        path = self.dir / f"{key}.pt"
        if not path.is_file():
            return None
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
            graphs = [Data(**d) for d in unpack(payload["graphs"])]
        except Exception:  # noqa: BLE001 - a corrupt cache entry is rebuilt, never trusted
            return None
        self.hits += 1
        self.last_info = payload["info"]
        return graphs

    def store(self, key: str, graphs: List[Data], info: Dict[str, Any]) -> None:
        self.misses += 1
        if self.dir is None:
            return
        payload = {"format": CACHE_FORMAT, "info": info,
                   "graphs": pack([{**g.to_dict(), "num_nodes": g.num_nodes} for g in graphs])}
        # sweeps start runs side by side on one cache: two writers of one entry would remove each
        # other's temporary file (atomic_torch_save clears stale ones), so writers take turns
        with FileLock(self.dir / f".{key}.pt.lock", blocking=True):
            atomic_torch_save(payload, self.dir / f"{key}.pt")

    def load_json(self, key: str):
        if self.dir is None or not (self.dir / f"{key}.json").is_file():
            return None
        try:
            return json.loads((self.dir / f"{key}.json").read_text())
        except ValueError:
            return None

    def store_json(self, key: str, value) -> None:
        if self.dir is None:
            return
        atomic_write_text(self.dir / f"{key}.json", json.dumps(value))  # (unique temp: sweeps share the cache)
