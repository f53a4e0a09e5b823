"""Dielectric screening: ``mf-predict STRUCTURES... --model model.pt --out table.csv``.

Inputs are files (CIF, POSCAR/CONTCAR, ``*.vasp``, extxyz, anything ASE reads; multi-frame files
give one row per frame) and folders (searched recursively for those). Per structure the table has
Z* per site, alpha, the eps_inf tensor, eps_poly and n (and with ``--ionic`` eps_ion and eps_0,
optionally after ``--relax``); tensors are JSON lists in their cells (row-major 3x3; Z* as
``[[site 0: 9 values], ...]`` with ``Z*[k, i, j] = d(Omega P_i)/dR_kj``).

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
model barely saw) and the tool ends with a line counting the flagged rows. A head that never
learned what the options need (forces for ``--relax``/``--ionic``) is refused up front.
"""

from __future__ import annotations

import csv
import json
import logging
import sys
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np

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
    arrays = {q: out[q].detach().cpu().double().numpy() for q in (keys.ENERGY, *quantities)}
    per_atom = {keys.BECS}
    return [{q: (v[ptr[g]:ptr[g + 1]] if q in per_atom else v[g]) for q, v in arrays.items()}
            for g in range(len(structures))]


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


def row_for(ident: str, atoms, response: Dict[str, np.ndarray], training_elements=None) -> Dict[str, Any]:
    from mf_lightning.analysis.dielectric import eps_inf_from_alpha, eps_poly, refractive_index
    from mf_lightning.data.reader import reduced_formula
    from mf_lightning.model.validity import response_flags

    eps = eps_inf_from_alpha(response["polarisability"])
    flags = response_flags(atoms.get_atomic_numbers(), becs=response["becs"],
                           polarisability=response["polarisability"], training_elements=training_elements)
    return {"id": ident, "formula": reduced_formula(atoms), "n_atoms": len(atoms),
            "eps_poly": _number(float(eps_poly(eps))), "n": _number(float(refractive_index(eps))),
            "eps_inf": _json(eps), "polarisability": _json(response["polarisability"], 8),
            "becs": _json(response["becs"].reshape(len(atoms), 9)), "flags": flags}


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


def becs_rows(ident: str, atoms, becs: np.ndarray) -> List[Dict[str, Any]]:
    """The tidy per-atom table: one row per atom, one column per component (``Z_ij``: field /
    polarisation direction i, displacement direction j)."""
    return [{"id": ident, "atom": k, "element": sym, **{c: f"{v:.6g}" for c, v in zip(BECS_COLUMNS[3:], z.ravel())}}
            for k, (sym, z) in enumerate(zip(atoms.get_chemical_symbols(), np.asarray(becs).reshape(-1, 3, 3)))]


def summary_row(row: Dict[str, Any], atoms, becs: np.ndarray) -> Dict[str, str]:
    """One line of the table ``mf-predict`` prints: eps_inf's mean and anisotropy (largest minus
    smallest eigenvalue), n, eps_0 if computed, tr Z*/3 per element, flags."""
    eps = np.array(json.loads(row["eps_inf"]))
    w = np.linalg.eigvalsh(0.5 * (eps + eps.T))
    diag = np.trace(np.asarray(becs).reshape(-1, 3, 3), axis1=1, axis2=2) / 3
    symbols = np.array(atoms.get_chemical_symbols())
    z = " ".join(f"{el} {diag[symbols == el].mean():+.2f}" for el in dict.fromkeys(symbols))
    return {"formula": row["formula"], "eps_inf": f"{w.mean():.3f}", "aniso": f"{w.max() - w.min():.3f}",
            "n": row["n"] or "-", "eps_0": row.get("eps_0_poly", "") or "-", "Z* (e)": z, "flags": row["flags"] or "-"}


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


def ionic_columns(calc, atoms, max_memory: Optional[float] = None) -> Dict[str, Any]:
    """eps_ion, eps_0 (empty beside unstable modes: flagged, never 0) and the unstable modes;
    ``flags`` holds the structure's flags of the ionic step."""
    from mf_lightning.analysis.dielectric import dielectric_properties, eps_poly

    props = dielectric_properties(calc, atoms, ionic=True, max_memory=max_memory)
    return {"eps_ion": _tensor(props["eps_ion"]), "eps_0": _tensor(props["eps_0"]),
            "eps_0_poly": _number(float(eps_poly(props["eps_0"]))) if np.all(np.isfinite(props["eps_0"])) else "",
            "unstable_modes_cm": _json(props["unstable_modes_cm"], 1),
            "flags": [f for f in props["flags"] if f in ("unstable_modes", "soft_modes", "not_at_minimum")]}


