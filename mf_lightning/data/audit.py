"""Label audit: find reference labels that break physics before a model is trained on them.

Per structure:

* ``asr_violation`` (e): max_ij |sum_k Z*_k,ij| of the reference Born charges (the acoustic sum
  rule says 0). Flagged above ``asr_tol`` (default 0.1 e: DFPT's own ASR error is ~0.01 e).
* ``alpha_asymmetry``: max |alpha - alpha^T| / max |alpha|; flagged above ``asym_tol`` (1e-2).
* ``alpha_min_eig`` (e/(V A)): smallest eigenvalue of the symmetrised alpha; flagged if < 0
  (a negative electronic susceptibility is unphysical: eps_inf < 1 along that direction).
* ``p_off_branch`` (quanta): for an interior frame of a distortion path of 3+ frames, how far
  its P label sits from the linear interpolation of its two neighbours along the path, in
  polarisation quanta Q_k = e a_k / Omega. Flagged (``p_branch``) when it is more than 3/4 of a
  quantum off and a whole-quantum shift brings it within 1/4: a label on another branch. A step
  between consecutive frames larger than half a quantum is *not* a flag: the files hold each path
  on one branch (SPEC 4) and sparse paths really change that much (on ferroelectric-valid.xyz,
  all 10 such steps are between the two ends of 2-frame paths or the first step of a 3-frame
  one; refolding them misreported P_s).
* ``duplicate_of``: the same structure (species, cell and fractional positions to 1e-3) in
  another file or another split.

``mf-audit FILE... --data CONFIG`` writes ``audit.csv`` and
``audit.md``. DataModules can drop flagged structures from training (``drop_flagged``).
"""

from __future__ import annotations

import csv
import hashlib
from collections import defaultdict
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from mf_lightning.data.polarisation import fold_onto, path_coordinates, path_id, polarisation_quanta
from mf_lightning.data.quantities import QUANTITIES
from mf_lightning.data.reader import Record, reduced_formula
from mf_lightning.utils import markdown_table

ASR_TOL = 0.1
ASYM_TOL = 1e-2

def structure_fingerprint(atoms, decimals: int = 3) -> str:
    frac = np.round(atoms.get_scaled_positions(wrap=True) % 1.0, decimals) % 1.0
    rows = sorted(zip(atoms.get_atomic_numbers().tolist(), map(tuple, frac.tolist())))
    blob = repr((np.round(atoms.cell.cellpar(), decimals).tolist(), rows))
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


def structure_checks(becs: Optional[np.ndarray], alpha: Optional[np.ndarray],
                     asr_tol: float = ASR_TOL, asym_tol: float = ASYM_TOL) -> tuple[Dict, List[str]]:
    """The single-structure checks (ASR of Z*, symmetry and positivity of alpha)."""
    values, flags = {}, []
    if becs is not None:
        values["asr_violation"] = float(np.abs(np.asarray(becs).sum(0)).max())
        if values["asr_violation"] > asr_tol:
            flags.append("asr")
    if alpha is not None:
        a = np.asarray(alpha)
        values["alpha_asymmetry"] = float(np.abs(a - a.T).max() / max(np.abs(a).max(), 1e-300))
        values["alpha_min_eig"] = float(np.linalg.eigvalsh(0.5 * (a + a.T)).min())
        if values["alpha_asymmetry"] > asym_tol:
            flags.append("alpha_asymmetric")
        if values["alpha_min_eig"] < 0:
            flags.append("alpha_negative")
    return values, flags


def audit_records(records: Sequence[Record], group_key: str = "polar_mpid",
                  asr_tol: float = ASR_TOL, asym_tol: float = ASYM_TOL) -> List[Dict]:
    rows = []
    for r in records:
        row = {"file": Path(r.file).name, "frame": r.frame, "id": r.id,
               "formula": reduced_formula(r.atoms),
               "asr_violation": np.nan, "alpha_asymmetry": np.nan, "alpha_min_eig": np.nan,
               "p_off_branch": np.nan, "duplicate_of": "", "flags": []}
        values, flags = structure_checks(r.labels.get("becs"), r.labels.get("polarisability"), asr_tol, asym_tol)
        row.update(values)
        row["flags"].extend(flags)
        rows.append(row)
    _audit_paths(records, rows, group_key)
    _audit_duplicates(records, rows)
    for row in rows:
        row["flags"] = ";".join(row["flags"])
    return rows


