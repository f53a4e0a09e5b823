"""Dielectric screening: ``mf-predict STRUCTURES... --model model.pt --out table.csv``.

Inputs are files (CIF, POSCAR/CONTCAR, ``*.vasp``, extxyz, anything ASE reads; multi-frame files
give one row per frame) and folders (searched recursively for those). Per structure the table has
Z* per site, alpha, the eps_inf tensor, eps_poly and n (and with ``--ionic`` eps_ion and eps_0,
with ``--piezo`` the piezoelectric tensors, optionally after ``--relax``); tensors are JSON lists in
their cells (row-major 3x3; Z* as ``[[site 0: 9 values], ...]`` with
``Z*[k, i, j] = d(Omega P_i)/dR_kj``).

``--piezo`` adds the proper clamped- and relaxed-ion piezoelectric stress tensors
(:mod:`mf_lightning.analysis.piezo`), one column per component: ``e_clamped_{x,y,z}{1..6}`` and
``e_relaxed_{x,y,z}{1..6}`` in C/m^2, the letter the polarisation direction i, the digit the Voigt
strain 1..6 = xx yy zz yz xz xy (e_{i4} = e_{i,yz}: it multiplies the engineering shear strain).
The relaxed tensor is empty beside unstable or charged soft modes (flagged, never 0); with
``--ionic`` too, it reuses eps_ion's Hessian. It needs a head that learned the field response (Z* or
P) *and* energies and forces (the Hessian and the internal-strain forces): a head without forces is
refused up front, one line (``--allow-untrained`` computes both tensors anyway, flagged), rather than
given a table whose columns depend on the head. An ensemble gives the tensors of its mean F and
``<column>_std``, the members' raw spread (:func:`mf_lightning.analysis.piezo.piezo_of`).

Built for thousands of files:

* structures stream through in batches of at most ``--max-atoms`` atoms: memory stays bounded
  however many inputs there are (nothing is accumulated; rows are appended and flushed per batch);
* resumable: ids already in ``--out`` are skipped (a line cut short by a kill is dropped first);
* a file or structure that cannot be read or predicted (corrupt, non-periodic, an element the
  model does not know, partial occupancies, a Hessian beyond ``--max-memory``) is reported in
  ``<out>.errors.csv`` with the reason and skipped; the others are not lost. The exit status is
  0 if every structure succeeded, 1 otherwise.

Every row has a ``flags`` column (:mod:`mf_lightning.model.validity`: eps_inf < 1, alpha not
symmetric, the acoustic sum rule, Born charges of the wrong sign, unstable modes, elements the
model barely saw) and the tool ends with a line counting the flagged rows. An ensemble model
(``mf-ensemble``) gives the member mean in every column, a ``<column>_std`` column (its sigma,
calibrated where the ensemble is: ``<stem>.meta.json`` says which) beside each of eps_poly, n,
eps_inf, alpha, Z*, P (a ``polarisation`` column, ensembles only) and eps_0, ``Z_ij_std`` in the
per-atom table, and flags ``high_uncertainty:<quantity>`` where the spread is large. A head that never
learned what the options need (forces for ``--relax``/``--ionic``/``--piezo``) is refused up front.
"""

from __future__ import annotations

import csv
import json
import logging
import sys
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from mf_lightning.analysis.piezo import VOIGT_LABELS
from mf_lightning.data.structures import Item
from mf_lightning.errors import InputError
from mf_lightning.files import FileLock, TableWriter

log = logging.getLogger(__name__)

# model_sha256: the model that predicted the row (a table never mixes two models)
# flags: what must not be trusted in the row (mf_lightning.model.validity), ";"-separated
BASE_COLUMNS = ["id", "formula", "n_atoms", "eps_poly", "n", "eps_inf", "polarisability", "becs", "flags",
                "model_sha256"]
