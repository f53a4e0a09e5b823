"""Spontaneous polarisation along non-polar -> polar distortion paths.

``mf-paths FILE --model model.pt --out DIR``

For every path of FILE (frames grouped by their (``nonpolar_mpid``, ``polar_mpid``) pair,
ordered non-polar -> polar by their fractional-coordinate interpolation,
:func:`~mf_lightning.data.polarisation.order_along_paths`):

1. the model's P (zero field) of every frame;
2. the reference P as the file has it (one branch per path, SPEC section 4) and the model's P
   as computed (smooth, single-valued: never folded frame to frame), shifted once by whole quanta
   e a_k / Omega of the first frame's cell so that it starts nearest the reference;
3. P_s = P(polar end) - P(non-polar end), per Cartesian component, in uC/cm^2.

Writes ``paths.csv`` (one row per path: frames, P_s reference and model, |P_s|), ``frames.csv``
(every frame on its branch), ``polarisation_along_paths.png`` (P along the path, reference vs
model, per component, for the paths with most frames) and ``ps_parity.png`` (|P_s| per material,
and every component). A path with a single frame has no P_s and is listed with ``n_frames = 1``.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

from mf_lightning.data.polarisation import align_branch, order_along_paths, path_id
from mf_lightning.files import dumps_json
from mf_lightning.units import E_PER_A2_TO_UC_PER_CM2

COMPONENTS = "xyz"


def spontaneous_polarisation(p_ref: np.ndarray, p_model: np.ndarray, cells: np.ndarray) -> Dict[str, np.ndarray]:
    """P series (n, 3; e/A^2) of one ordered path and P_s = P[last] - P[first], reference on the
    file's own branch (never refolded frame to frame: sparsely sampled paths change by more than
    half a quantum between frames), the model's P as computed (smooth and single-valued), shifted
    once by whole quanta so that its first frame sits nearest the reference's."""
    ref = np.asarray(p_ref, dtype=float)
    model = align_branch(p_model, ref[0], cells[0])
    return {"reference": ref, "model": model, "ps_reference": ref[-1] - ref[0], "ps_model": model[-1] - model[0]}


def path_rows(paths: Dict[str, List], predictions: Dict[str, np.ndarray]):
    """Per path and per frame rows (uC/cm^2) from ordered records and the model's P per record id."""
    path_out, frame_out = [], []
    for name, members in paths.items():
        cells = np.array([r.atoms.get_cell().array for r in members])
        p_ref = np.array([r.labels["polarisation"] for r in members])
        p_model = np.array([predictions[r.id] for r in members])
        res = spontaneous_polarisation(p_ref, p_model, cells)
        for r, a, b in zip(members, res["reference"], res["model"]):
            frame_out.append({"path": name, "id": r.id, "path_position": r.meta["path_position"],
                              **{f"P{c}_reference": a[i] * E_PER_A2_TO_UC_PER_CM2 for i, c in enumerate(COMPONENTS)},
                              **{f"P{c}_model": b[i] * E_PER_A2_TO_UC_PER_CM2 for i, c in enumerate(COMPONENTS)}})
        ps_r, ps_m = res["ps_reference"] * E_PER_A2_TO_UC_PER_CM2, res["ps_model"] * E_PER_A2_TO_UC_PER_CM2
        single = len(members) == 1
        path_out.append({
            "path": name, "formula": _formula(members[0]), "n_frames": len(members),
            "nonpolar_mpid": members[0].meta.get("nonpolar_mpid", ""),
            **{f"Ps{c}_reference": (math.nan if single else ps_r[i]) for i, c in enumerate(COMPONENTS)},
            **{f"Ps{c}_model": (math.nan if single else ps_m[i]) for i, c in enumerate(COMPONENTS)},
            "Ps_norm_reference": math.nan if single else float(np.linalg.norm(ps_r)),
            "Ps_norm_model": math.nan if single else float(np.linalg.norm(ps_m)),
        })
    return path_out, frame_out


def _formula(record) -> str:
    from mf_lightning.data.reader import reduced_formula

    return reduced_formula(record.atoms)


def summary(path_out: List[Dict[str, Any]]) -> Dict[str, Any]:
    rows = [r for r in path_out if r["n_frames"] > 1]
    if not rows:
        return {"paths": len(path_out), "paths_with_ps": 0}
    ref = np.array([[r[f"Ps{c}_reference"] for c in COMPONENTS] for r in rows])
    mod = np.array([[r[f"Ps{c}_model"] for c in COMPONENTS] for r in rows])
    nr, nm = np.linalg.norm(ref, axis=1), np.linalg.norm(mod, axis=1)
    return {"paths": len(path_out), "paths_with_ps": len(rows), "unit": "uC/cm^2",
            "ps_component_rmse": float(np.sqrt(np.mean((ref - mod) ** 2))),
            "ps_component_mae": float(np.mean(np.abs(ref - mod))),
            "ps_norm_rmse": float(np.sqrt(np.mean((nr - nm) ** 2))), "ps_norm_mae": float(np.mean(np.abs(nr - nm)))}


