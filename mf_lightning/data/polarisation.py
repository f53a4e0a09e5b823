"""Polarisation is a lattice: P is defined modulo integer combinations of the quanta
Q_k = e a_k / Omega (a_k the lattice vectors). Helpers for branches and distortion paths."""

from __future__ import annotations

from typing import List

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