RESPONSE_QUANTITIES = ("polarisation", "becs", "polarisability")
IONIC_COLUMNS = ["eps_ion", "eps_0", "eps_0_poly", "unstable_modes_cm", "relaxed"]
# what each column holds, with its unit: <out stem>.meta.json, beside the table
COLUMN_UNITS = {
    "id": ("", "resolved path of the file, @frame for later frames"),
    "formula": ("", "reduced formula"), "n_atoms": ("", "atoms in the cell"),
    "eps_poly": ("1", "mean eigenvalue of eps_inf (relative permittivity, clamped ions)"),
    "n": ("1", "refractive index sqrt(eps_poly); empty where eps_inf is not positive"),
    "eps_inf": ("1", "3x3 JSON, eps_inf = I + alpha/eps0"),
    "polarisability": ("e/(V*A)", "alpha, 3x3 JSON"),
    "becs": ("e", "Z*, JSON [[atom 0: 9 values row-major], ...], Z*[k,i,j] = d(Omega P_i)/dR_kj; tidy per "
                  "atom in <stem>.becs.csv"),
    "flags": ("", "';'-separated reasons not to trust the row (mf_lightning.model.validity)"),
    "model_sha256": ("", "checksum of the model that predicted the row"),
    "eps_ion": ("1", "3x3 JSON, ionic part from the model's Hessian; empty beside unstable modes"),
    "eps_0": ("1", "3x3 JSON, eps_inf + eps_ion; empty beside unstable modes"),
    "eps_0_poly": ("1", "mean eigenvalue of eps_0"), "unstable_modes_cm": ("cm^-1", "imaginary modes, as negatives"),
    "relaxed": ("", "the relaxation converged to --fmax"),
}
BECS_COLUMNS = ["id", "atom", "element"] + [f"Z_{i}{j}" for i in "xyz" for j in "xyz"]
# an ensemble's columns: the spread (sigma) beside each observable, and P with its spread
_SIGMA = "sigma (ensemble spread, calibrated where the ensemble is: see uncertainty) of "
COLUMN_UNITS.update({
    "eps_poly_std": ("1", _SIGMA + "eps_poly"), "n_std": ("1", _SIGMA + "n"),
    "eps_inf_std": ("1", _SIGMA + "each component of eps_inf, 3x3 JSON"),
    "polarisability_std": ("e/(V*A)", _SIGMA + "each component of alpha, 3x3 JSON"),
    "becs_std": ("e", _SIGMA + "each component of Z*, as becs"),
    "polarisation": ("e/A^2", "P, 3 values JSON, defined modulo the polarisation quantum (the members' P on one "
                              "branch, the first member's); x 1602.18 = uC/cm^2. A model with "
                              "per-element Born charges (cross-chemistry presets) adds (1/Omega) sum q'r, which "
                              "moves by q a / Omega, not a quantum, if the file wraps an atom differently: compare "
                              "P between structures only as written by one tool"),
    "polarisation_std": ("e/A^2", _SIGMA + "each component of P"),
    "eps_0_std": ("1", _SIGMA + "each component of eps_0 from each member's Hessian and Z*, uncalibrated; empty "
                       "where a member has unstable modes"),
    "eps_0_poly_std": ("1", _SIGMA + "eps_0_poly, uncalibrated"),
})
# --piezo: one column per component of the proper piezoelectric stress tensors, e_<kind>_<i><alpha>
PIEZO_KINDS = {
    "clamped": "clamped-ion (atoms follow the strain, fractional coordinates fixed)",
    "relaxed": "relaxed-ion (clamped + internal relaxation through the model's Hessian and Z*, the DFPT 'total'); "
               "empty beside unstable or charged soft modes (flagged)",
}
PIEZO_COLUMNS = [f"e_{kind}_{i}{a + 1}" for kind in PIEZO_KINDS for i in "xyz" for a in range(len(VOIGT_LABELS))]


def _piezo_units() -> Dict[str, Tuple[str, str]]:
    out = {}
    for name in PIEZO_COLUMNS:
        kind, component = name[2:].split("_")
        i, a = component[0], int(component[1]) - 1
        out[name] = ("C/m^2", f"proper {PIEZO_KINDS[kind]} piezoelectric stress tensor e_{{{i},{VOIGT_LABELS[a]}}} "
                              f"(Voigt {a + 1}; multiplies the engineering strain, no factor 2 on shears)")
        out[name + "_std"] = ("C/m^2", f"sigma (ensemble spread: std of the members' own tensors, raw) of {name}")
    return out


COLUMN_UNITS.update(_piezo_units())
PER_ATOM = ("becs", "forces")


def table_columns(ionic: bool, relax: bool, ensemble: bool = False, piezo: bool = False) -> List[str]:
    """The table's columns for these options; an ensemble's ``_std`` beside each observable."""
    base = BASE_COLUMNS + (IONIC_COLUMNS if ionic else ["relaxed"] if relax else []) + (
        PIEZO_COLUMNS if piezo else [])
    if not ensemble:
        return base
    out = []
    for c in base:
        out += [c, c + "_std"] if c + "_std" in COLUMN_UNITS else [c]
        out += ["polarisation", "polarisation_std"] if c == "becs" else []
    return out


def becs_columns(ensemble: bool = False) -> List[str]:
    return BECS_COLUMNS + ([c + "_std" for c in BECS_COLUMNS[3:]] if ensemble else [])


def per_structure(arrays: Dict[str, np.ndarray], ptr) -> List[Dict[str, np.ndarray]]:
    """A batch's outputs (``q``, and an ensemble's ``q_std`` and ``q_members`` with the members
    first) cut into one dict per structure (per-atom quantities by ``ptr``)."""
    def cut(name, v, g):
        base = name.rsplit("_", 1)[0] if name.endswith(("_std", "_members")) else name
        part = slice(ptr[g], ptr[g + 1]) if base in PER_ATOM else g
        return v[:, part] if name.endswith("_members") else v[part]

    return [{k: cut(k, v, g) for k, v in arrays.items()} for g in range(len(ptr) - 1)]



# ---------------------------------------------------------------------- inputs






