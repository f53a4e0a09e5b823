"""What ``eval.py`` does: any exported model on any supported data, metrics with and without the
labels the audit flags, parity plots.

Quantities and units are those of training (:func:`mf_lightning.data.quantities.metric_units`: energy
per atom, P folded onto the reference's branch in uC/cm^2, Z* and alpha split into diagonal and
off-diagonal), plus, where alpha is labelled, the refractive index ``n`` = sqrt(eps_poly), and
with ``ionic=true`` the ionic dielectric tensor eps_ion (model Hessian + Z*, see
:mod:`mf_lightning.analysis.dielectric`) against the file's ``REF_dielectric_ionic`` and, from the
same Hessian, the proper relaxed-ion piezoelectric tensor (``piezo_relaxed``, C/m^2, the 18
components; :mod:`mf_lightning.analysis.piezo`) against ``REF_piezoelectric`` where a structure has
it (MP-Dielectric's DFPT "total", its columns in VASP's strain order:
:data:`mf_lightning.data.quantities.PIEZO_ORDERS`).

For every quantity: RMSE, MAE, R^2 (1 - SS_res/SS_tot over all components) and counts, over all
labelled structures (``all``), over those whose reference labels pass the label audit
(``unflagged``) and over the flagged ones (``flagged``). An ensemble
(:mod:`mf_lightning.model.ensemble`) adds per quantity ``uncertainty``: the fractions of errors
within 1 and 2 predicted sigma, the Spearman correlation of |error| with sigma and the RMS of
error/sigma (:func:`mf_lightning.model.uncertainty.coverage`), printed as a second table.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch

from mf_lightning.data import keys
from mf_lightning.data.keys import weight_key
from mf_lightning.data.quantities import QUANTITIES, metric_units
from mf_lightning.files import dumps_json
from mf_lightning.train.metrics import batch_to_dict, labelled_tasks, metric_rows, stats, zero_predictor_error
from mf_lightning.utils import markdown_table

log = logging.getLogger(__name__)

class Collected:
    """(reference, prediction, structure index, zero-predictor error) rows per quantity; reference
    and prediction on one branch (:func:`~mf_lightning.train.metrics.reference_and_prediction`).
    An ensemble's predictions also keep the predicted sigma of each value (``sigma``, rows as
    ``rows``), the model output it belongs to (``task_of``) and, per labelled structure, its
    sigma of each output in parts (``scores``, :func:`mf_lightning.model.uncertainty.sigma_parts`)."""

    def __init__(self):
        self.rows: Dict[str, List[tuple]] = defaultdict(list)
        self.sigma: Dict[str, List[np.ndarray]] = defaultdict(list)
        self.task_of: Dict[str, str] = {}
        self.scores: Dict[str, List[dict]] = defaultdict(list)

    def add(self, q: str, ref: np.ndarray, pred: np.ndarray, structure: np.ndarray,
            zero_error: Optional[np.ndarray] = None, sigma: Optional[np.ndarray] = None,
            task: Optional[str] = None) -> None:
        ref = np.asarray(ref, float)
        self.rows[q].append((ref, np.asarray(pred, float), np.asarray(structure, int),
                             -ref if zero_error is None else np.asarray(zero_error, float)))
        if sigma is not None:
            self.sigma[q].append(np.asarray(sigma, float).reshape(ref.shape))
        if task is not None:
            self.task_of[q] = task

    def sigma_array(self, q: str) -> Optional[np.ndarray]:
        """The sigma of every value of ``q`` (as :meth:`arrays`), None unless every row has one."""
        if q not in self.sigma or len(self.sigma[q]) != len(self.rows[q]):
            return None
        return np.concatenate(self.sigma[q])

    def arrays(self, q: str):
        ref, pred, s, zero = zip(*self.rows[q])
        return np.concatenate(ref), np.concatenate(pred), np.concatenate(s), np.concatenate(zero)


def null_predictor_error(task: str, model, out, d) -> Dict[str, torch.Tensor]:
    """The errors of the physical null beside each RMSE ("RMSE of 0"): 0 for every quantity but
    the energy, whose null is the sum of the model's E0s (an energy of 0 eV is no baseline: the
    cohesive and reference energies are hundreds of eV per atom)."""
    if task != "energy":
        return zero_predictor_error(task, out, d)
    from mace.tools.scatter import scatter_sum

    from mf_lightning.train.losses import residual
    from mf_lightning.train.metrics import metric_components

    batch = d[keys.BATCH]
    # an ensemble's null: the mean of its members' E0s
    e0_table = torch.stack([m.backbone.atomic_energies_fn.atomic_energies.reshape(len(model.heads), -1)
                            for m in getattr(model, "members", [model])]).mean(0)
    heads = d["head"].view(-1)[batch].long() if "head" in d else torch.zeros_like(batch)
    node_e0 = (d[keys.NODE_ATTRS] * e0_table[heads].to(d[keys.NODE_ATTRS].dtype)).sum(-1)
    e0 = scatter_sum(src=node_e0, index=batch, dim=0, dim_size=int(d[keys.PTR].numel() - 1))
    return metric_components(task, residual(task, {task: e0.to(out[task].dtype)}, d).detach())


def collect_predictions(model, graphs: Sequence, batch_size: int = 8, collected: Optional[Collected] = None,
                        offset: int = 0) -> Collected:
    """Run ``model`` on labelled graphs; keep (ref, pred) rows of every labelled quantity."""
    from mace.tools.torch_geometric.dataloader import DataLoader

    collected = collected or Collected()
    dtype = model.dtype
    device = next(model.parameters()).device
    start = offset
    for batch in DataLoader(list(graphs), batch_size=batch_size, shuffle=False):
        d = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in batch_to_dict(batch, dtype).items()}
        n_graphs = int(d[keys.PTR].numel() - 1)
        tasks = labelled_tasks(d)
        out = model(d, properties=(keys.ENERGY, *tasks))
        zeros: Dict[str, Dict[str, torch.Tensor]] = {}
        sigmas = metric_sigmas(out, d)  # an ensemble's predicted sigma, as metric rows
        for task, q, ref, pred, _, w_rows in metric_rows(out, d):  # the rows training's metrics use
            if task not in zeros:
                zeros[task] = null_predictor_error(task, model, out, d)
            mask = w_rows > 0  # per row: atoms for per-atom tasks
            structure = (d[keys.BATCH] if QUANTITIES[task].per_atom else torch.arange(n_graphs, device=device)) + start
            sigma = sigmas[task][q][mask].double().cpu().numpy() if task in sigmas else None
            collected.add(q, ref[mask].double().cpu().numpy(), pred[mask].double().cpu().numpy(),
                          structure[mask].cpu().numpy(), zeros[task][q][mask].double().cpu().numpy(),
                          sigma=sigma, task=task)
        if sigmas:
            from mf_lightning.model.uncertainty import batch_sigma_parts

            for task, parts in batch_sigma_parts(out, d, tasks).items():
                collected.scores[task] += parts
        if "polarisability" in tasks:
            from mf_lightning.analysis.dielectric import eps_inf_from_alpha, refractive_index

            w = d[weight_key("polarisability")].view(-1) > 0
            a_ref = d["ref_polarisability"].view(-1, 3, 3)[w].double().cpu().numpy()
            a_pred = out[keys.POLARISABILITY][w].detach().double().cpu().numpy()
            n_ref = refractive_index(eps_inf_from_alpha(a_ref))
            # the physical null of n is vacuum's 1, not 0 (n of a non-positive eps_inf is NaN:
            # counted as invalid by summarise, never averaged in)
            n_sigma = None
            if "polarisability_members" in out:  # n of each member, their spread with alpha's factor
                from mf_lightning.model.uncertainty import derived_spreads

                members = out["polarisability_members"][:, w].detach().double().cpu().numpy()
                n_sigma = derived_spreads(members, model.sigma_scale("polarisability"))["n"]
            collected.add("n", n_ref, refractive_index(eps_inf_from_alpha(a_pred)),
                          torch.arange(n_graphs)[w.cpu()].numpy() + start, zero_error=1.0 - n_ref,
                          sigma=n_sigma, task="polarisability")
        start += n_graphs
    return collected


def collect_ionic(model, structures: Sequence, references: Sequence[Optional[np.ndarray]], head: Optional[str],
                  collected: Collected, offset: int = 0, max_atoms: int = 40, allow_untrained: bool = False,
                  piezo_references: Optional[Sequence[Optional[np.ndarray]]] = None) -> Dict[str, Any]:
    """eps_ion of the model (no relaxation: the labelled structures are DFT-relaxed) against the
    reference ionic tensors and, from the same Hessian, the relaxed-ion piezoelectric tensor against
    ``piezo_references`` ((3, 6) in Voigt order, C/m^2; :func:`~mf_lightning.data.quantities.piezo_reference`)
    where given; structures above ``max_atoms`` atoms are skipped (3N backward passes).
    A head that never learned forces is refused (its Hessian means nothing) unless
    ``allow_untrained``; a structure with unstable modes has no eps_ion and no relaxed-ion tensor
    (NaN: counted, not averaged in)."""
    from mf_lightning.analysis.dielectric import dielectric_properties
    from mf_lightning.simulation.calculator import MACEFieldCalculator

    calc = MACEFieldCalculator(model, head=head, allow_untrained=allow_untrained)
    calc.require_learned(["energy", "forces"], "ionic=true (eps_ion from the model's Hessian)")
    piezo_references = list(piezo_references or [None] * len(structures))
    warnings = []
    if any(r is not None for r in piezo_references):
        from mf_lightning.analysis.piezo import check_piezo_learned, piezo_of

        warnings = check_piezo_learned(model, calc.head, relaxed=True, allow_untrained=allow_untrained)
    done, piezo_done, skipped, unstable = 0, 0, 0, 0
    diag = np.eye(3, dtype=bool)
    for i, (atoms, ref, piezo_ref) in enumerate(zip(structures, references, piezo_references)):
        if ref is None and piezo_ref is None:
            continue
        if len(atoms) > max_atoms:
            skipped += 1
            continue
        ion = dielectric_properties(calc, atoms, ionic=True)
        unstable += bool(ion["unstable_modes_cm"])
        if ref is not None:
            pred = ion["eps_ion"]
            ref = np.asarray(ref).reshape(3, 3)
            collected.add("eps_ion_diag", ref[diag][None], pred[diag][None], np.array([offset + i]))
            collected.add("eps_ion_offdiag", ref[~diag][None], pred[~diag][None], np.array([offset + i]))
            done += 1
        if piezo_ref is not None:
            e = piezo_of(model, atoms, field=calc.field_now(), head=calc.head, dtype=calc.torch_dtype,
                         hessians=ion["hessians"])["e_relaxed_voigt"]
            collected.add("piezo_relaxed", np.asarray(piezo_ref, float).reshape(1, 18), e.reshape(1, 18),
                          np.array([offset + i]))
            piezo_done += 1
    return {"evaluated": done, "piezo_evaluated": piezo_done, "skipped_too_large": skipped,
            "with_unstable_modes": unstable, "max_atoms": max_atoms,
            "warnings": list(dict.fromkeys(list(calc.untrained_warnings) + warnings))}


def summarise(collected: Collected, flagged: Sequence[bool]) -> Dict[str, Any]:
    flagged = np.asarray(flagged, dtype=bool)
    out: Dict[str, Any] = {}
    for q in collected.rows:
        ref, pred, s, zero = collected.arrays(q)
        # a prediction that does not exist (n of eps_inf <= 0, eps_ion beside unstable modes) is
        # counted, not averaged in: one such structure must not turn the whole row into NaN
        rows = ref.reshape(len(ref), -1), pred.reshape(len(pred), -1)
        valid = np.all(np.isfinite(rows[0]), axis=1) & np.all(np.isfinite(rows[1]), axis=1)
        invalid = int(len(np.unique(s[~valid])))
        ref, pred, s, zero = ref[valid], pred[valid], s[valid], zero[valid]
        bad = flagged[s] if flagged.size else np.zeros(len(s), bool)
        entry = {"unit": metric_units().get(q, ""), "n_structures": int(len(np.unique(s))),
                 "n_invalid": invalid,
                 "all": stats(ref, pred, zero), "unflagged": stats(ref[~bad], pred[~bad], zero[~bad])}
        if bad.any():
            entry["flagged"] = stats(ref[bad], pred[bad], zero[bad])
        sigma = collected.sigma_array(q)
        if sigma is not None:
            from mf_lightning.model.uncertainty import coverage

            entry["uncertainty"] = coverage(pred - ref, sigma[valid])
        out[q] = entry
    return out


def parity_inputs(collected: Collected) -> Dict[str, List[np.ndarray]]:
    return {q: [np.stack([r.reshape(-1), p.reshape(-1)]) for r, p, *_ in rows] for q, rows in collected.rows.items()}


def table(metrics: Dict[str, Any]) -> str:
    rows = []
    for name, m in metrics["datasets"].items():
        for q, e in m["quantities"].items():
            a, u = e["all"], e["unflagged"]
            rows.append([name, q, f"{a.get('rmse', float('nan')):.4g}", f"{a.get('mae', float('nan')):.4g}",
                         f"{a.get('r2', float('nan')):.4f}", f"{u.get('rmse', float('nan')):.4g}",
                         f"{a.get('zero_rmse', float('nan')):.4g}", e["unit"], e["n_structures"],
                         e.get("n_invalid", 0)])
    return markdown_table(["dataset", "quantity", "RMSE", "MAE", "R^2", "RMSE unflagged", "RMSE of 0", "unit",
                           "structures", "invalid"], rows)


def uncertainty_table(metrics: Dict[str, Any]) -> str:
    """The calibration of an ensemble's sigma per quantity ("" for a single model): the fractions
    of errors within 1 and 2 sigma (a Gaussian: 68 % and 95 %), the Spearman correlation of
    |error| with sigma, and RMS(error/sigma) (1 when calibrated)."""
    rows = []
    for name, m in metrics["datasets"].items():
        for q, e in m["quantities"].items():
            u = e.get("uncertainty")
            if not u or not u.get("n_values"):
                continue
            rows.append([name, q, f"{u['within_1_sigma']:.3f}", f"{u['within_2_sigma']:.3f}", f"{u['spearman']:.3f}",
                         f"{u['rms_z']:.3g}", f"{u['rms_sigma']:.4g}", e["unit"], u["n_values"]])
    if not rows:
        return ""
    head = ["dataset", "quantity", "within 1 sigma", "within 2 sigma", "Spearman(|err|, sigma)", "RMS err/sigma",
            "RMS sigma", "unit", "values"]
    return markdown_table(head, rows)


def metric_sigmas(out, d) -> Dict[str, Dict[str, torch.Tensor]]:
    """{task: {metric quantity: sigma rows}}: an ensemble's ``<task>_std`` in the rows and units
    of :func:`~mf_lightning.train.metrics.metric_rows` (energy per atom, P in uC/cm^2, Z* and alpha
    split into diagonal / off-diagonal); empty for a single model."""
    from mf_lightning.train.losses import per_atom
    from mf_lightning.train.metrics import metric_components

    found = {}
    for task in labelled_tasks(d):
        std = out.get(task + "_std")
        if std is None:
            continue
        std = per_atom(std, d) if QUANTITIES[task].divide_by_atoms else std
        found[task] = metric_components(task, std.detach())
    return found


def source_frames(src, splits: Sequence[str]) -> List[Any]:
    """The ASE frames behind a source's graphs of ``splits``, in the same order (each file read once)."""
    from mf_lightning.data.reader import iter_frames
    from mf_lightning.data.root import resolve_file

    file_of = {s: src.test_file if (s == "test" and src.test_file) else src.file for s in splits}
    wanted: Dict[str, set] = {}
    for s in splits:
        wanted.setdefault(file_of[s], set()).update(m["frame"] for m in src.meta[s])
    frames = {(name, f): atoms for name, needed in wanted.items()
              for f, atoms in iter_frames(resolve_file(name, src.root)) if f in needed}
    return [frames[(file_of[s], m["frame"])] for s in splits for m in src.meta[s]]


