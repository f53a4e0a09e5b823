"""ASE structures -> mace-torch ``AtomicData`` graphs and batches (neighbour lists from mace)."""

from __future__ import annotations

import logging
from typing import Optional, Sequence

import numpy as np
import torch
from mace.data import AtomicData, Configuration
from mace.tools import AtomicNumberTable
from mace.tools.torch_geometric import Batch

import mf_lightning._deps  # noqa: F401  (import order)
from mf_lightning.data import keys
from mf_lightning.errors import InputError
from mf_lightning.utils import default_dtype


class GeometryError(InputError, ValueError):
    """A structure no model can be evaluated on (NaN or absurd coordinates, a NaN or singular
    periodic cell, atoms on top of each other), named with its source."""


# Coordinates beyond this are not a structure in Angstrom; atoms closer than this are on top of
# each other (the closest physical pair, H2, is 0.74 A) and give NaN in every derivative.
MAX_COORDINATE = 1.0e6
MIN_DISTANCE = 0.1
# Budget of one neighbour list (mace -> matscipy). matscipy holds the GIL in C, so no in-process
# timer can interrupt it: the guard is a prediction made before it starts. It bins space into
# cells of ~r_max (about 7 bytes each: 1e8 bins ~ 0.7 GB and ~0.5 s on this machine; a 3-atom
# molecule at |x| = 200 A took 4.4 GB). Condensed matter has about one bin per 10 atoms.
MAX_NEIGHBOUR_BINS = 1.0e8
# 1e8 edges hold ~4 GB of indices and shifts; a solid has ~50 per atom at r_max = 5 A.
MAX_NEIGHBOUR_PAIRS = 1.0e8
# matscipy's work: for every atom it visits ceil(r_max / h_c) bins on each side along each cell
# direction (h_c: the cell's perpendicular height, volume / |a_j x a_k|), wrapping through the
# periodic images, and checks every atom of each bin visited (~3e-8 s per check here). A solid
# costs a few hundred per atom; a nearly singular cell (heights of 1e-3 A) needs ~1e4 images each way and
# never finished. 3e8 (~10 s) is a million atoms of condensed matter, more than any model here
# holds in memory.
MAX_NEIGHBOUR_WORK = 3.0e8
# The overlap check (ASE's list within MIN_DISTANCE, bins of at least 3 A) loops in Python over
# the bins within 3 A of each other, ~35 us and ~2.5 kB each: 1,500 each way at heights of 2e-3 A
# (hours, GBs). A cell no thinner than 0.3 A in any direction needs under 1e4 (0.4 s).
MAX_OVERLAP_SEARCH = 2.0e4

log = logging.getLogger(__name__)
_WARNED_ISOLATED: set = set()


def _overlap(i: int, j: int, d: float) -> str:
    return f"atoms {i} and {j} are {d:.3g} A apart (less than {MIN_DISTANCE} A): duplicated or overlapping atoms"


def geometry_problem(atoms, distances: bool = True) -> Optional[str]:
    """Why no model can be evaluated on ``atoms``, or None: no atoms, non-finite or absurd
    positions, a non-finite cell, a singular cell that is periodic, and (``distances``) atoms on
    top of each other (NaN in every derivative). Checked before any neighbour list is built:
    matscipy's never returns on a NaN position. :func:`atoms_to_graph` checks distances on the
    graph's own edges instead (``distances=False`` here), so an MD step pays no second list."""
    pos = np.asarray(atoms.get_positions(), dtype=float)
    if len(pos) == 0:
        return "no atoms"
    if not np.all(np.isfinite(pos)):
        return "positions have NaN/inf entries"
    if np.abs(pos).max() > MAX_COORDINATE:
        return f"positions of {np.abs(pos).max():.3g} A: not a structure in Angstrom"
    cell = np.asarray(atoms.get_cell().array, dtype=float)
    if not np.all(np.isfinite(cell)):
        return "cell has NaN/inf entries"
    if np.abs(cell).max() > MAX_COORDINATE:
        return f"cell vectors of {np.abs(cell).max():.3g} A"
    if any(atoms.get_pbc()) and abs(np.linalg.det(cell)) < 1e-9:
        return f"periodic structure with a singular cell (volume {abs(np.linalg.det(cell)):.3g} A^3)"
    if distances:
        from ase.neighborlist import neighbor_list

        complete = atoms.get_cell(complete=True).array
        searched = overlap_search_bins(complete, atoms.get_pbc())
        if searched > MAX_OVERLAP_SEARCH:
            return thin_cell_problem(complete, atoms.get_pbc(), f"the overlap check would search {searched:.3g} "
                                     f"periodic bins (limit {MAX_OVERLAP_SEARCH:.0e})")
        i, j, d = neighbor_list("ijd", atoms, MIN_DISTANCE)  # the tiny cutoff keeps this cheap
        if len(d):
            k = int(np.argmin(d))
            return _overlap(int(i[k]), int(j[k]), float(d[k]))
    return None