def check_structure(atoms, atomic_numbers: Sequence[int], source: str = "structure",
                    r_max: Optional[float] = None) -> None:
    """Raise ValueError with a clear reason if the model cannot give P/Z*/alpha for ``atoms``;
    with ``r_max``, also if its neighbour list would not finish (both engines: TorchSim's vesin
    list bins space like mace's)."""
    from mf_lightning.data.graphs import check_elements, check_geometry, check_neighbour_list

    if len(atoms) == 0:
        raise ValueError("no atoms")
    check_geometry(atoms, source)
    if not all(atoms.pbc):
        raise ValueError("not periodic in 3D (P, Z* and alpha need a bulk crystal)")
    volume = abs(float(np.linalg.det(atoms.get_cell().array)))
    if not np.isfinite(volume) or volume < 1e-6:
        raise ValueError(f"cell is missing or singular (volume {volume:.3g} A^3)")
    check_elements(atoms.get_atomic_numbers(), atomic_numbers, source)
    if r_max is not None:
        check_neighbour_list(atoms, r_max, source)


# ---------------------------------------------------------------------- model
def predict_response(model, structures: Sequence, head: Optional[str] = None, field=(0.0, 0.0, 0.0),
                     dtype=None, quantities: Sequence[str] = RESPONSE_QUANTITIES,
                     ids: Optional[Sequence[str]] = None) -> List[Dict[str, np.ndarray]]:
    """Energy and ``quantities`` (of P, Z*, alpha) for a list of Atoms in one batched forward
    (and backward) pass. P alone needs only first derivatives: far less memory than Z*/alpha."""
    from mf_lightning.data import keys
    from mf_lightning.data.graphs import atoms_to_graph, collate

    unknown = set(quantities) - set(RESPONSE_QUANTITIES)
    if unknown:
        raise ValueError(f"unknown quantities {sorted(unknown)}; choose from {RESPONSE_QUANTITIES}")
    dtype = dtype or model.dtype
    head = model.resolve_head(head, quantities)
    graphs = [atoms_to_graph(a, model.atomic_numbers, model.r_max, heads=model.heads, head=head,
                             electric_field=np.asarray(field, dtype=float),
                             source=ids[i] if ids else f"structure {i}")
              for i, a in enumerate(structures)]
    batch = collate(graphs, dtype=dtype, device=next(model.parameters()).device)
    out = model(batch, properties=(keys.ENERGY, *quantities))
    ptr = batch[keys.PTR].cpu().numpy()
    arrays = {q + sfx: out[q + sfx].detach().cpu().double().numpy() for q in (keys.ENERGY, *quantities)
              for sfx in ("", "_std", "_members") if q + sfx in out}  # an ensemble's spread and members too
    return per_structure(arrays, ptr)


def batches(items: Iterable[Item], max_atoms: int, max_structures: int) -> Iterator[List[Item]]:
    """Group (id, Atoms) items into batches of at most ``max_atoms`` atoms (a larger structure
    goes alone); error items travel alone."""
    current: List[Item] = []
    atoms_in = 0
    for item in items:
        value = item[1]
        size = 0 if isinstance(value, Exception) else len(value)
        if current and (atoms_in + size > max_atoms or len(current) >= max_structures):
            yield current
            current, atoms_in = [], 0
        current.append(item)
        atoms_in += size
    if current:
        yield current


# ---------------------------------------------------------------------- output
def _json(a, digits: int = 6) -> str:
    return json.dumps(np.round(np.asarray(a, dtype=float), digits).tolist())


def check_table(path: Path, columns: List[str]) -> None:
    """An existing ``--out`` must be one of this tool's tables with these columns; anything else
    (a model file, another CSV, a table of other options) is refused before a byte is changed."""
    if not path.exists() or path.stat().st_size == 0:
        return
    with open(path, "rb") as fh:
        first = fh.readline(1 << 16)
    header = first.decode("utf-8", errors="replace").strip().split(",")
    if header != columns:
        what = "a table with other columns" if header[:1] == ["id"] else "not a table of this tool"
        raise InputError(f"--out {path} exists and is {what}: use another --out, or the same options as the "
                         "run that wrote it")


def check_model_of_table(path: Path, model_sha: str) -> None:
    """Resuming a table with another model would mix two models' predictions: refused."""
    if not path.exists() or path.stat().st_size == 0:
        return
    with open(path, newline="") as fh:
        others = {row.get("model_sha256") for row in csv.DictReader(fh)} - {None, "", model_sha}
    if others:
        raise InputError(f"--out {path} holds predictions of another model (sha256 {sorted(others)[0][:12]}...), "
                         f"not of this one ({model_sha[:12]}...): use another --out")


def read_done_ids(path: Path) -> set:
    """Ids already in a (possibly interrupted) output table; a last line cut short by a kill
    (no newline at the end) is removed so the table stays valid CSV."""
    if not path.exists() or path.stat().st_size == 0:
        return set()
    data = path.read_bytes()
    if not data.endswith(b"\n"):
        cut = data.rfind(b"\n") + 1
        with open(path, "r+b") as fh:
            fh.truncate(cut)
        log.warning("%s: dropped an incomplete last line (interrupted write)", path)
    with open(path, newline="") as fh:
        return {row["id"] for row in csv.DictReader(fh) if row.get("id")}




