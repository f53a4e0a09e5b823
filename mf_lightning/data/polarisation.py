"""Polarisation is a lattice: P is defined modulo integer combinations of the quanta
Q_k = e a_k / Omega (a_k the lattice vectors). Helpers for branches and distortion paths."""

from __future__ import annotations

from typing import Callable, Dict, List

import numpy as np


def polarisation_quanta(cell: np.ndarray) -> np.ndarray:
    """Q with columns Q_k = e a_k / Omega (e/A^2): P is defined modulo integer combinations."""
    cell = np.asarray(cell, dtype=float)
    return cell.T / abs(np.linalg.det(cell))


def fold_onto(p: np.ndarray, reference: np.ndarray, cell: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Shift ``p`` by whole quanta to the branch nearest ``reference``; also return the
    (fractional) number of quanta between them before the shift."""
    Q = polarisation_quanta(cell)
    x = np.linalg.solve(Q, p - reference)
    return p - Q @ np.round(x), x


def path_coordinates(members: List) -> np.ndarray:
    """Interpolation coordinate of each frame of one path, in [0, 1] (0 = least polar end)."""
    if len(members) == 1:
        return np.zeros(1)
    ref = members[0].atoms.get_scaled_positions(wrap=False)
    disp = []
    for r in members:
        d = r.atoms.get_scaled_positions(wrap=False) - ref
        d -= np.round(d)  # minimum image in fractional space
        cell_change = r.atoms.get_cell().array - members[0].atoms.get_cell().array
        disp.append(np.concatenate([d.ravel(), cell_change.ravel()]))
    disp = np.array(disp)
    centred = disp - disp.mean(0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    s = centred @ vt[0]
    p_norm = np.array([np.linalg.norm(r.labels.get("polarisation", np.zeros(3))) for r in members])
    if np.ptp(p_norm) > 0 and np.ptp(s) > 0 and np.corrcoef(s, p_norm)[0, 1] < 0:
        s = -s  # orient non-polar -> polar
    span = np.ptp(s)
    return (s - s.min()) / span if span > 0 else np.zeros(len(members))


PATH_KEYS = ("nonpolar_mpid", "polar_mpid")


def path_id(record, keys=PATH_KEYS) -> str:
    """The distortion path of a frame: its (non-polar, polar) end points, e.g.
    ``mp-32425->mp-765022``. One polar structure can end several paths (from different
    non-polar parents), so the polar id alone does not name a path. Falls back to whichever
    keys the frame has, then to the frame's own id."""
    parts = [str(record.meta[k]) for k in keys if record.meta.get(k) not in (None, "")]
    return "->".join(parts) if parts else record.id


def order_along_paths(records: List, group_of: Callable) -> Dict[str, List]:
    """Frames grouped by path (in order of first appearance), each path ordered non-polar ->
    polar by :func:`path_coordinates`, stored on each record as ``meta["path_position"]``."""
    by_path: Dict[str, List] = {}
    for r in records:
        by_path.setdefault(group_of(r), []).append(r)
    for name, members in by_path.items():
        for r, s in zip(members, path_coordinates(members)):
            r.meta["path_position"] = float(s)
        by_path[name] = sorted(members, key=lambda r: r.meta["path_position"])
    return by_path


def unwrap_branch(p: np.ndarray, cells: np.ndarray) -> np.ndarray:
    """P of consecutive frames (n, 3) put on one continuous branch: each frame is shifted by whole
    quanta of *its* cell to the branch nearest the previous (already unwrapped) frame."""
    p = np.array(p, dtype=float)
    for k in range(1, len(p)):
        p[k] = fold_onto(p[k], p[k - 1], cells[k])[0]
    return p


def align_branch(p: np.ndarray, reference: np.ndarray, cells: np.ndarray) -> np.ndarray:
    """Unwrap ``p`` (n, 3) and shift the whole branch by the whole quanta (of the first frame's
    cell) that bring its first frame nearest the reference's first frame."""
    p = unwrap_branch(p, cells)
    shift = fold_onto(p[0], reference[0], cells[0])[0] - p[0]
    return p + shift
