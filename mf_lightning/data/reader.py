"""Reading labelled structures from extended XYZ (or anything ``ase.io`` reads).

Which key in the file means which quantity, and its unit, is configuration (``conf/data``),
e.g. ``{"becs": {"key": "REF_becs", "unit": "e"}}``. Labels are looked up explicitly in
``atoms.info``, ``atoms.arrays`` *and* ``atoms.calc.results``: ASE moves ``forces``, ``stress``
and ``polarization`` of some files (e.g. alpha-quartz) into the calculator results, where
mace's ``config_from_atoms`` never looks, which would silently drop those labels.

Every problem raises :class:`DataError` naming the file, the frame and the key.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional

import numpy as np

from mf_lightning.data.units import SHAPES, check_unit, to_internal, voigt6_to_3x3

VOLUME_LABELS = {"stress", "polarisation", "polarisability", "becs"}


class DataError(ValueError):
    """Bad input data; the message names file, frame and key."""

    def __init__(self, path, frame: Optional[int], key: Optional[str], reason: str):
        where = str(path)
        if frame is not None:
            where += f": frame {frame}"
        if key is not None:
            where += f": key {key!r}"
        super().__init__(f"{where}: {reason}")
        self.path, self.frame, self.key, self.reason = str(path), frame, key, reason


@dataclass
class Record:
    """One structure with its labels in internal units and shapes."""

    atoms: Any
    labels: Dict[str, np.ndarray]
    electric_field: np.ndarray
    file: str
    frame: int
    meta: Dict[str, Any] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return f"{Path(self.file).name}:{self.frame}"


def reduced_formula(atoms) -> str:
    """Empirical formula, e.g. 'GeSe' for Ge4Se4 (ASE's mode='reduce' only groups symbols)."""
    return str(atoms.symbols.formula.reduce()[0])


def parse_label_spec(spec: Optional[Mapping[str, Any]]) -> Dict[str, Dict[str, str]]:
    """Validate ``{quantity: {key, unit}}`` (unknown quantities / units are errors)."""
    out = {}
    for quantity, entry in (spec or {}).items():
        if entry is None:
            continue
        if "key" not in entry or "unit" not in entry:
            raise ValueError(f"label spec for {quantity!r} needs 'key' and 'unit', got {dict(entry)}")
        check_unit(quantity, entry["unit"])
        out[quantity] = {"key": str(entry["key"]), "unit": str(entry["unit"])}
    return out


def _lookup(atoms, key: str):
    if key in atoms.arrays:
        return atoms.arrays[key]
    if key in atoms.info:
        return atoms.info[key]
    calc = getattr(atoms, "calc", None)
    if calc is not None and key in getattr(calc, "results", {}):
        return calc.results[key]
    return None


_SEP = re.compile(r"[,\s;]+")


def _as_array(value) -> np.ndarray:
    if isinstance(value, str):  # e.g. "0.3, 0.3, 0.3" left unparsed
        parts = [p for p in _SEP.split(value.strip().strip("[]()")) if p]
        return np.array([float(p) for p in parts], dtype=float)
    return np.asarray(value, dtype=float)


def _shape_label(quantity: str, raw: np.ndarray, n_atoms: int) -> np.ndarray:
    shape, per_atom = SHAPES[quantity]
    size = int(np.prod(shape)) if shape else 1
    if per_atom:
        if raw.size != n_atoms * size:
            raise ValueError(f"expected {n_atoms} x {size} values (per atom), got shape {raw.shape}")
        return raw.reshape((n_atoms,) + shape)
    flat = raw.reshape(-1)
    if quantity == "stress" and flat.size == 6:
        return voigt6_to_3x3(flat)
    if flat.size != size:
        raise ValueError(f"expected {size} values, got {flat.size} (shape {raw.shape})")
    return flat.reshape(shape) if shape else flat.reshape(())


def _check_cell(path, frame, atoms, needs_volume: bool) -> float:
    cell = np.asarray(atoms.get_cell().array, dtype=float)
    if not np.all(np.isfinite(cell)):
        raise DataError(path, frame, "Lattice", "cell has NaN/inf entries")
    volume = abs(float(np.linalg.det(cell)))
    if needs_volume:
        if not all(atoms.get_pbc()):
            raise DataError(path, frame, "pbc", "stress/P/Z*/alpha labels need a structure periodic in 3D")
        if volume < 1e-6:
            raise DataError(path, frame, "Lattice", f"cell is missing or singular (volume {volume:.3g} A^3)")
    return volume


def iter_frames(path) -> Iterator[tuple[int, Any]]:
    """``ase.io.iread`` with errors turned into :class:`DataError` naming the frame."""
    import ase.io

    path = Path(path)
    if not path.is_file():
        raise DataError(path, None, None, "no such file")
    if path.stat().st_size == 0:
        raise DataError(path, None, None, "no structures in file (empty)")
    frame = 0
    it = ase.io.iread(str(path), index=":")
    while True:
        try:
            atoms = next(it)
        except StopIteration:
            break
        except Exception as exc:  # noqa: BLE001 - ASE raises many types for malformed text
            raise DataError(path, frame, None, f"malformed or truncated structure ({type(exc).__name__}: {exc})") from exc
        yield frame, atoms
        frame += 1
    if frame == 0:
        raise DataError(path, None, None, "no structures in file")


def read_records(
    path,
    labels: Optional[Mapping[str, Any]] = None,
    electric_field: Optional[Mapping[str, Any]] = None,
    meta_keys: tuple = (),
    required: Optional[List[str]] = None,
) -> List[Record]:
    """Read every frame of ``path`` with the labels of ``labels`` in internal units.

    ``electric_field``: ``{"key": ..., "unit": ...}`` to read it per frame, or
    ``{"value": [Ex, Ey, Ez]}`` (V/A) for a fixed value (default zero field).
    A label missing from a frame is simply absent (its loss weight will be 0) unless its
    quantity is in ``required``.
    """
    spec = parse_label_spec(labels)
    field_spec = dict(electric_field or {"value": [0.0, 0.0, 0.0]})
    if "key" in field_spec and "value" in field_spec:
        raise ValueError(f"electric_field spec has both 'key' and 'value' ({field_spec}): give one")
    if "key" in field_spec:
        check_unit("electric_field", field_spec.get("unit", "V/A"))
    required = set(required or [])
    records: List[Record] = []
    for frame, atoms in iter_frames(path):
        n = len(atoms)
        if n == 0:
            raise DataError(path, frame, None, "empty frame (0 atoms)")
        pos = atoms.get_positions()
        if not np.all(np.isfinite(pos)):
            raise DataError(path, frame, "pos", "positions have NaN/inf entries")
        present = {q: s for q, s in spec.items() if _lookup(atoms, s["key"]) is not None}
        missing = required - set(present)
        if missing:
            raise DataError(path, frame, spec[sorted(missing)[0]]["key"], "required label missing")
        volume = _check_cell(path, frame, atoms, needs_volume=bool(VOLUME_LABELS & set(present)))
        out = {}
        for quantity, s in present.items():
            try:
                raw = _as_array(_lookup(atoms, s["key"]))
                value = _shape_label(quantity, raw, n)
            except ValueError as exc:
                raise DataError(path, frame, s["key"], f"cannot read {quantity}: {exc}") from exc
            if not np.all(np.isfinite(value)):
                raise DataError(path, frame, s["key"], f"{quantity} has NaN/inf values")
            out[quantity] = to_internal(quantity, s["unit"], value, volume)
        if "value" in field_spec:
            field = np.asarray(field_spec["value"], dtype=float)
        else:
            raw = _lookup(atoms, field_spec["key"])
            if raw is None:
                field = np.zeros(3)
            else:
                try:
                    field = _shape_label("electric_field", _as_array(raw), n)
                except ValueError as exc:
                    raise DataError(path, frame, field_spec["key"], f"cannot read electric field: {exc}") from exc
                field = to_internal("electric_field", field_spec.get("unit", "V/A"), field, volume)
        if field.shape != (3,) or not np.all(np.isfinite(field)):
            raise DataError(path, frame, field_spec.get("key", "electric_field"), f"field must be 3 finite numbers, got {field}")
        meta = {k: atoms.info[k] for k in meta_keys if k in atoms.info}
        records.append(Record(atoms=atoms, labels=out, electric_field=field, file=str(path), frame=frame, meta=meta))
    return records