def _number(value: float) -> str:
    """A table cell: empty where the number does not exist (NaN), never a made-up 0."""
    return f"{value:.6g}" if np.isfinite(value) else ""


def _tensor(a, digits: int = 6) -> str:
    return _json(a, digits) if np.all(np.isfinite(a)) else ""


def row_for(ident: str, atoms, response: Dict[str, np.ndarray], training_elements=None,
            ensemble=None) -> Dict[str, Any]:
    """One table row; with ``ensemble`` (the model, an ensemble) its ``_std`` columns and
    ``high_uncertainty`` flags too."""
    from mf_lightning.analysis.dielectric import eps_inf_from_alpha, eps_poly, refractive_index
    from mf_lightning.data.reader import reduced_formula
    from mf_lightning.model.validity import response_flags

    eps = eps_inf_from_alpha(response["polarisability"])
    row = {"id": ident, "formula": reduced_formula(atoms), "n_atoms": len(atoms),
           "eps_poly": _number(float(eps_poly(eps))), "n": _number(float(refractive_index(eps))),
           "eps_inf": _json(eps), "polarisability": _json(response["polarisability"], 8),
           "becs": _json(response["becs"].reshape(len(atoms), 9))}
    sigmas = thresholds = None
    if ensemble is not None:
        from mf_lightning.model.uncertainty import derived_spreads, structure_sigmas

        spread = derived_spreads(response["polarisability_members"], ensemble.sigma_scale("polarisability"))
        row.update(eps_poly_std=_number(float(spread["eps_poly"])), n_std=_number(float(spread["n"])),
                   eps_inf_std=_json(spread["eps_inf"]), polarisability_std=_json(response["polarisability_std"], 8),
                   becs_std=_json(response["becs_std"].reshape(len(atoms), 9)),
                   polarisation=_json(response["polarisation"], 8),
                   polarisation_std=_json(response["polarisation_std"], 8))
        sigmas = structure_sigmas({q: response.get(q + "_std") for q in RESPONSE_QUANTITIES}, len(atoms))
        thresholds = ensemble.thresholds()
    row["flags"] = response_flags(atoms.get_atomic_numbers(), becs=response["becs"],
                                  polarisability=response["polarisability"], training_elements=training_elements,
                                  uncertainty=sigmas, uncertainty_thresholds=thresholds)
    return row


def write_relaxed(path: Path, items: Sequence[Tuple[str, Any]]) -> None:
    """Append relaxed structures to an extxyz (``id`` in each frame's info), flushed."""
    import ase.io

    path.parent.mkdir(parents=True, exist_ok=True)
    frames = []
    for ident, atoms in items:
        a = atoms.copy()
        a.calc = None
        a.info = {"id": ident}
        frames.append(a)
    with open(path, "a") as fh:
        ase.io.write(fh, frames, format="extxyz")
        fh.flush()


def prune_relaxed(path: Path, keep: set) -> None:
    """Drop frames of ids not in ``keep`` from a relaxed-structures file (see :func:`prune_to`)."""
    if not path.exists() or path.stat().st_size == 0:
        return
    import ase.io

    from mf_lightning.files import atomic_open

    frames = ase.io.read(path, index=":", format="extxyz")
    kept = [a for a in frames if a.info.get("id") in keep]
    if len(kept) != len(frames):
        with atomic_open(path, "w") as fh:
            ase.io.write(fh, kept, format="extxyz")


def check_finite(response: Dict[str, np.ndarray]) -> None:
    bad = [q for q, v in response.items() if not np.all(np.isfinite(v))]
    if bad:
        raise ValueError(f"non-finite prediction of {', '.join(bad)} (overlapping atoms? a model file gone bad?)")


def becs_rows(ident: str, atoms, becs: np.ndarray, becs_std: Optional[np.ndarray] = None) -> List[Dict[str, Any]]:
    """The tidy per-atom table: one row per atom, one column per component (``Z_ij``: field /
    polarisation direction i, displacement direction j), and an ensemble's ``Z_ij_std``."""
    components = BECS_COLUMNS[3:]
    std = [None] * len(atoms) if becs_std is None else np.asarray(becs_std).reshape(-1, 3, 3)
    rows = []
    for k, (sym, z, sz) in enumerate(zip(atoms.get_chemical_symbols(), np.asarray(becs).reshape(-1, 3, 3), std)):
        row = {"id": ident, "atom": k, "element": sym, **{c: f"{v:.6g}" for c, v in zip(components, z.ravel())}}
        if sz is not None:
            row.update({c + "_std": f"{v:.6g}" for c, v in zip(components, sz.ravel())})
        rows.append(row)
    return rows


def _pm(value: str, std: Optional[str], digits: int = 3) -> str:
    """``value``, with ``+-std`` where an ensemble gave one."""
    return f"{value}±{float(std):.{digits}f}" if value not in ("", "-") and std else value