def _audit_paths(records, rows, group_key) -> None:
    paths = defaultdict(list)
    for i, r in enumerate(records):
        if "polarisation" in r.labels and group_key in r.meta:
            paths[(r.file, path_id(r))].append(i)
    for members in paths.values():
        coords = path_coordinates([records[i] for i in members])
        order = np.argsort(coords, kind="stable")
        ordered, s = [members[j] for j in order], coords[order]
        for k in range(1, len(ordered) - 1):
            before, here, after = (records[ordered[k + d]] for d in (-1, 0, 1))
            span = s[k + 1] - s[k - 1]
            t = (s[k] - s[k - 1]) / span if span > 0 else 0.5
            expected = (1 - t) * before.labels["polarisation"] + t * after.labels["polarisation"]
            cell = here.atoms.get_cell().array
            folded, x = fold_onto(here.labels["polarisation"], expected, cell)
            off = float(np.abs(x).max())  # quanta between the label and its neighbours' interpolation
            rows[ordered[k]]["p_off_branch"] = off
            left = np.abs(np.linalg.solve(polarisation_quanta(cell), folded - expected)).max()
            if off > 0.75 and left < 0.25:
                rows[ordered[k]]["flags"].append("p_branch")


def _audit_duplicates(records, rows) -> None:
    seen: Dict[str, int] = {}
    for i, r in enumerate(records):
        fp = structure_fingerprint(r.atoms)
        if fp in seen:
            j = seen[fp]
            rows[i]["duplicate_of"] = records[j].id
            if records[j].file != r.file or r.meta.get("split", "") != records[j].meta.get("split", ""):
                rows[i]["flags"].append("duplicate")
        else:
            seen[fp] = i


def summary_markdown(rows: List[Dict], title: str = "Label audit") -> str:
    n = len(rows)
    counts = defaultdict(int)
    for row in rows:
        for f in filter(None, row["flags"].split(";")):
            counts[f] += 1
    table = []
    for flag, col in [("asr", "asr_violation"), ("alpha_asymmetric", "alpha_asymmetry"),
                      ("alpha_negative", "alpha_min_eig"), ("p_branch", "p_off_branch"),
                      ("duplicate", None)]:
        vals = [(r[col], r) for r in rows if np.isfinite(r[col])] if col else []
        if col is None:
            table.append([flag, counts[flag], "-", "-"])
        elif not vals:
            table.append([flag, counts[flag], "(no such label)", "-"])
        else:
            worst = min(vals, key=lambda t: t[0]) if col == "alpha_min_eig" else max(vals, key=lambda t: t[0])
            table.append([flag, counts[flag], f"{worst[0]:.4g}", f"{worst[1]['id']} ({worst[1]['formula']})"])
    lines = [f"## {title}", "", f"{n} structures audited; {sum(1 for r in rows if r['flags'])} flagged.", "",
             markdown_table(["check", "flagged", "worst value", "worst structure"], table)]
    flagged = [r for r in rows if r["flags"]]
    if flagged:
        lines += ["", "Flagged structures (first 20):", ""]
        lines += [f"- {r['id']} {r['formula']}: {r['flags']}" for r in flagged[:20]]
    return "\n".join(lines) + "\n"


def write_report(rows: List[Dict], out_dir, title: str = "Label audit") -> tuple[Path, Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = out_dir / "audit.csv", out_dir / "audit.md"
    fields = ["file", "frame", "id", "formula", "asr_violation", "alpha_asymmetry", "alpha_min_eig",
              "p_off_branch", "duplicate_of", "flags"]
    with open(csv_path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=fields)
        w.writeheader()
        for r in rows:
            w.writerow({k: r[k] for k in fields})
    md_path.write_text(summary_markdown(rows, title))
    return csv_path, md_path


def labels_for(path: Path, polarisability_unit: Optional[str]) -> Dict:
    """Audit labels present in a file under the known key names."""
    from mf_lightning.data.reader import iter_frames

    found = set()  # keys of every frame: a label absent from frame 0 may be in the others
    for _, atoms in iter_frames(path):  # a missing, empty or unreadable file: DataError naming it
        found |= set(atoms.info) | set(atoms.arrays) | set(getattr(atoms.calc, "results", {}) or {})
    labels = {}
    for q in QUANTITIES.values():  # the known keys of each quantity (Quantity.file_keys); a later key wins
        for key, unit in q.file_keys.items():
            if key in found:
                if q.name == "polarisability" and key == "REF_polarisability" and polarisability_unit:
                    unit = polarisability_unit
                labels[q.name] = {"key": key, "unit": unit}
    return labels