def plot(path_out, frame_out, out_dir: Path, max_paths: int = 12) -> List[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    by_path: Dict[str, List] = {}
    for f in frame_out:
        by_path.setdefault(f["path"], []).append(f)
    shown = sorted(by_path, key=lambda k: -len(by_path[k]))[:max_paths]
    if shown:
        cols = min(4, len(shown))
        rows = math.ceil(len(shown) / cols)
        fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows), squeeze=False)
        formula = {p["path"]: p["formula"] for p in path_out}
        for ax, name in zip(axes.flat, shown):
            fr = by_path[name]
            s = [f["path_position"] for f in fr]
            for c, colour in zip(COMPONENTS, ("C0", "C1", "C2")):
                ax.plot(s, [f[f"P{c}_reference"] for f in fr], "o-", color=colour, ms=3, lw=1, label=f"{c} ref")
                ax.plot(s, [f[f"P{c}_model"] for f in fr], "x--", color=colour, ms=4, lw=1, label=f"{c} model")
            ax.set_title(f"{formula[name]} ({name})", fontsize=8)
            ax.set_xlabel("path coordinate (0 non-polar, 1 polar)", fontsize=7)
            ax.set_ylabel("P (uC/cm^2)", fontsize=7)
            ax.tick_params(labelsize=7)
        for ax in list(axes.flat)[len(shown):]:
            ax.axis("off")
        axes.flat[0].legend(fontsize=6, ncol=2)
        fig.tight_layout()
        path = out_dir / "polarisation_along_paths.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(path)
    rows = [r for r in path_out if r["n_frames"] > 1]
    if rows:
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(8, 4))
        nr = [r["Ps_norm_reference"] for r in rows]
        nm = [r["Ps_norm_model"] for r in rows]
        a1.scatter(nr, nm, s=10)
        hi = max(max(nr), max(nm), 1e-9)
        a1.plot([0, hi], [0, hi], "k--", lw=0.8)
        a1.set(xlabel="|P_s| reference (uC/cm^2)", ylabel="|P_s| model (uC/cm^2)", title="per material")
        for c, colour in zip(COMPONENTS, ("C0", "C1", "C2")):
            a2.scatter([r[f"Ps{c}_reference"] for r in rows], [r[f"Ps{c}_model"] for r in rows], s=8, color=colour,
                       label=c)
        lo = min(min(r[f"Ps{c}_{w}"] for c in COMPONENTS for w in ("reference", "model")) for r in rows)
        hi = max(max(r[f"Ps{c}_{w}"] for c in COMPONENTS for w in ("reference", "model")) for r in rows)
        a2.plot([lo, hi], [lo, hi], "k--", lw=0.8)
        a2.set(xlabel="P_s reference (uC/cm^2)", ylabel="P_s model (uC/cm^2)", title="components")
        a2.legend()
        fig.tight_layout()
        path = out_dir / "ps_parity.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(path)
    return written


def _write_csv(path: Path, rows: List[Dict[str, Any]]) -> None:
    if not rows:
        path.write_text("")
        return
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def evaluate_paths(model, file, out_dir, key: str = "REF_polarisation", unit: str = "e/A^2",
                   group_key: str = "polar_mpid", head: Optional[str] = None, batch_atoms: int = 2000,
                   max_plotted: int = 12) -> Dict[str, Any]:
    from mf_lightning.analysis.screening import batches, predict_response
    from mf_lightning.data.reader import read_records

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    records = read_records(file, {"polarisation": {"key": key, "unit": unit}}, {"value": [0.0, 0.0, 0.0]},
                           meta_keys=("nonpolar_mpid", group_key),
                           required=["polarisation"])
    paths = order_along_paths(records, lambda r: path_id(r, keys=("nonpolar_mpid", group_key)))
    predictions: Dict[str, np.ndarray] = {}
    # P only (a first derivative): Z* and alpha would cost second derivatives and ~10x the memory
    for group in batches(((r.id, r.atoms) for r in records), max_atoms=batch_atoms, max_structures=64):
        for (ident, _), res in zip(group, predict_response(model, [a for _, a in group], head=head,
                                                           quantities=("polarisation",))):
            predictions[ident] = res["polarisation"]
    path_out, frame_out = path_rows(paths, predictions)
    _write_csv(out_dir / "paths.csv", path_out)
    _write_csv(out_dir / "frames.csv", frame_out)
    result = summary(path_out)
    (out_dir / "summary.json").write_text(dumps_json(result))
    plot(path_out, frame_out, out_dir, max_paths=max_plotted)
    return result