def summary_row(row: Dict[str, Any], atoms, becs: np.ndarray, becs_members: Optional[np.ndarray] = None,
                becs_scale=1.0) -> Dict[str, str]:
    """One line of the table ``mf-predict`` prints: eps_inf's mean and anisotropy (largest minus
    smallest eigenvalue), n, eps_0 if computed, tr Z*/3 per element, flags; an ensemble's sigma
    as ``±`` (tr Z*/3 per element: its spread over the members' Z*, ``becs_members``)."""
    eps = np.array(json.loads(row["eps_inf"]))
    w = np.linalg.eigvalsh(0.5 * (eps + eps.T))
    diag = np.trace(np.asarray(becs).reshape(-1, 3, 3), axis1=1, axis2=2) / 3
    symbols = np.array(atoms.get_chemical_symbols())
    elements = list(dict.fromkeys(symbols))
    z_std = {}
    if becs_members is not None:
        from mf_lightning.model.uncertainty import diagonal_factor, member_std

        members = np.trace(np.asarray(becs_members).reshape(len(becs_members), -1, 3, 3), axis1=2, axis2=3) / 3
        factor = diagonal_factor(becs_scale)  # tr Z*/3: the diagonal's
        z_std = {el: f"{member_std(members[:, symbols == el].mean(1), factor):.2f}" for el in elements}
    z = " ".join(_pm(f"{el} {diag[symbols == el].mean():+.2f}", z_std.get(el), 2) for el in elements)
    return {"formula": row["formula"], "eps_inf": _pm(f"{w.mean():.3f}", row.get("eps_poly_std")),
            "aniso": f"{w.max() - w.min():.3f}", "n": _pm(row["n"] or "-", row.get("n_std")),
            "eps_0": _pm(row.get("eps_0_poly", "") or "-", row.get("eps_0_poly_std")), "Z* (e)": z,
            "flags": row["flags"] or "-"}


def prune_to(path: Path, keep: set, columns: List[str]) -> None:
    """Drop rows of ids not in ``keep`` from a side table (rows of a structure whose main row a
    kill cut off are written again on resume)."""
    if not path.exists() or path.stat().st_size == 0:
        return
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    kept = [r for r in rows if r.get("id") in keep]
    if len(kept) != len(rows):
        from mf_lightning.files import atomic_open

        with atomic_open(path, "w") as fh:
            writer = csv.DictWriter(fh, fieldnames=columns)
            writer.writeheader()
            writer.writerows(kept)


# the flags of a harmonic step (eps_ion, the relaxed-ion piezoelectric tensor)
HARMONIC_FLAGS = ("unstable_modes", "soft_modes", "not_at_minimum")


def ionic_columns(calc, atoms, max_memory: Optional[float] = None) -> Dict[str, Any]:
    """eps_ion, eps_0 (empty beside unstable modes: flagged, never 0) and the unstable modes;
    ``flags`` holds the structure's flags of the ionic step, ``hessians`` the Hessian of each member
    (for :func:`piezo_columns`)."""
    from mf_lightning.analysis.dielectric import dielectric_properties, eps_poly

    props = dielectric_properties(calc, atoms, ionic=True, max_memory=max_memory)
    out = {"eps_ion": _tensor(props["eps_ion"]), "eps_0": _tensor(props["eps_0"]),
           "eps_0_poly": _number(float(eps_poly(props["eps_0"]))) if np.all(np.isfinite(props["eps_0"])) else "",
           "unstable_modes_cm": _json(props["unstable_modes_cm"], 1),
           "flags": [f for f in props["flags"] if f in HARMONIC_FLAGS], "hessians": props["hessians"]}
    if "eps_0_std" in props:  # an ensemble: eps_0 of each member
        out.update(eps_0_std=_tensor(props["eps_0_std"]), eps_0_poly_std=_number(float(props["eps_0_poly_std"])))
    return out


def piezo_columns(model, atoms, head: Optional[str], field, hessians=None, max_memory: Optional[float] = None,
                  allow_untrained: bool = False) -> Dict[str, Any]:
    """The ``e_clamped_*`` and ``e_relaxed_*`` columns (C/m^2; empty where NaN) of ``atoms``, with the
    ``hessians`` of :func:`ionic_columns` where eps_ion was computed (else a Hessian within
    ``max_memory``); an ensemble's ``_std`` too. ``flags``: the structure's flags of this harmonic step."""
    from mf_lightning.analysis.piezo import piezo_of
    from mf_lightning.model.validity import response_flags

    p = piezo_of(model, atoms, field=field, head=head, hessians=hessians, max_memory=max_memory,
                 allow_untrained=allow_untrained)
    out: Dict[str, Any] = {}
    for kind in PIEZO_KINDS:
        for sfx in ("", "_std"):
            e = p.get(f"e_{kind}_voigt{sfx}")
            if e is not None:
                out.update({f"e_{kind}_{i}{a + 1}{sfx}": _number(float(e[k, a]))
                            for k, i in enumerate("xyz") for a in range(6)})
    flags = response_flags(atoms.get_atomic_numbers(), unstable_modes=p["unstable_modes_cm"],
                           soft_modes=p["soft_polar_modes_cm"], max_force=p["max_force"])
    out["flags"] = [f for f in flags if f in HARMONIC_FLAGS]
    return out