def needed_quantities(ionic: bool, relax: bool, relax_cell: bool) -> List[str]:
    """What the head must have learned for these options: the response always, energies and
    forces for a relaxation or the Hessian, the stress for a cell relaxation."""
    return ["becs", "polarisability"] + (["energy", "forces"] if ionic or relax else []) + (
        ["stress"] if relax and relax_cell else [])


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
        return [{"energy": arrays["energy"][g], "polarisation": arrays["polarisation"][g],
                 "becs": arrays["becs"][ptr[g]:ptr[g + 1]], "polarisability": arrays["polarisability"][g]}
                for g in range(len(structures))]

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
           summary_rows: int = 30) -> Dict[str, Any]:
    """Predict every (id, Atoms) item not already in ``out``; returns counts (and ``flags``, the
    flag strings of the rows written). With ``relax`` every column describes the relaxed
    structure (relaxed first, by ``engine``). A head that never learned what the options need
    (:func:`needed_quantities`) is refused before anything is written, unless
    ``allow_untrained`` (every row is then flagged ``untrained``). With ``ionic`` structures go
    one at a time, each row written as soon as it is done (a kill loses at most the structure
    being computed), and each Hessian is sized to ``max_memory`` bytes
    (:func:`mf_lightning.analysis.dielectric.model_hessian`).

    Beside ``out``: ``<stem>.becs.csv`` (Z* per atom, one column per component),
    ``<stem>.meta.json`` (each column's unit and meaning, the model, the options and any
    ``allow_untrained`` warning), ``<stem>.errors.csv`` only if something failed, and with
    ``relaxed_out`` an extxyz of the relaxed structures. ``counts["summary"]`` holds the first
    ``summary_rows`` rows of :func:`summary_row`."""
    out = Path(out)
    errors_path = out.with_name(out.stem + ".errors.csv")
    columns = BASE_COLUMNS + (IONIC_COLUMNS if ionic else ["relaxed"] if relax else [])
    head = model.resolve_head(head, RESPONSE_QUANTITIES)  # a wrong head is the user's, not a structure's
    what = "eps_ion (--ionic: the Hessian)" if ionic else "a relaxation (--relax)" if relax else "the response"
    untrained = model.check_learned(needed_quantities(ionic, relax, relax_cell), what, head=head,
                                    allow_untrained=allow_untrained)
    if ionic:
        max_structures = 1  # the Hessian dominates: write each row as soon as it is done
    check_table(out, columns)  # before anything is truncated or appended
    from mf_lightning.model.io import model_checksum

    model_sha = model_checksum(model)
    check_model_of_table(out, model_sha)
    runner = Engine(engine, model, head, field, fmax, relax_cell, allow_untrained=allow_untrained)
    meta = {"columns": {c: {"unit": COLUMN_UNITS[c][0], "meaning": COLUMN_UNITS[c][1]} for c in columns},
            "becs_table": {"file": out.stem + ".becs.csv", "unit": "e",
                           "columns": "Z_ij = d(Omega P_i)/dR_j of the atom"},
            "model_sha256": model_sha, "head": head,
            "options": {"field_V_per_A": [float(x) for x in field], "ionic": ionic, "relax": relax,
                        "relax_cell": relax_cell, "fmax_eV_per_A": fmax, "engine": engine,
                        "allow_untrained": allow_untrained},
            "warnings": [untrained] if untrained else []}
    with FileLock(Path(str(out) + ".lock"), f"{out}: another process is writing this table"):
        from mf_lightning.files import atomic_write_text, dumps_json

        atomic_write_text(out.with_name(out.stem + ".meta.json"), dumps_json(meta))
        return _screen(items, model, out, errors_path, columns, model_sha, ionic, relax, runner,
                       max_atoms, max_structures, progress, total, untrained=bool(untrained),
                       max_memory=max_memory, relaxed_out=relaxed_out, summary_rows=summary_rows)


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
            summary_rows: int = 30) -> Dict[str, Any]:
    from mf_lightning.model.validity import join

    done = read_done_ids(out)
    becs_path = out.with_name(out.stem + ".becs.csv")
    prune_to(becs_path, done, BECS_COLUMNS)
    if relaxed_out is not None:
        prune_relaxed(relaxed_out, done)
    writer = TableWriter(out, columns)
    becs_writer = TableWriter(becs_path, BECS_COLUMNS)
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
                row = {**row_for(ident, atoms, response, training_elements), "model_sha256": model_sha}
                flags = row["flags"]
                if relax:
                    row["relaxed"] = converged[ident]
                    if not converged[ident]:
                        flags.append("relax_not_converged")
                if ionic:
                    try:
                        ion = ionic_columns(runner.calc, atoms, max_memory=max_memory)
                    except Exception as exc:  # noqa: BLE001
                        failures.append((ident, exc))
                        continue
                    flags += ion.pop("flags")
                    row.update(ion)
                if untrained:
                    flags.append("untrained")
                row["flags"] = join(flags)
                counts["flags"].append(row["flags"])
                if len(counts["summary"]) < summary_rows:
                    counts["summary"].append(summary_row(row, atoms, response["becs"]))
                per_atom += becs_rows(ident, atoms, response["becs"])
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
