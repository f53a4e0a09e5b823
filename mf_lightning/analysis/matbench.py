"""matbench_dielectric (refractive index from structure), zero-shot, scored with matbench's own
5-fold protocol.

``mf-matbench --model model.pt --out DIR``
(the environment of ``make test``/``make train`` has what it needs: ``matbench`` without its pins, beside
current matminer, scikit-learn, monty and pymatgen.)

* **Data.** The whole task is ``matbench/matbench_dielectric.json.gz`` (pandas column JSON, in
  matbench's order) under the data root (explicit ``--file``, ``$MF_DATA_DIR``,
  ``../shared/data``). Entry ids are matbench's: ``mb-dielectric-0001``... in file order. Only if
  no local file exists is the matbench package's own download tried; offline it fails with
  :class:`MatbenchDownloadError` saying where to put the file.
* **Folds.** matbench v0.1's ``KFold(5, shuffle=True, random_state=18012019)`` over the ids in
  file order (:func:`fold_assignment`); the tests check it against the folds stored in the
  matbench package. A zero-shot model trains on no fold: every test fold is predicted by the
  same model, and the predictions are recorded with ``MatbenchTask.record`` and saved with
  ``MatbenchBenchmark.to_file`` (``results.json.gz``, matbench's format).
* **Predictions.** n = sqrt(eps_poly) from the model's alpha, through the resumable screening of
  :mod:`mf_lightning.analysis.screening` (``predictions.csv``; a killed run continues where it stopped).
  Entries the model cannot predict (elements outside its table) are listed; matbench needs a
  value for every entry, so they get the median of the predicted n (``fallback``), and scores are
  reported both over all entries and over the covered ones only.
* **Leakage.** Most matbench entries also occur in MP-Dielectric. Each entry is compared with
  pymatgen's ``StructureMatcher`` (default tolerances) against every training structure of the
  same reduced formula (``--train-file``, default the MP-Dielectric file); ``scores.json`` gives
  the MAE over all entries and over the entries that match none: the honest zero-shot number.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence

import numpy as np

from mf_lightning.files import dumps_json

log = logging.getLogger(__name__)

TASK = "matbench_dielectric"
TASK_FILE = "matbench/matbench_dielectric.json.gz"
FOLD_SEED = 18012019  # matbench v0.1's KFold random_state
N_FOLDS = 5


class MatbenchDownloadError(RuntimeError):
    pass


# ---------------------------------------------------------------------- data and folds
def mb_ids(n: int, task: str = TASK) -> List[str]:
    """matbench's entry ids for a task of ``n`` entries, in order (as ``matbench.data_ops.load``)."""
    width = math.floor(math.log(n, 10)) + 1
    prefix = task.replace("matbench", "mb").replace("_", "-")
    return [f"{prefix}-{i + 1:0{width}d}" for i in range(n)]


def load_frame(path):
    """The task's DataFrame, indexed by matbench id, with pymatgen ``Structure`` objects."""
    import pandas as pd
    from pymatgen.core import Structure

    from mf_lightning.errors import InputError

    try:
        df = pd.read_json(path)
    except (ValueError, OSError, EOFError) as exc:  # pandas: bad JSON; gzip: truncated or not gzip
        raise InputError(f"{path}: not a readable matbench task file ({type(exc).__name__}: "
                         f"{' '.join(str(exc).split())[:120]})") from exc
    missing = {"structure", "n"} - set(df.columns)
    if missing:
        raise InputError(f"{path}: not a matbench_dielectric file (no columns {sorted(missing)})")
    df = df.sort_index()
    df.index = mb_ids(len(df))
    df["structure"] = [s if isinstance(s, Structure) else Structure.from_dict(s) for s in df["structure"]]
    return df


def download_frame():
    """The matbench package's own loader (matminer download). Raises MatbenchDownloadError."""
    try:
        from matbench.task import MatbenchTask

        task = MatbenchTask(TASK, autoload=True)
        return task.df
    except Exception as exc:  # noqa: BLE001 - matminer/requests raise many types offline
        raise MatbenchDownloadError(
            f"the matbench package could not download {TASK} ({type(exc).__name__}: {str(exc)[:200]}). "
            f"Put the task file at <data root>/{TASK_FILE} (data root: $MF_DATA_DIR or ../shared/data) "
            "or pass --file PATH."
        ) from exc


def resolve_frame(file: Optional[str] = None, root: Optional[str] = None):
    from mf_lightning.data.root import DataNotFoundError, resolve_file

    try:
        path = resolve_file(file or TASK_FILE, root, allow_download=False)
    except DataNotFoundError:
        if file:
            raise
        log.info("no local %s; trying the matbench package's download", TASK_FILE)
        return download_frame(), "matbench download"
    return load_frame(path), str(path)


def fold_assignment(ids: Sequence[str], n_folds: int = N_FOLDS,
                    seed: int = FOLD_SEED) -> Dict[str, Dict[str, List[str]]]:
    """matbench v0.1's folds: ``{"fold_k": {"train": ids, "test": ids}}``."""
    from sklearn.model_selection import KFold

    ids = list(ids)
    folds = {}
    for k, (train, test) in enumerate(KFold(n_splits=n_folds, shuffle=True, random_state=seed).split(ids)):
        folds[f"fold_{k}"] = {"train": [ids[i] for i in train], "test": [ids[i] for i in test]}
    return folds