def needed_quantities(ionic: bool, relax: bool, relax_cell: bool) -> List[str]:
    """What the head must have learned for these options: the response always, energies and
    forces for a relaxation or the Hessian, the stress for a cell relaxation."""
    return ["becs", "polarisability"] + (["energy", "forces"] if ionic or relax else []) + (
        ["stress"] if relax and relax_cell else [])


def harmonic_columns(runner: "Engine", atoms, ionic: bool, piezo: bool,
                     max_memory: Optional[float] = None) -> Dict[str, Any]:
    """The ``--ionic`` and ``--piezo`` columns of one structure (either engine: one Hessian per
    member, shared) and their ``flags``, each once."""
    out: Dict[str, Any] = {"flags": []}
    hessians = None
    if ionic:
        out.update(ionic_columns(runner.calc, atoms, max_memory=max_memory))
        hessians = out.pop("hessians")
    if piezo:
        pz = piezo_columns(runner.model, atoms, runner.head, runner.field, hessians=hessians, max_memory=max_memory,
                           allow_untrained=runner.allow_untrained)
        out["flags"] += [f for f in pz.pop("flags") if f not in out["flags"]]
        out.update(pz)
    return out


ENGINES = ("ase", "torchsim")


class Engine:
    """How a batch of structures is relaxed and its response computed. ``ase``: response in one
    batched forward of the model, relaxation structure by structure with ASE's BFGS
    (:func:`mf_lightning.analysis.dielectric.relax_structure`); ``torchsim``: both batched through
    TorchSim (:class:`mf_lightning.simulation.torchsim.FieldMaceModel`, its batched FIRE, cell too with its
    Frechet-cell FIRE)."""

    def __init__(self, name: str, model, head: Optional[str], field, fmax: float, relax_cell: bool,
                 relax_steps: int = 500, allow_untrained: bool = False):
        if name not in ENGINES:
            raise InputError(f"unknown engine {name!r}; choose from {', '.join(ENGINES)}")
        self.name, self.model, self.head, self.field = name, model, head, field
        self.allow_untrained = bool(allow_untrained)
        self.fmax, self.relax_cell, self.relax_steps = float(fmax), bool(relax_cell), int(relax_steps)
        self._calc = self._ts_response = self._ts_forces = None

    @property
    def calc(self):
        if self._calc is None:
            from mf_lightning.simulation.calculator import MACEFieldCalculator

            self._calc = MACEFieldCalculator(self.model, electric_field=self.field, head=self.head,
                                             allow_untrained=self.allow_untrained)
        return self._calc

    def _ts(self, response: bool):
        from mf_lightning.simulation.torchsim import FieldMaceModel

        device = next(self.model.parameters()).device
        return FieldMaceModel(self.model, device=device, dtype=self.model.dtype, electric_field=self.field,
                              head=self.head, compute_forces=not response,
                              compute_stress=self.relax_cell and not response,
                              response=RESPONSE_QUANTITIES if response else ())

    def response(self, structures: Sequence, ids: Sequence[str], relaxed: bool = False) -> List[Dict[str, np.ndarray]]:
        """P, Z*, alpha per structure. Structures as read were checked by :func:`screen`; ``relaxed``
        ones are checked again (a relaxation can move atoms onto each other): the ASE path's graph
        construction checks them anyway, the TorchSim path here."""
        if self.name == "ase":
            return predict_response(self.model, structures, head=self.head, field=self.field, ids=ids)
        import torch
        import torch_sim as ts

        if self._ts_response is None:
            self._ts_response = self._ts(response=True)
        for ident, atoms in zip(ids, structures) if relaxed else ():
            check_structure(atoms, self.model.atomic_numbers, source=ident, r_max=self.model.r_max)
        state = ts.io.atoms_to_state(list(structures), device=self._ts_response.device, dtype=self.model.dtype)
        out = self._ts_response(state)
        ptr = np.concatenate([[0], np.cumsum([len(a) for a in structures])])
        arrays = {q: v.cpu().double().numpy() for q, v in out.items() if isinstance(v, torch.Tensor)}
        return per_structure(arrays, ptr)

    def relax(self, structures: Sequence) -> Tuple[List, List[bool]]:
        """Relaxed copies and whether each converged to ``fmax``."""
        from mf_lightning.analysis.dielectric import relax_structure

        if self.name == "ase":
            copies = [a.copy() for a in structures]
            return copies, [relax_structure(a, self.calc, fmax=self.fmax, steps=self.relax_steps,
                                            relax_cell=self.relax_cell) for a in copies]
        import torch_sim as ts

        if self._ts_forces is None:
            self._ts_forces = self._ts(response=False)
        optimizer = ts.optimizers.frechet_cell_fire if self.relax_cell else ts.optimizers.fire
        converged = ts.generate_force_convergence_fn(force_tol=self.fmax, include_cell_forces=self.relax_cell)
        import warnings

        with warnings.catch_warnings():  # "reached max steps": reported per structure below instead
            warnings.simplefilter("ignore")
            state = ts.optimize(system=list(structures), model=self._ts_forces, optimizer=optimizer,
                                convergence_fn=converged, max_steps=2 * self.relax_steps)  # FIRE: ~2x BFGS's steps
        relaxed = ts.io.state_to_atoms(state)
        for a, original in zip(relaxed, structures):
            a.info = dict(original.info)
        forces = self._ts_forces(state)["forces"].cpu().numpy()
        ptr = np.concatenate([[0], np.cumsum([len(a) for a in relaxed])])
        return relaxed, [bool(np.linalg.norm(forces[ptr[g]:ptr[g + 1]], axis=1).max() < self.fmax)
                         for g in range(len(relaxed))]