# the model's predictions in a predictions file: mace's MACE_ prefix, internal units
PREDICTED = {"energy": ("MACE_energy", "eV"), "forces": ("MACE_forces", "eV/A"), "stress": ("MACE_stress", "eV/A^3"),
             "polarisation": ("MACE_polarisation", "e/A^2"), "becs": ("MACE_becs", "e"),
             "polarisability": ("MACE_polarisability", "e/(V*A)")}


def write_predictions(model, graphs: Sequence, structures: Sequence, path: Path, batch_size: int = 8) -> Path:
    """An extxyz of ``structures`` (their reference labels as in the file) with the model's E, F,
    S, P, Z* and alpha beside them under mace's ``MACE_`` prefix (``mace_eval_configs``' convention)
    in internal units (listed in each frame's ``MACE_units``); S, P, Z* and alpha for periodic
    structures only; an ensemble's spread beside each (``MACE_<quantity>_std``). Readable by
    ``ase.io.read``."""
    import ase.io
    from mace.tools.torch_geometric.dataloader import DataLoader

    from mf_lightning.files import atomic_open
    from mf_lightning.model.validity import join, response_flags

    device = next(model.parameters()).device
    frames, k = [], 0
    for batch in DataLoader(list(graphs), batch_size=batch_size, shuffle=False):
        d = {key: (v.to(device) if torch.is_tensor(v) else v) for key, v in batch_to_dict(batch, model.dtype).items()}
        periodic = bool((torch.linalg.det(d[keys.CELL].view(-1, 3, 3)).abs() > 0).all())
        wanted = list(PREDICTED) if periodic else ["energy", "forces"]
        out = model(d, properties=tuple(wanted))
        ptr = d[keys.PTR].cpu().numpy()
        for g in range(len(ptr) - 1):
            atoms = structures[k].copy()
            atoms.calc = structures[k].calc  # the file's labels ASE keeps there (SiO2.xyz: forces, stress)
            k += 1
            spread = {}
            for q in wanted:
                key, _ = PREDICTED[q]
                for name, value in ((key, out[q]), (key + "_std", out.get(q + "_std"))):
                    if value is None:
                        continue
                    v = value.detach().cpu().double().numpy()
                    if q in ("forces", "becs"):
                        atoms.arrays[name] = v[ptr[g]:ptr[g + 1]].reshape(ptr[g + 1] - ptr[g], -1)
                    else:
                        atoms.info[name] = v[g].reshape(-1) if v[g].ndim else float(v[g])
                if key + "_std" in atoms.info or key + "_std" in atoms.arrays:
                    spread[q] = atoms.info.get(key + "_std", atoms.arrays.get(key + "_std"))
            atoms.info["MACE_units"] = " ".join(f"{PREDICTED[q][0]}:{PREDICTED[q][1]}" for q in wanted)
            if periodic:  # what must not be trusted (mf_lightning.model.validity), "" for nothing
                from mf_lightning.model.uncertainty import structure_sigmas

                atoms.info["MACE_flags"] = join(response_flags(
                    atoms.get_atomic_numbers(), becs=atoms.arrays["MACE_becs"].reshape(-1, 3, 3),
                    polarisability=atoms.info["MACE_polarisability"].reshape(3, 3),
                    training_elements=getattr(model, "training_elements", None),
                    uncertainty=structure_sigmas(spread, len(atoms)) if spread else None,
                    uncertainty_thresholds=model.thresholds() if spread else None))
            frames.append(atoms)
    with atomic_open(path, "w") as fh:
        ase.io.write(fh, frames, format="extxyz")
    return path