# ---------------------------------------------------------------------- leakage
def leakage(structures: Dict[str, Any], training: Iterable, matcher=None) -> Dict[str, str]:
    """For each (id -> pymatgen Structure), the first training structure (ASE Atoms, or pymatgen
    Structure) it matches, compared only within the same reduced formula; ids matching nothing
    are absent. Returns ``{id: training index}`` as strings."""
    from pymatgen.analysis.structure_matcher import StructureMatcher
    from pymatgen.io.ase import AseAtomsAdaptor

    matcher = matcher or StructureMatcher()
    by_formula: Dict[str, List] = {}
    for i, t in enumerate(training):
        s = t if hasattr(t, "composition") else AseAtomsAdaptor.get_structure(t)
        by_formula.setdefault(s.composition.reduced_formula, []).append((i, s))
    found = {}
    for ident, s in structures.items():
        for i, t in by_formula.get(s.composition.reduced_formula, []):
            if matcher.fit(s, t):
                found[ident] = str(i)
                break
    return found


# ---------------------------------------------------------------------- scoring
def read_predictions(path: Path) -> Dict[str, float]:
    with open(path, newline="") as fh:
        return {row["id"]: float(row["n"]) for row in csv.DictReader(fh)}


def mae(ref, pred) -> float:
    ref, pred = np.asarray(ref, float), np.asarray(pred, float)
    return float(np.mean(np.abs(ref - pred))) if ref.size else float("nan")


def score(df, predicted: Dict[str, float], leaked: Dict[str, str], out_dir: Path,
          metadata: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Record every fold in matbench's format (``results.json.gz``) and write ``scores.json``."""
    from matbench.bench import MatbenchBenchmark

    finite = [v for v in predicted.values() if np.isfinite(v)]
    fallback = float(np.median(finite)) if finite else 1.0
    pred = {i: (predicted[i] if np.isfinite(predicted.get(i, np.nan)) else fallback) for i in df.index}
    covered = [i for i in df.index if np.isfinite(predicted.get(i, np.nan))]
    unleaked = [i for i in df.index if i not in leaked]
    covered_unleaked = [i for i in covered if i not in leaked]
    ref = df["n"]

    bench = MatbenchBenchmark(autoload=False, subset=[TASK])
    task = bench.tasks_map[TASK]
    task.df = df[["structure", "n"]]
    folds = {}
    for fold in task.folds:
        test_ids = task.validation[task.folds_map[fold]].test
        task.record(fold, [pred[i] for i in test_ids])
        folds[f"fold_{fold}"] = mae(ref[test_ids], [pred[i] for i in test_ids])
    if metadata:
        bench.add_metadata(metadata)
    out_dir.mkdir(parents=True, exist_ok=True)
    bench.to_file(str(out_dir / "results.json.gz"))
    result = {
        "task": TASK, "n_entries": len(df), "n_predicted": len(covered), "fallback_n": fallback,
        "n_leaked": len(leaked), "n_unleaked": len(unleaked),
        "mae_all": mae(ref, [pred[i] for i in df.index]),
        "mae_unleaked": mae(ref[unleaked], [pred[i] for i in unleaked]),
        "mae_predicted": mae(ref[covered], [pred[i] for i in covered]),
        "mae_predicted_unleaked": mae(ref[covered_unleaked], [pred[i] for i in covered_unleaked]),
        "mae_per_fold": folds,
        "matbench_scores": json.loads(json.dumps(task.scores, default=float)),
        "reference": {"leaderboard_best_mae": 0.271, "paper_zero_shot_mae": 0.29},
    }
    (out_dir / "scores.json").write_text(dumps_json(result))
    return result


# ---------------------------------------------------------------------- command line
def run(model, out_dir, file: Optional[str] = None, root: Optional[str] = None,
        train_files: Sequence[str] = ("mp_dielectric/dielectric-valid.xyz",), limit: Optional[int] = None,
        head: Optional[str] = None, progress: bool = True) -> Dict[str, Any]:
    from pymatgen.io.ase import AseAtomsAdaptor

    from mf_lightning.analysis.screening import screen
    from mf_lightning.data.reader import iter_frames
    from mf_lightning.data.root import resolve_file

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    df, source = resolve_frame(file, root)
    subset = df if limit is None else df.iloc[:limit]

    def items():
        for ident, s in subset["structure"].items():
            try:
                yield ident, AseAtomsAdaptor.get_atoms(s)
            except Exception as exc:  # noqa: BLE001
                yield ident, ValueError(f"cannot convert structure: {exc}")

    counts = screen(items(), model, out_dir / "predictions.csv", head=head, progress=progress, total=len(subset))
    predicted = read_predictions(out_dir / "predictions.csv")

    leak_path = out_dir / "leakage.json"
    train_paths = [str(resolve_file(f, root)) for f in train_files]
    cached = json.loads(leak_path.read_text()) if leak_path.exists() else None
    if cached and cached.get("train_files") == train_paths and cached.get("n") == len(subset):
        leaked = cached["matches"]
    else:
        training = [a for p in train_paths for _, a in iter_frames(p)]
        leaked = leakage(dict(subset["structure"].items()), training)
        leak_path.write_text(dumps_json({"train_files": train_paths, "n": len(subset), "matches": leaked}))
    if limit is not None:
        result = {"limited_to": limit, "n_predicted": len(predicted), "n_leaked": len(leaked),
                  "mae_predicted": mae(subset["n"][list(predicted)], list(predicted.values())),
                  "note": "a --limit run is not a matbench score (folds need every entry)"}
        (out_dir / "scores.json").write_text(dumps_json(result))
        return result
    result = score(df, predicted, leaked, out_dir,
                   metadata={"model": "MACE-Field (mf-lightning), zero-shot", "source": source,
                             "train_files": train_paths})
    result["screening"] = counts
    return result
