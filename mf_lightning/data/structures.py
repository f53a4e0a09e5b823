"""Unlabelled structures from files and folders, streamed one frame at a time: the inputs of
screening (``mf-predict``) and distillation (``mf-distill``, replay sets).

Inputs are files (CIF, POSCAR/CONTCAR, ``*.vasp``, extxyz, anything ASE reads; multi-frame files
give one item per frame) and folders (searched recursively for those). What cannot be read is
yielded as an error beside its id, so one bad file never stops a batch of thousands.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator, List, Sequence, Tuple, Union

from mf_lightning.files import unreadable_reason

STRUCTURE_SUFFIXES = (".cif", ".vasp", ".poscar", ".xyz", ".extxyz", ".traj", ".json")
STRUCTURE_NAMES = ("POSCAR", "CONTCAR")

OCCUPANCY_TOL = 1e-3  # a site's total occupancy this close to 1 is full (CIFs round to 3-4 digits)

Item = Tuple[str, Union[Any, Exception]]  # (id, Atoms) or (id, the error reading it)


def _is_structure_file(path: Path) -> bool:
    name = path.name
    return path.suffix.lower() in STRUCTURE_SUFFIXES or any(name.startswith(s) for s in STRUCTURE_NAMES)


def _resolved(path: Path) -> Path:
    """The resolved path, or the absolute one where it cannot be resolved (a symlink loop): the
    reading step then reports the reason as that input's error row."""
    try:
        return path.resolve()
    except (OSError, RuntimeError):  # RuntimeError: Python 3.11's "Symlink loop"
        return path


def expand_inputs(inputs: Sequence[str]) -> List[Path]:
    """Files, folders searched recursively (sorted, so ids and order are stable), each as its
    absolute, resolved path and listed once: ``three``, ``./three/`` and ``/abs/three`` give the
    same ids, so a resumed table never holds a structure twice. Links that lead nowhere (a
    loop, a missing target) with a structure file's name are listed too: they become error
    rows instead of disappearing."""
    out: List[Path] = []
    seen = set()
    for item in inputs:
        p = Path(item).expanduser().absolute()
        try:
            is_dir = p.is_dir()
            found = sorted(f for f in p.rglob("*") if _is_structure_file(f) and (f.is_file() or f.is_symlink())
                           ) if is_dir else [p]
        except (OSError, RuntimeError):  # an unreadable folder: reported as its input's error row
            found = [p]
        for f in found:  # a missing file is reported as an error row, not an exception here
            f = _resolved(f)
            if f not in seen:
                seen.add(f)
                out.append(f)
    return out


def check_occupancy(atoms, source: str) -> None:
    """Refuse a structure whose sites are not each fully occupied by one element (a CIF's
    partial occupancies, mixed sites or vacancies; ASE's ``atoms.info["occupancy"]``): ASE puts
    one full atom on such a site, a different material from the one the file describes."""
    occupancy = (atoms.info or {}).get("occupancy")
    if not occupancy:
        return
    problems = []
    for site, species in sorted(occupancy.items(), key=lambda kv: str(kv[0])):
        values = {str(el): float(v) for el, v in dict(species).items()}
        if len(values) > 1:
            problems.append(f"site {site} mixes {', '.join(f'{el} {v:g}' for el, v in values.items())}")
        elif values and abs(sum(values.values()) - 1.0) > OCCUPANCY_TOL:
            el, v = next(iter(values.items()))
            problems.append(f"site {site} is {el} with occupancy {v:g} (a vacancy)")
    if problems:
        more = f" and {len(problems) - 3} more" if len(problems) > 3 else ""
        raise ValueError(f"{source}: partial occupancies ({'; '.join(problems[:3])}{more}): the model needs one "
                         "full atom per site; build an ordered supercell (e.g. pymatgen's "
                         "OrderDisorderedStructureTransformation) first")


def count_structures(inputs: Sequence[str]) -> int:
    """How many items :func:`iter_structures` will yield, cheaply (a progress bar's total):
    (ext)xyz frames are counted from their atom-count lines without parsing, other files count
    one (a multi-frame trajectory of another format is then undercounted, never read twice)."""
    from mf_lightning.data.reader import looks_like_xyz

    total = 0
    for path in expand_inputs(inputs):
        try:
            if not looks_like_xyz(path):
                total += 1
                continue
            frames = 0
            with open(path, "rb") as fh:
                while True:
                    header = fh.readline()
                    if not header:
                        break
                    if not header.strip():
                        continue
                    n = int(header.strip())
                    frames += 1
                    for _ in range(n + 1):
                        fh.readline()
            total += max(frames, 1)
        except (OSError, RuntimeError, ValueError):
            total += 1  # reported as one error row
    return total


def iter_structures(inputs: Sequence[str]) -> Iterator[Item]:
    """Yield (id, Atoms) for every frame of every input, or (id, error) for what cannot be read
    or cannot be what the model means (partial occupancies: :func:`check_occupancy`).
    The id is ``path`` for single-structure files and ``path@frame`` for later frames."""
    import ase.io

    from mf_lightning.data.reader import extxyz_frames, looks_like_xyz

    for path in expand_inputs(inputs):
        reason = unreadable_reason(path, "structure file")
        if reason is not None:
            yield str(path), FileNotFoundError(f"{path}: {reason}")
            continue
        frame = 0
        try:  # xyz frame by frame: the frames before a bad one are kept
            frames = extxyz_frames(path) if looks_like_xyz(path) else ase.io.iread(str(path), index=":")
            for atoms in frames:
                ident = str(path) if frame == 0 else f"{path}@{frame}"
                frame += 1
                try:
                    check_occupancy(atoms, ident)
                except ValueError as exc:
                    yield ident, exc
                    continue
                yield ident, atoms
            if frame == 0:
                yield str(path), ValueError(f"{path}: no structures in file")
        except Exception as exc:  # noqa: BLE001 - ASE raises many types for malformed files
            ident = str(path) if frame == 0 else f"{path}@{frame}"
            yield ident, ValueError(f"{path}: frame {frame}: cannot read ({type(exc).__name__}: {exc})")
