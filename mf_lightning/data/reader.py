"""Reading labelled structures from extended XYZ (or anything ``ase.io`` reads).

Which key in the file means which quantity, and its unit, is configuration (``conf/data``),
e.g. ``{"becs": {"key": "REF_becs", "unit": "e"}}``. Labels are looked up explicitly in
``atoms.info``, ``atoms.arrays`` *and* ``atoms.calc.results``: ASE moves ``forces``, ``stress``
and ``polarization`` of some files (e.g. alpha-quartz) into the calculator results, where
mace's ``config_from_atoms`` never looks, which would silently drop those labels.

Every problem raises :class:`DataError` naming the file, the frame and the key.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional

import numpy as np

from mf_lightning.data.graphs import MAX_COORDINATE, geometry_problem
from mf_lightning.data.quantities import QUANTITIES, check_unit, get, to_internal, voigt6_to_3x3
from mf_lightning.errors import InputError


class DataError(InputError, ValueError):
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
        if entry.get("check") is False:  # the magnitude check of PLAUSIBLE, off for this label
            out[quantity]["check"] = False
    return out


# What a label's magnitude must look like in internal units, per structure (median over the
# file): a unit slip (MP-Dielectric's chi/4pi read as e/(V A), x 14 in eps_inf; GPa read as
# eV/A^3; Omega alpha read as alpha) lands far outside. {quantity: (statistic, low, high, what)}
def _eps_inf_mean(alpha: np.ndarray) -> float:
    from mf_lightning.units import EPS0_E_PER_V_A

    a = np.asarray(alpha, float).reshape(3, 3)
    return float(1.0 + np.trace(0.5 * (a + a.T)) / 3.0 / EPS0_E_PER_V_A)


# (a set's median eps_inf above 20 is implausible: PbTe, among the highest, is 33; chi/4pi read
# as e/(V A) gives 1 + 14.4 (eps_inf - 1), above 20 for any set whose median eps_inf exceeds 2.3)
PLAUSIBLE = {
    "polarisability": (_eps_inf_mean, 0.5, 20.0, 3.0, "mean eps_inf = 1 + tr(alpha)/(3 eps0)"),
    "becs": (lambda z: float(np.abs(np.diagonal(np.asarray(z).reshape(-1, 3, 3), axis1=1, axis2=2)).max()),
             0.0, 15.0, 2.0, "largest |Z*| diagonal (e)"),
    "stress": (lambda s: float(np.abs(s).max()), 0.0, 5.0, 0.01, "largest |stress| (eV/A^3; 5 = 800 GPa)"),
    "forces": (lambda f: float(np.sqrt(np.mean(np.square(f)))), 0.0, 50.0, 1.0, "RMS force (eV/A)"),
}


def _check_plausible(path, spec, records) -> None:
    """Refuse labels whose typical magnitude is implausible for their declared unit (median over
    the file's structures, so a few odd ones do not count), naming the units that would be
    plausible: every route (train, eval of a data config or of a plain file) reads a file the
    same way, and a unit slip is one line instead of a 14x error in every metric."""
    for quantity, s in spec.items():
        if quantity not in PLAUSIBLE or s.get("check") is False:
            continue
        statistic, low, high, typical, what = PLAUSIBLE[quantity]
        rows = [(statistic(r.labels[quantity]), r) for r in records if quantity in r.labels]
        if not rows:
            continue
        median = float(np.median([v for v, _ in rows]))
        if low <= median <= high:
            continue
        # the same raw numbers under each other unit this quantity accepts (conversions are linear)
        better = []
        for unit in QUANTITIES[quantity].file_units:
            if unit == s["unit"]:
                continue
            values = []
            for _, r in rows:
                volume = abs(float(np.linalg.det(r.atoms.get_cell().array))) if all(r.atoms.pbc) else 0.0
                try:
                    ratio = float(to_internal(quantity, unit, np.ones(1), volume)[0]
                                  / to_internal(quantity, s["unit"], np.ones(1), volume)[0])
                except (ZeroDivisionError, ValueError, FloatingPointError):
                    continue
                label = r.labels[quantity] * ratio
                if quantity == "polarisability":
                    values.append(_eps_inf_mean(label))
                else:
                    values.append(statistic(label))
            m = float(np.median(values)) if values else float("nan")
            if low <= m <= high:
                better.append((abs(np.log(max(m, 1e-12) / typical)), unit))
        better = [u for _, u in sorted(better)]  # the most typical reading first
        hint = (f"; as {' or '.join(better)} it would be plausible: set data.labels.{quantity}.unit="
                f"{better[0]}" if better else "")
        raise DataError(path, None, s["key"], f"{quantity} read as {s['unit']} gives a median {what} of "
                                              f"{median:.3g}, outside the plausible {low:g}-{high:g}{hint} "
                                              f"(or data.labels.{quantity}.check=false if it is right)")


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
    q = get(quantity)
    shape, per_atom = q.shape, q.per_atom
    size = int(np.prod(shape)) if shape else 1
    if per_atom:
        if raw.size != n_atoms * size:
            raise ValueError(f"expected {n_atoms} x {size} values (per atom), got shape {raw.shape}")
        return raw.reshape((n_atoms,) + shape)
    flat = raw.reshape(-1)
    if q.voigt6 and flat.size == 6:
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


def looks_like_xyz(path: Path) -> bool:
    if path.suffix.lower() not in (".xyz", ".extxyz"):
        return False
    with open(path, "rb") as fh:
        return fh.readline().strip().isdigit()


def extxyz_frames(path: Path) -> Iterator[Any]:
    """Frames of an (ext)xyz file parsed one at a time: ASE's ``iread`` scans every header first,
    so one bad atom-count line at frame 2 was reported as frame 0 and lost frames 0 and 1. Here
    the frames before a bad one are yielded, and the error is raised at the frame it is in."""
    import io

    import ase.io

    with open(path, "r", errors="replace") as fh:
        while True:
            header = fh.readline()
            if not header:
                return
            if not header.strip():
                continue
            try:
                n = int(header.strip())
            except ValueError as exc:
                raise ValueError(f"expected an atom count, got {header.strip()[:60]!r}") from exc
            if n < 0:
                raise ValueError(f"negative atom count {n}")
            body = [fh.readline() for _ in range(n + 1)]
            if not body[-1]:  # readline returns "" only at the end of the file
                raise ValueError(f"file ends inside the frame ({sum(1 for line in body if line)} of {n + 1} lines)")
            yield ase.io.read(io.StringIO(header + "".join(body)), format="extxyz")


def iter_frames(path) -> Iterator[tuple[int, Any]]:
    """``ase.io.iread`` with errors turned into :class:`DataError` naming the frame."""
    import ase.io

    path = Path(path)
    if not path.is_file():
        raise DataError(path, None, None, "no such file")
    if path.stat().st_size == 0:
        raise DataError(path, None, None, "no structures in file (empty)")
    frame = 0
    it = extxyz_frames(path) if looks_like_xyz(path) else ase.io.iread(str(path), index=":")
    while True:
        try:
            atoms = next(it)
        except StopIteration:
            break
        except Exception as exc:  # noqa: BLE001 - ASE raises many types for malformed text
            raise DataError(path, frame, None,
                            f"malformed or truncated structure ({type(exc).__name__}: {exc})") from exc
        yield frame, atoms
        frame += 1
    if frame == 0:
        raise DataError(path, None, None, "no structures in file")


log = logging.getLogger(__name__)

# keys under which files commonly store the applied field: named in a warning when not read
FIELD_KEYS = ("REF_electric_field", "electric_field", "efield", "field")

# Internal values must survive the model's float32: anything beyond is an overflow, not a label.
MAX_VALUE = float(np.finfo(np.float32).max)


def _convert(quantity, unit, value, volume):
    """Unit conversion with overflow silenced: the result is checked by :func:`_checked`."""
    with np.errstate(over="ignore", invalid="ignore"):
        return to_internal(quantity, unit, value, volume)


def _checked(path, frame, key, quantity, value):
    """Every label is checked *after* conversion (and volume division): a finite 1e308 in the file
    that overflows on conversion, or beyond float32, is bad input, named by file, frame and key."""
    if not np.all(np.isfinite(value)):
        raise DataError(path, frame, key, f"{quantity} has NaN/inf values (after conversion to internal units)")
    if value.size and np.abs(value).max() > MAX_VALUE:
        raise DataError(path, frame, key, f"{quantity} overflows float32 ({np.abs(value).max():.3g})")
    return value


def read_records(
    path,
    labels: Optional[Mapping[str, Any]] = None,
    electric_field: Optional[Mapping[str, Any]] = None,
    meta_keys: tuple = (),
    required: Optional[List[str]] = None,
    labels_required: str = "any",
) -> List[Record]:
    """Read every frame of ``path`` with the labels of ``labels`` in internal units.

    ``electric_field``: ``{"key": ..., "unit": ...}`` to read it per frame, or
    ``{"value": [Ex, Ey, Ez]}`` (V/A) for a fixed value. ``None``: zero field, with a warning if
    the file has a field-like key (:data:`FIELD_KEYS`) that is therefore not used.
    A label missing from a frame is simply absent (its loss weight will be 0) unless its
    quantity is in ``required``. ``labels_required``: ``"all"`` -- every configured label key must
    be in at least one frame of the file; ``"any"`` -- at least one of them must (a file with none
    of the configured keys would train or evaluate nothing); ``"none"`` -- no check. Otherwise a
    :class:`DataError` names the missing keys and lists the keys the file has.
    """
    if labels_required not in ("all", "any", "none"):
        raise ValueError(f"labels_required={labels_required!r}: all | any | none")
    spec = parse_label_spec(labels)
    unused_field_keys = set() if electric_field else {k for k in FIELD_KEYS}
    field_spec = dict(electric_field or {"value": [0.0, 0.0, 0.0]})
    if "key" in field_spec and "value" in field_spec:
        raise ValueError(f"electric_field spec has both 'key' and 'value' ({field_spec}): give one")
    if "key" in field_spec:
        check_unit("electric_field", field_spec.get("unit", "V/A"))
    required = set(required or [])
    records: List[Record] = []
    seen_keys: set = set()
    for frame, atoms in iter_frames(path):
        n = len(atoms)
        if n == 0:
            raise DataError(path, frame, None, "empty frame (0 atoms)")
        pos = atoms.get_positions()
        if not np.all(np.isfinite(pos)):
            raise DataError(path, frame, "pos", "positions have NaN/inf entries")
        if np.abs(pos).max() > MAX_COORDINATE:
            raise DataError(path, frame, "pos", f"positions of {np.abs(pos).max():.3g} A (more than "
                                                f"{MAX_COORDINATE:.0e} A): not a structure in Angstrom")
        present = {q: s for q, s in spec.items() if _lookup(atoms, s["key"]) is not None}
        missing = required - set(present)
        if missing:
            raise DataError(path, frame, spec[sorted(missing)[0]]["key"], "required label missing")
        volume = _check_cell(path, frame, atoms, needs_volume=any(QUANTITIES[q].needs_volume for q in present))
        problem = geometry_problem(atoms)  # overlapping atoms, a singular periodic cell, ...
        if problem:
            raise DataError(path, frame, "Lattice" if "cell" in problem else "pos", problem)
        out = {}
        for quantity, s in present.items():
            try:
                raw = _as_array(_lookup(atoms, s["key"]))
                value = _shape_label(quantity, raw, n)
            except ValueError as exc:
                raise DataError(path, frame, s["key"], f"cannot read {quantity}: {exc}") from exc
            out[quantity] = _checked(path, frame, s["key"], quantity,
                                     _convert(quantity, s["unit"], value, volume))
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
                field = _convert("electric_field", field_spec.get("unit", "V/A"), field, volume)
        if field.shape != (3,):
            raise DataError(path, frame, field_spec.get("key", "electric_field"),
                            f"field must be 3 numbers, got {field}")
        _checked(path, frame, field_spec.get("key", "electric_field"), "electric field", field)
        if unused_field_keys and frame == 0:
            unused_field_keys = {k for k in unused_field_keys if _lookup(atoms, k) is not None}
            if unused_field_keys:
                log.warning("%s: key(s) %s not used: evaluated at zero field. To apply the file's field, "
                            "configure electric_field: {key: %s, unit: V/A}", path, sorted(unused_field_keys),
                            sorted(unused_field_keys)[0])
        meta = {k: atoms.info[k] for k in meta_keys if k in atoms.info}
        seen_keys.update(atoms.info)
        seen_keys.update(k for k in atoms.arrays if k not in ("numbers", "positions"))
        seen_keys.update(getattr(getattr(atoms, "calc", None), "results", {}) or {})
        records.append(Record(atoms=atoms, labels=out, electric_field=field, file=str(path), frame=frame, meta=meta))
    _check_label_keys(path, spec, records, seen_keys, labels_required)
    _check_plausible(path, spec, records)
    return records


def _check_label_keys(path, spec, records, seen_keys, labels_required: str) -> None:
    if not spec or labels_required == "none":
        return
    found = {q for r in records for q in r.labels}
    missing = [q for q in spec if q not in found]
    if (labels_required == "all" and missing) or (labels_required == "any" and len(missing) == len(spec)):
        keys = ", ".join(f"{spec[q]['key']} ({q})" for q in missing)
        raise DataError(path, None, None, f"no frame has the label key(s) {keys}; the file's keys are "
                                          f"{sorted(seen_keys) or 'none'}: set data.labels.<quantity>.key (or null)")