def evaluate_datamodule(model, dm, split: str, out_dir: Path, batch_size: int = 8, ionic: bool = False,
                        ionic_key: str = "REF_dielectric_ionic", ionic_max_atoms: int = 40,
                        plots: bool = True, predictions: bool = False, figure_format: str = "png",
                        figure_dpi: float = 300.0, allow_untrained: bool = False,
                        piezo_key: str = "REF_piezoelectric", piezo_order: str = "vasp") -> Dict[str, Any]:
    """Evaluate every source of a (set-up) MultiSourceDataModule on ``split`` (train/val/test/all);
    with ``ionic``, eps_ion against ``ionic_key`` and the relaxed-ion piezoelectric tensor against
    ``piezo_key`` (its columns in ``piezo_order``, :data:`~mf_lightning.data.quantities.PIEZO_ORDERS`)."""
    from mf_lightning.data.datamodules.base import flags_of
    from mf_lightning.data.quantities import piezo_reference
    from mf_lightning.data.root import resolve_file
    from mf_lightning.model.ensemble import trained_ids

    metrics: Dict[str, Any] = {"split": split, "datasets": {}}
    if hasattr(model, "uncertainty_metadata"):  # an ensemble: what its sigma means
        metrics["uncertainty"] = model.uncertainty_metadata()
    trained = trained_ids(model)
    parity: Dict[str, Dict[str, List[np.ndarray]]] = {}
    for name, src in dm.sources.items():
        splits = ["train", "val", "test"] if split == "all" else [split]
        graphs = [g for s in splits for g in src.datasets[s]]
        meta = [m for s in splits for m in src.meta[s]]
        seen = sum(m["id"] in trained for m in meta)
        if seen:  # members trained on other splits (seed= draws the split too, unless data.seed= is fixed)
            log.warning("%s: %d of the %d evaluated structures are in a member's training split: their errors and "
                        "coverage are optimistic", name, seen, len(meta))
            metrics.setdefault("uncertainty", {}).setdefault("trained_on_by_a_member", {})[name] = seen
        if not graphs:
            log.warning("%s: the %s split is empty", name, split)
            continue
        flags = [flags_of(g) for g in graphs]
        collected = collect_predictions(model, graphs, batch_size=batch_size)
        entry: Dict[str, Any] = {}
        structures = source_frames(src, splits) if (ionic or predictions) else None
        if ionic:
            refs = [np.asarray(a.info[ionic_key], float) if ionic_key in a.info else None for a in structures]
            piezo_refs = [piezo_reference(a.info[piezo_key], piezo_order) if piezo_key in a.info else None
                          for a in structures]
            entry["ionic"] = collect_ionic(model, structures, refs, src.head, collected, max_atoms=ionic_max_atoms,
                                           allow_untrained=allow_untrained, piezo_references=piezo_refs)
        if predictions:
            entry["predictions"] = str(write_predictions(model, graphs, structures, out_dir / f"predictions_{name}.xyz",
                                                         batch_size=batch_size))
        evaluated = sorted({str(resolve_file(src.test_file if (s == "test" and src.test_file) else src.file, src.root))
                            for s in splits})
        entry.update({
            "file": evaluated[0] if len(evaluated) == 1 else evaluated, "head": src.head,
            "labels": {q: dict(s) for q, s in src.labels.items()},  # key and file unit of each label
            "n_structures": len(graphs), "n_atoms": int(sum(g.num_nodes for g in graphs)),
            "flagged": [m["id"] for m, f in zip(meta, flags) if f],
            "quantities": summarise(collected, [bool(f) for f in flags]),
        })
        metrics["datasets"][name] = entry
        parity[name] = parity_inputs(collected)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "metrics.json").write_text(dumps_json(metrics))
    if plots:
        from mf_lightning.train.plots import parity_plots

        parity_plots(parity, out_dir, fmt=figure_format, dpi=figure_dpi)
    return metrics