def screen(items: Iterable[Item], model, out: Path, head: Optional[str] = None, field=(0.0, 0.0, 0.0),
           ionic: bool = False, relax: bool = False, fmax: float = 0.01, relax_cell: bool = False,
           max_atoms: int = 2000, max_structures: int = 64, progress: bool = True,
           total: Optional[int] = None, engine: str = "ase", allow_untrained: bool = False,
           max_memory: Optional[float] = None, relaxed_out: Optional[Path] = None,
           summary_rows: int = 30, piezo: bool = False) -> Dict[str, Any]:
    """Predict every (id, Atoms) item not already in ``out``; returns counts (and ``flags``, the
    flag strings of the rows written). With ``relax`` every column describes the relaxed
    structure (relaxed first, by ``engine``). A head that never learned what the options need
    (:func:`needed_quantities`) is refused before anything is written, unless
    ``allow_untrained`` (every row is then flagged ``untrained``). With ``ionic`` structures go
    one at a time, each row written as soon as it is done (a kill loses at most the structure
    being computed), and each Hessian is sized to ``max_memory`` bytes
    (:func:`mf_lightning.analysis.dielectric.model_hessian`). ``piezo``: the piezoelectric columns
    (module docstring), also one structure at a time, reusing eps_ion's Hessian with ``ionic``.

    Beside ``out``: ``<stem>.becs.csv`` (Z* per atom, one column per component),
    ``<stem>.meta.json`` (each column's unit and meaning, the model, the options and any
    ``allow_untrained`` warning), ``<stem>.errors.csv`` only if something failed, and with
    ``relaxed_out`` an extxyz of the relaxed structures. ``counts["summary"]`` holds the first
    ``summary_rows`` rows of :func:`summary_row`."""
    out = Path(out)
    errors_path = out.with_name(out.stem + ".errors.csv")
    ensemble = hasattr(model, "members")
    columns = table_columns(ionic, relax, ensemble, piezo)
    head = model.resolve_head(head, RESPONSE_QUANTITIES)  # a wrong head is the user's, not a structure's
    warnings = []
    if piezo:  # the field response and the forces (the relaxed-ion tensor's Hessian): refused up front
        from mf_lightning.analysis.piezo import check_piezo_learned

        warnings += check_piezo_learned(model, head, relaxed=True, allow_untrained=allow_untrained)
    what = "eps_ion (--ionic: the Hessian)" if ionic else "a relaxation (--relax)" if relax else "the response"
    warnings.append(model.check_learned(needed_quantities(ionic, relax, relax_cell), what, head=head,
                                        allow_untrained=allow_untrained))
    warnings = [w for w in dict.fromkeys(warnings) if w]
    if ionic or piezo:
        max_structures = 1  # the Hessian dominates: write each row as soon as it is done
    check_table(out, columns)  # before anything is truncated or appended
    from mf_lightning.model.io import model_checksum

    model_sha = model_checksum(model)
    check_model_of_table(out, model_sha)
    runner = Engine(engine, model, head, field, fmax, relax_cell, allow_untrained=allow_untrained)
    meta = {"columns": {c: {"unit": COLUMN_UNITS[c][0], "meaning": COLUMN_UNITS[c][1]} for c in columns},
            "becs_table": {"file": out.stem + ".becs.csv", "unit": "e",
                           "columns": "Z_ij = d(Omega P_i)/dR_j of the atom"
                                      + ("; Z_ij_std its sigma (ensemble spread)" if ensemble else "")},
            "model_sha256": model_sha, "head": head,
            "options": {"field_V_per_A": [float(x) for x in field], "ionic": ionic, "relax": relax,
                        "relax_cell": relax_cell, "fmax_eV_per_A": fmax, "engine": engine,
                        "allow_untrained": allow_untrained, "piezo": piezo},
            "warnings": warnings}
    if ensemble:  # what the _std columns mean, calibrated or not, and the high_uncertainty thresholds
        meta["uncertainty"] = model.uncertainty_metadata()
    with FileLock(Path(str(out) + ".lock"), f"{out}: another process is writing this table"):
        from mf_lightning.files import atomic_write_text, dumps_json

        atomic_write_text(out.with_name(out.stem + ".meta.json"), dumps_json(meta))
        return _screen(items, model, out, errors_path, columns, model_sha, ionic, relax, runner,
                       max_atoms, max_structures, progress, total, untrained=bool(warnings),
                       max_memory=max_memory, relaxed_out=relaxed_out, summary_rows=summary_rows, piezo=piezo)