def neighbour_list_cell(positions: np.ndarray, cell: np.ndarray, pbc: Sequence[bool], r_max: float) -> np.ndarray:
    """The cell mace's ``get_neighborhood`` hands matscipy: along a non-periodic direction a
    vector of length (max |x| + 1) * 5 * r_max, whatever the structure's extent."""
    cell = np.array(cell, dtype=float)
    if not cell.any():
        cell = np.eye(3)
    reach = (float(np.abs(positions).max()) + 1.0) * 5.0 * r_max
    for axis in range(3):
        if not pbc[axis]:
            cell[axis] = reach * np.eye(3)[axis]
    return cell


def cell_heights(cell: np.ndarray) -> np.ndarray:
    """The perpendicular heights of a cell, volume / |a_j x a_k| (A): the distance between the
    two faces spanned by a_j and a_k (inf for a zero face)."""
    cell = np.asarray(cell, dtype=float)
    volume = abs(float(np.linalg.det(cell)))
    areas = np.array([np.linalg.norm(np.cross(cell[(k + 1) % 3], cell[(k + 2) % 3])) for k in range(3)])
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(areas > 0, volume / np.where(areas > 0, areas, 1.0), np.inf)


def thin_cell_problem(cell: np.ndarray, pbc: Sequence[bool], cost: str) -> str:
    """The message for a periodic cell whose thinness makes a neighbour list explode."""
    heights = cell_heights(cell)
    periodic = [k for k in range(3) if pbc[k]]
    k = min(periodic, key=lambda c: heights[c]) if periodic else int(np.argmin(heights))
    volume = abs(float(np.linalg.det(np.asarray(cell, dtype=float))))
    return (f"a periodic cell only {heights[k]:.3g} A thick along a{k + 1} (perpendicular heights "
            + " x ".join(f"{h:.3g}" for h in heights) + f" A, volume {volume:.3g} A^3): {cost}; a nearly "
            "singular cell (vectors almost in one plane, far too little volume for its atoms) or an unreduced one "
            "(reduce it, e.g. ase.build.niggli_reduce)")


