"""Polarisation is a lattice: P is defined modulo integer combinations of the quanta
Q_k = e a_k / Omega (a_k the lattice vectors). Helpers for branches and distortion paths."""

from __future__ import annotations

from typing import Callable, Dict, List

import numpy as np
import torch


def polarisation_quanta(cell: np.ndarray) -> np.ndarray:
    """Q with columns Q_k = e a_k / Omega (e/A^2): P is defined modulo integer combinations."""
    cell = np.asarray(cell, dtype=float)
    return cell.T / abs(np.linalg.det(cell))


# the 27 integer offsets {-1, 0, 1}^3 searched around the rounded fractional coordinates
_OFFSETS = torch.tensor([[i, j, k] for i in (-1, 0, 1) for j in (-1, 0, 1) for k in (-1, 0, 1)], dtype=torch.float64)


def nearest_image(dP: torch.Tensor, cell: torch.Tensor) -> torch.Tensor:
    """P differences (n, 3) folded to their shortest lattice image, per structure (cells (n, 3, 3)):
    dP - Q n with n the integer vector minimising |dP - Q n| (Q's columns the quanta e a_k / Omega).

    Rounding the fractional coordinates x = Q^-1 dP is only right in orthogonal cells; in a skewed
    one it misses the nearest image (a 30 degree rhombohedral cell leaves residuals up to 4x too
    large). The nearest image is among the 27 neighbours of round(x) for the cells met here (tested
    against brute force). Differentiable in dP; the chosen n is a constant."""
    cell = cell.reshape(-1, 3, 3)
    volume = torch.linalg.det(cell).abs().view(-1, 1, 1)
    Q = cell.transpose(-1, -2) / volume  # columns a_k / Omega
    with torch.no_grad():
        x = torch.linalg.solve(Q, dP.detach().unsqueeze(-1)).squeeze(-1)
        candidates = torch.round(x).unsqueeze(1) + _OFFSETS.to(dP.dtype).to(dP.device)  # (n, 27, 3)
        images = dP.detach().unsqueeze(1) - candidates @ Q.transpose(-1, -2)
        best = images.norm(dim=-1).argmin(dim=1)
        n = candidates[torch.arange(len(best), device=dP.device), best]
    return dP - (Q @ n.unsqueeze(-1)).squeeze(-1)


def fold_onto(p: np.ndarray, reference: np.ndarray, cell: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Shift ``p`` by whole quanta to the image nearest ``reference``; also return the fractional
    number of quanta between them before the shift."""
    p, reference = np.asarray(p, dtype=float), np.asarray(reference, dtype=float)
    d = torch.as_tensor(p - reference, dtype=torch.float64).view(1, 3)
    folded = nearest_image(d, torch.as_tensor(np.asarray(cell, dtype=float)).view(1, 3, 3)).view(3).numpy()
    return reference + folded, np.linalg.solve(polarisation_quanta(cell), p - reference)


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


def align_branch(p: np.ndarray, reference: np.ndarray, cell: np.ndarray) -> np.ndarray:
    """Shift a whole P series (n, 3), e.g. a model's P along a path, once, by the whole quanta of
    the first frame's ``cell`` that bring its first frame nearest ``reference`` (the reference's
    first frame). The series itself is never refolded frame to frame: the model's P is smooth
    and single-valued, and reference files hold their path on one branch already (SPEC 4), so
    refolding sparsely sampled frames would alias real changes larger than half a quantum."""
    p = np.asarray(p, dtype=float)
    return p + (fold_onto(p[0], reference, cell)[0] - p[0])