def _isolated(fn, items: List[Item], failures: List) -> List:
    """``fn`` over the whole list, or, if that fails, item by item: one bad structure never
    takes its batch with it. Returns one result per item (None where it failed)."""
    if not items:
        return []
    try:
        return list(fn(items))
    except Exception:  # noqa: BLE001 - isolate the structure that fails
        results = []
        for item in items:
            try:
                results.append(fn([item])[0])
            except Exception as exc:  # noqa: BLE001
                results.append(None)
                failures.append((item[0], exc))
        return results


def _screen(items, model, out, errors_path, columns, model_sha, ionic, relax, runner: Engine,
            max_atoms, max_structures, progress, total, untrained: bool = False,
            max_memory: Optional[float] = None, relaxed_out: Optional[Path] = None,
            summary_rows: int = 30, piezo: bool = False) -> Dict[str, Any]:
    from mf_lightning.model.validity import join

    done = read_done_ids(out)
    becs_path = out.with_name(out.stem + ".becs.csv")
    ensemble = model if hasattr(model, "members") else None
    per_atom_columns = becs_columns(ensemble is not None)
    prune_to(becs_path, done, per_atom_columns)
    if relaxed_out is not None:
        prune_relaxed(relaxed_out, done)
    writer = TableWriter(out, columns)
    becs_writer = TableWriter(becs_path, per_atom_columns)
    error_writer = TableWriter(errors_path, ["id", "error"], fresh=True)  # failures are retried on resume
    counts: Dict[str, Any] = {"done_before": len(done), "predicted": 0, "failed": 0, "flags": [], "summary": []}
    training_elements = getattr(model, "training_elements", None)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total, unit="structure", desc="screening", file=sys.stderr, dynamic_ncols=True)

    def pending() -> Iterator[Item]:
        for ident, value in items:
            if ident in done:
                if bar is not None:
                    bar.update(1)
                continue
            if not isinstance(value, Exception):
                try:
                    check_structure(value, model.atomic_numbers, source=ident, r_max=model.r_max)
                except ValueError as exc:
                    value = exc
            yield ident, value

    try:
        for group in batches(pending(), max_atoms, max_structures):
            rows, failures, per_atom, relaxed_atoms = [], [], [], []
            good = [(i, a) for i, a in group if not isinstance(a, Exception)]
            failures += [(i, a) for i, a in group if isinstance(a, Exception)]
            converged: Dict[str, bool] = {}
            if relax:
                def relax_items(batch):
                    relaxed, flags = runner.relax([a for _, a in batch])
                    return [((i, r), f) for (i, _), r, f in zip(batch, relaxed, flags)]

                done_relax = [r for r in _isolated(relax_items, good, failures) if r is not None]
                good = [item for item, _ in done_relax]
                converged = {item[0]: flag for item, flag in done_relax}
            responses = _isolated(lambda batch: runner.response([a for _, a in batch], [i for i, _ in batch], relax),
                                  good, failures)
            for (ident, atoms), response in zip(good, responses):
                if response is None:
                    continue
                try:
                    check_finite(response)
                except ValueError as exc:
                    failures.append((ident, exc))
                    continue
                row = {**row_for(ident, atoms, response, training_elements, ensemble), "model_sha256": model_sha}
                flags = row["flags"]
                if relax:
                    row["relaxed"] = converged[ident]
                    if not converged[ident]:
                        flags.append("relax_not_converged")
                try:
                    harmonic = harmonic_columns(runner, atoms, ionic, piezo, max_memory)
                except Exception as exc:  # noqa: BLE001 - an error row, the others kept
                    failures.append((ident, exc))
                    continue
                flags += [f for f in harmonic.pop("flags") if f not in flags]
                row.update(harmonic)
                if untrained:
                    flags.append("untrained")
                row["flags"] = join(flags)
                counts["flags"].append(row["flags"])
                if len(counts["summary"]) < summary_rows:
                    counts["summary"].append(summary_row(
                        row, atoms, response["becs"], response.get("becs_members"),
                        ensemble.sigma_scale("becs") if ensemble is not None else 1.0))
                per_atom += becs_rows(ident, atoms, response["becs"], response.get("becs_std"))
                if relax and relaxed_out is not None:
                    relaxed_atoms.append((ident, atoms))
                rows.append(row)
            becs_writer.write(per_atom)  # before the main rows: a resume prunes what they lack
            if relaxed_atoms:
                write_relaxed(relaxed_out, relaxed_atoms)
            writer.write(rows)
            error_writer.write([{"id": i, "error": f"{type(e).__name__}: {e}"} for i, e in failures])
            for ident, exc in failures:
                log.warning("skipped %s: %s", ident, exc)
            counts["predicted"] += len(rows)
            counts["failed"] += len(failures)
            if bar is not None:
                bar.update(len(group))
    finally:
        writer.close()
        becs_writer.close()
        error_writer.close()
        if bar is not None:
            bar.close()
    return counts