def overlap_search_bins(cell: np.ndarray, pbc: Sequence[bool], cutoff: float = MIN_DISTANCE) -> float:
    """How many bins ASE's ``neighbor_list`` (``cell``: complete) loops over, in Python, for a
    list within ``cutoff``: its own binning (bins of at least 3 A, at most 1e6 of them)."""
    cell = np.asarray(cell, dtype=float)
    faces = 1.0 / np.maximum(np.linalg.norm(np.linalg.pinv(cell).T, axis=1), 1e-300)
    size = max(float(cutoff), 3.0)
    nbins = np.maximum(np.floor(faces / size), 1.0)
    while np.prod(nbins) > 1e6:
        nbins = np.maximum(nbins // 2, 1.0)
    search = np.ceil(size * nbins / faces)
    search = np.where((nbins == 1) & ~np.asarray(pbc, dtype=bool), 0.0, search)
    return float(np.prod(2.0 * search + 1.0))


def neighbour_list_problem(positions: np.ndarray, cell: np.ndarray, pbc: Sequence[bool], r_max: float) -> Optional[str]:
    """Why the neighbour list of this structure would not finish in reasonable time and memory,
    or None: too many bins (matscipy's grid over the cell mace gives it), too many pairs (a
    periodic cell far denser than matter) or too much work (a cell so thin in some direction that
    the list would loop over thousands of periodic images per atom: ``MAX_NEIGHBOUR_WORK``).
    Predicted before the list is built."""
    n = len(positions)
    grid = neighbour_list_cell(positions, cell, pbc, r_max)
    volume = abs(float(np.linalg.det(grid)))
    heights = np.maximum(cell_heights(grid), 1e-300)
    nbins = np.maximum(1.0, np.floor(heights / r_max))
    bins = float(np.prod(nbins))
    if bins > MAX_NEIGHBOUR_BINS:
        if all(pbc):
            where = "a periodic cell of " + " x ".join(f"{h:.3g}" for h in heights) + " A"
            advice = "not a cell in Angstrom?"
        else:
            extent = " x ".join(f"{np.ptp(positions[:, k]):.3g}" for k in range(3))
            where = f"atoms spread over {extent} A"
            advice = "split the structure, or give it a periodic box"
        return (f"{where}: its neighbour list (r_max = {r_max:g} A) would need {bins:.3g} bins "
                f"(limit {MAX_NEIGHBOUR_BINS:.0e}); {advice}")
    if all(pbc) and volume > 0:
        pairs = n * n / volume * 4.0 / 3.0 * np.pi * r_max ** 3
        if pairs > MAX_NEIGHBOUR_PAIRS:
            return (f"{n} atoms in {volume:.3g} A^3 ({n / volume:.3g} atoms/A^3): about {pairs:.3g} neighbour "
                    f"pairs within r_max = {r_max:g} A (limit {MAX_NEIGHBOUR_PAIRS:.0e}); not a structure in Angstrom?")
    # matscipy visits ceil(r_max * nbins / h) bins each way per direction (through the periodic
    # images when the cell is thinner than r_max) and checks each atom in every bin it visits
    images = float(np.prod(2.0 * np.ceil(r_max * nbins / heights) + 1.0))
    work = n * images * (1.0 + n / bins)
    if work > MAX_NEIGHBOUR_WORK:
        return thin_cell_problem(grid, pbc, f"its neighbour list (r_max = {r_max:g} A) would visit {images:.3g} bins "
                                 f"per atom ({work:.3g} distance checks, limit {MAX_NEIGHBOUR_WORK:.0e})")
    return None


def neighbour_list_offset(positions: np.ndarray, pbc: Sequence[bool]) -> np.ndarray:
    """What the list is built on is ``positions - offset``. mace sizes a non-periodic direction by
    max |x|, so a molecule far from the origin would cost the list memory for nothing: such a
    structure is centred at the origin (a translation changes no pair or shift)."""
    return np.zeros(3) if all(pbc) else (positions.max(axis=0) + positions.min(axis=0)) / 2


def check_neighbour_list(atoms, r_max: float, source: str = "<atoms>") -> None:
    """:func:`neighbour_list_problem` of ``atoms`` as built, as a :class:`GeometryError` naming ``source``."""
    positions = np.asarray(atoms.get_positions(), dtype=float)
    pbc = tuple(bool(p) for p in atoms.get_pbc())
    problem = neighbour_list_problem(positions - neighbour_list_offset(positions, pbc),
                                     np.asarray(atoms.get_cell().array, dtype=float), pbc, float(r_max))
    if problem:
        raise GeometryError(f"{source}: {problem}")


def check_geometry(atoms, source: str = "<atoms>", distances: bool = True) -> None:
    """:func:`geometry_problem` as a :class:`GeometryError` naming ``source``."""
    problem = geometry_problem(atoms, distances)
    if problem:
        raise GeometryError(f"{source}: {problem}")


def check_edges(graph, source: str) -> None:
    """Overlapping atoms, read off the edges the graph has anyway (``MIN_DISTANCE`` < r_max)."""
    edges = graph.edge_index
    if edges.numel():
        d = torch.linalg.norm(graph.positions[edges[1]] - graph.positions[edges[0]] + graph.shifts, dim=-1)
        k = int(torch.argmin(d))
        if float(d[k]) < MIN_DISTANCE:
            raise GeometryError(f"{source}: {_overlap(int(edges[0, k]), int(edges[1, k]), float(d[k]))}")


def warn_isolated(graph, n_atoms: int, source: str) -> None:
    """Isolated atoms (no neighbour within r_max) give a response of exactly zero (eps_inf = 1,
    Z* = 0 there): a warning, once per source."""
    edges = graph.edge_index
    isolated = n_atoms - int(torch.unique(edges[0]).numel()) if edges.numel() else n_atoms
    if isolated and source not in _WARNED_ISOLATED:  # once per source (an MD run calls this every step)
        _WARNED_ISOLATED.add(source)
        log.warning("%s: %d of %d atoms have no neighbour within the cutoff: their field response is zero "
                    "(eps_inf = 1, Z* = 0 there)", source, isolated, n_atoms)


class UnknownElementError(InputError, ValueError):
    """A structure holds an element the model's element table does not know."""


def check_elements(numbers: Sequence[int], atomic_numbers: Sequence[int], source: str = "<atoms>") -> None:
    """Raise :class:`UnknownElementError` naming the elements of ``numbers`` that the model's
    element table ``atomic_numbers`` lacks, and the table."""
    known = set(int(x) for x in atomic_numbers)
    unknown = sorted(set(int(x) for x in numbers) - known)
    if unknown:
        from ase.data import chemical_symbols

        names = ", ".join(chemical_symbols[u] for u in unknown)
        raise UnknownElementError(f"{source}: element(s) {names} not in the model's element table "
                                  f"({', '.join(chemical_symbols[k] for k in sorted(known))})")


def atoms_to_graph(
    atoms,
    atomic_numbers: Sequence[int],
    r_max: float,
    heads: Optional[Sequence[str]] = None,
    head: str = "Default",
    electric_field: Optional[Sequence[float]] = None,
    source: str = "<atoms>",
) -> AtomicData:
    """One ASE ``Atoms`` -> one ``AtomicData`` with its neighbour list (cutoff ``r_max``).

    ``electric_field`` (V/A) is stored under :data:`keys.ELECTRIC_FIELD`; default zero.
    """
    if not r_max > 0:
        raise InputError(f"r_max must be positive (A), got {r_max}")
    check_geometry(atoms, source, distances=False)  # the rest before the list; distances on its edges
    z = np.asarray(atoms.get_atomic_numbers())
    check_elements(z, atomic_numbers, source)
    field = np.zeros(3) if electric_field is None else np.asarray(electric_field, dtype=float)
    if field.shape != (3,) or not np.all(np.isfinite(field)):
        raise ValueError(f"{source}: electric field must be 3 finite numbers (V/A), got {field!r}")
    check_neighbour_list(atoms, r_max, source)
    positions = np.asarray(atoms.get_positions(), dtype=float)
    pbc = tuple(bool(p) for p in atoms.get_pbc())
    offset = neighbour_list_offset(positions, pbc)  # the graph keeps the positions as given (below)
    config = Configuration(
        atomic_numbers=z,
        positions=positions - offset,
        properties={keys.ELECTRIC_FIELD: field},
        property_weights={},
        cell=np.asarray(atoms.get_cell().array, dtype=float),
        pbc=pbc,
        head=head,
    )
    table = AtomicNumberTable([int(x) for x in atomic_numbers])
    # AtomicData.from_config makes its tensors in torch's default dtype; float32 there would
    # round positions to ~1e-7 A before any model sees them. Graphs are always float64;
    # ``collate`` casts to the model's dtype.
    with default_dtype(torch.float64):
        graph = AtomicData.from_config(config, z_table=table, cutoff=float(r_max), heads=list(heads or ["Default"]))
    if offset.any():
        graph.positions = torch.as_tensor(positions, dtype=graph.positions.dtype)
    # mace's neighbour list puts an identity cell on structures without one, which would make
    # the volume 1 A^3 and P silently wrong. Only a 3D-periodic, non-singular cell defines a
    # volume (and so P, Z*, alpha, stress); otherwise store zeros so the model refuses them.
    if not (all(config.pbc) and abs(np.linalg.det(config.cell)) > 1e-9):
        graph.cell = torch.zeros_like(graph.cell)
    check_edges(graph, source)
    warn_isolated(graph, len(z), source)
    return graph


def collate(graphs: Sequence[AtomicData], dtype: torch.dtype = torch.float64, device="cpu") -> dict:
    """Batch graphs into the dict the model takes, floats cast to ``dtype``."""
    batch = Batch.from_data_list(list(graphs)).to(device)
    out = batch.to_dict()
    for k, v in out.items():
        if torch.is_tensor(v) and v.is_floating_point():
            out[k] = v.to(dtype)
    return out
