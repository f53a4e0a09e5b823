"""phonopy ``BORN`` files from the model's eps_inf and Born charges, for LO-TO splitting and the
non-analytic correction in phonopy.

The format phonopy reads (``phonopy.file_IO.get_born_parameters``): line 1 the unit conversion
factor, or anything that is not a number for phonopy's default of the calculator interface (for
eV and A, VASP's, 14.4 = e^2/(4 pi eps0) in eV A: right for our force constants); line 2 eps_inf, 9
numbers xx xy xz yx ... zz; then one line of 9 numbers per *symmetry-independent* atom, its Z*
row-major, in the order phonopy's symmetry finder gives them: the atoms i whose representative in
spglib's ``equivalent_atoms`` is i itself, ascending. phonopy expands them to the other atoms with
its symmetry operations. We write line 1 as a comment naming those atoms (as phonopy's own writer
does), so phonopy's default factor applies; ``factor=`` writes a number instead.

Index convention: phonopy contracts Z*'s *first* index with the wave vector (its non-analytic
term uses q . Z*_k), i.e. Z*[i, j] with i the field / polarisation direction and j the atomic
displacement: ours, ``becs[k, i, j] = d(Omega P_i)/dR_kj``, unchanged (no transpose). Before the
independent atoms are picked, Z* and eps_inf are symmetrised over the space group (each Z* the
average of R Z*_j R^T over the operations carrying atom j onto it), as phonopy's ``phonopy-vasp-born``
does; the acoustic sum rule, which the model obeys to round-off, survives that average. The largest
change is returned: more than :data:`SYMMETRY_WARN` e means the structure is not symmetric to
``symprec`` or the model breaks its symmetry. The cell as given is taken as phonopy's primitive cell
(the independent atoms and their order are the same for its conventional cell's orbits).

Needs spglib (installed with phonopy: ``pip install "mf-lightning[phonons]"``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional

import numpy as np

from mf_lightning.errors import InputError

SYMPREC = 1e-5  # phonopy's default symmetry tolerance (A)
SYMMETRY_WARN = 1e-3  # e


def _dataset(atoms, symprec: float):
    try:
        import spglib
    except ImportError as exc:
        raise InputError("a BORN file needs spglib to find the symmetry-independent atoms: "
                         "pip install \"mf-lightning[phonons]\" (phonopy and spglib)") from exc
    cell = (atoms.cell.array, atoms.get_scaled_positions(), atoms.get_atomic_numbers())
    data = spglib.get_symmetry_dataset(cell, symprec=symprec)
    if data is None:
        raise InputError(f"spglib found no symmetry for {atoms.get_chemical_formula()} at symprec {symprec}")

    def get(name):  # spglib >= 2.5 gives attributes, older versions a dict
        return np.asarray(getattr(data, name) if hasattr(data, name) else data[name])

    return get("rotations"), get("translations"), get("equivalent_atoms")


def _permutation(frac: np.ndarray, cell: np.ndarray, rotation, translation, symprec: float) -> np.ndarray:
    """perm[j] = the atom that operation (rotation, translation) carries atom j onto."""
    moved = frac @ rotation.T + translation
    diff = moved[:, None, :] - frac[None, :, :]
    diff -= np.round(diff)
    dist = np.linalg.norm(diff @ cell, axis=-1)
    perm = dist.argmin(1)
    if dist[np.arange(len(frac)), perm].max() > 10 * symprec or len(set(perm.tolist())) != len(frac):
        raise InputError("a symmetry operation of spglib does not map the atoms onto each other: "
                         "give a larger symprec")
    return perm


def symmetrize_born(atoms, becs: np.ndarray, eps: np.ndarray, symprec: float = SYMPREC) -> Dict[str, np.ndarray]:
    """Z* (N, 3, 3) and eps (3, 3) averaged over the space group of ``atoms``, the independent
    atoms (phonopy's choice, module docstring) and the largest change of a Z* component (e)."""
    rotations, translations, equivalent = _dataset(atoms, symprec)
    cell = atoms.cell.array  # rows a, b, c: x_cart = x_frac @ cell
    frac = atoms.get_scaled_positions()
    becs = np.asarray(becs, dtype=float)
    z_sum, e_sum = np.zeros_like(becs), np.zeros((3, 3))
    to_cart = np.linalg.inv(cell)
    for rot, trans in zip(rotations, translations):
        r_cart = cell.T @ rot @ to_cart.T  # the operation on Cartesian column vectors
        perm = _permutation(frac, cell, rot, trans, symprec)
        z_sum[perm] += np.einsum("ab,kbc,dc->kad", r_cart, becs, r_cart)
        e_sum += r_cart @ np.asarray(eps, dtype=float) @ r_cart.T
    z_sym, e_sym = z_sum / len(rotations), e_sum / len(rotations)
    independent = np.array([i for i, rep in enumerate(equivalent) if i == rep], dtype=int)
    return {"becs": z_sym, "eps": e_sym, "independent": independent,
            "max_change": float(np.abs(z_sym - becs).max()) if len(becs) else 0.0}


def born_text(atoms, becs: np.ndarray, eps_inf: np.ndarray, symprec: float = SYMPREC,
              factor: Optional[float] = None) -> Dict[str, object]:
    """The BORN file's text (``text``) and what went into it (:func:`symmetrize_born`)."""
    sym = symmetrize_born(atoms, becs, eps_inf, symprec)
    first = (f"{float(factor):.8f}" if factor is not None else
             "# epsilon and Z* of atoms " + " ".join(str(i + 1) for i in sym["independent"])
             + " (mf-lightning; Z*[i, j] = d(Omega P_i)/dR_j)")
    def row(values):  # 9 numbers as phonopy writes them (no "-0.00000000" for round-off below the last digit)
        return " ".join(f"{v:13.8f}" for v in np.where(np.abs(values) < 5e-9, 0.0, values).reshape(-1))

    lines = [first, row(sym["eps"])] + [row(sym["becs"][i]) for i in sym["independent"]]
    return {**sym, "text": "\n".join(lines) + "\n"}


def write_born(path, atoms, becs: np.ndarray, eps_inf: np.ndarray, symprec: float = SYMPREC,
               factor: Optional[float] = None) -> Dict[str, object]:
    """Write ``path`` (a BORN file; atomically) and return :func:`born_text`'s record with ``path``."""
    from mf_lightning.files import atomic_write_text

    record = born_text(atoms, becs, eps_inf, symprec, factor)
    atomic_write_text(Path(path), record["text"])
    return {**record, "path": Path(path)}
