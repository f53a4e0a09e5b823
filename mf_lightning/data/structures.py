"""Unlabelled structures from files and folders, streamed one frame at a time: the inputs of
screening (``mf-predict``) and distillation (``mf-distill``, replay sets).

Inputs are files (CIF, POSCAR/CONTCAR, ``*.vasp``, extxyz, anything ASE reads; multi-frame files
give one item per frame) and folders (searched recursively for those). What cannot be read is
yielded as an error beside its id, so one bad file never stops a batch of thousands.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator, List, Sequence, Tuple, Union

STRUCTURE_SUFFIXES = (".cif", ".vasp", ".poscar", ".xyz", ".extxyz", ".traj", ".json")
STRUCTURE_NAMES = ("POSCAR", "CONTCAR")

Item = Tuple[str, Union[Any, Exception]]  # (id, Atoms) or (id, the error reading it)


def _is_structure_file(path: Path) -> bool:
    name = path.name
    return path.suffix.lower() in STRUCTURE_SUFFIXES or any(name.startswith(s) for s in STRUCTURE_NAMES)


def expand_inputs(inputs: Sequence[str]) -> List[Path]:
    """Files, folders searched recursively (sorted, so ids and order are stable), each as its
    absolute, resolved path and listed once: ``three``, ``./three/`` and ``/abs/three`` give the
    same ids, so a resumed table never holds a structure twice."""
    out: List[Path] = []
    seen = set()
    for item in inputs:
        p = Path(item).expanduser().absolute()
        found = sorted(f for f in p.rglob("*") if f.is_file() and _is_structure_file(f)) if p.is_dir() else [p]
        for f in found:  # a missing file is reported as an error row, not an exception here
            f = f.resolve()
            if f not in seen:
                seen.add(f)
                out.append(f)
    return out


def iter_structures(inputs: Sequence[str]) -> Iterator[Item]:
    """Yield (id, Atoms) for every frame of every input, or (id, error) for what cannot be read.
    The id is ``path`` for single-structure files and ``path@frame`` for later frames."""
    import ase.io

    from mf_lightning.data.reader import extxyz_frames, looks_like_xyz

    for path in expand_inputs(inputs):
        if not path.is_file():
            yield str(path), FileNotFoundError(f"{path}: no such file")
            continue
        frame = 0
        try:  # xyz frame by frame: the frames before a bad one are kept
            frames = extxyz_frames(path) if looks_like_xyz(path) else ase.io.iread(str(path), index=":")
            for atoms in frames:
                yield (str(path) if frame == 0 else f"{path}@{frame}"), atoms
                frame += 1
            if frame == 0:
                yield str(path), ValueError(f"{path}: no structures in file")
        except Exception as exc:  # noqa: BLE001 - ASE raises many types for malformed files
            ident = str(path) if frame == 0 else f"{path}@{frame}"
            yield ident, ValueError(f"{path}: frame {frame}: cannot read ({type(exc).__name__}: {exc})")
