"""Deep ensembles: several FieldMACE models (seeds) as one model, the mean of every output and
its spread.

:class:`FieldMACEEnsemble` holds N >= 2 members that share the element table, dtype, cutoff and
heads (anything else is refused, one line). Its forward pass runs every member on the same batch
and returns, for each output ``key`` of a member (energy, forces, stress, P, Z*, alpha):

* ``key``: the member mean. The mean of the members' F is itself an enthalpy, and every output
  is linear in F, so the mean P, Z*, alpha, forces and Hessian are the exact derivatives of the
  mean F (the identities, ASR and symmetry hold as for one model). P is single-valued per model
  but defined modulo the polarisation quantum: each member's P is first shifted by whole quanta
  onto the image nearest the first member's (a shift of exactly 0 when they agree);
* ``key_std``: the spread, the members' standard deviation (ddof=1) times the calibration
  factor of ``key`` where the ensemble is calibrated (one per metric quantity: Z* and alpha have
  one for their diagonal and one for their off-diagonal components;
  :attr:`FieldMACEEnsemble.calibration`, fitted by ``mf-ensemble --calibrate``,
  :mod:`mf_lightning.analysis.uncertainty`; the numbers: :mod:`mf_lightning.model.uncertainty`),
  else the raw spread;
* ``key_members``: the members' values stacked on a new first axis (detached).

The model file (``format`` ``mf-lightning/field-mace-ensemble``) holds each member's record as
:func:`~mf_lightning.model.io.save_model` writes it (its own record checksum included), where each
member came from, the ids of the structures each was trained on (from its run folder's
``splits/``, to keep them out of calibration) and the calibration; tensors and plain values only
(``torch.load(weights_only=True)``), written atomically with a checksum of the whole record last.
:func:`~mf_lightning.model.io.load_model` reads it; every tool that takes ``--model`` takes an
ensemble (``mf-export`` excepted: mace's format has no ensembles).
"""

from __future__ import annotations

import hashlib
import json
import logging
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

from mf_lightning.data import keys
from mf_lightning.errors import InputError, ModelFileError
from mf_lightning.files import atomic_torch_save, strict_json_value, verify_record_checksum, with_record_checksum
from mf_lightning.model.field_mace import FieldMACE
from mf_lightning.model.io import (
    LOADERS,
    RECORD_CHECKSUM,
    load_model,
    model_checksum,
    model_from_payload,
    model_payload,
)

log = logging.getLogger(__name__)

ENSEMBLE_FORMAT = "mf-lightning/field-mace-ensemble"
ENSEMBLE_FORMAT_VERSION = 1
MIN_MEMBERS = 2  # one member has no spread
STD, MEMBERS = "_std", "_members"


class EnsembleError(InputError, ValueError):
    """Members that cannot form one ensemble (another element table, dtype, cutoff or heads; one
    member; the same model given twice to :func:`combine`)."""


def check_members(members: Sequence, names: Optional[Sequence[str]] = None) -> None:
    """Refuse (:class:`EnsembleError`, one line) members that do not share what one batch needs.
    (Identical members are allowed here, their spread is exactly 0; :func:`combine` refuses them.)"""
    names = list(names) if names else [f"member {k}" for k in range(len(members))]
    if len(members) < MIN_MEMBERS:
        raise EnsembleError(f"an ensemble needs at least {MIN_MEMBERS} members, got {len(members)}")
    first = members[0]
    for what, get in (("element table", lambda m: m.atomic_numbers), ("dtype", lambda m: str(m.dtype)),
                      ("heads", lambda m: m.heads), ("cutoff r_max", lambda m: m.r_max)):
        for name, m in zip(names[1:], members[1:]):
            if get(m) != get(first):
                raise EnsembleError(f"{name} has {what} {get(m)}, {names[0]} has {get(first)}: the members of an "
                                    f"ensemble must share the element table, dtype, heads and cutoff")


def check_distinct(members: Sequence, names: Sequence[str]) -> None:
    """Refuse the same model given twice (its spread would be 0 by construction)."""
    seen: Dict[str, str] = {}
    for name, m in zip(names, members):
        sha = model_checksum(m)
        if sha in seen:
            raise EnsembleError(f"{name} is the same model as {seen[sha]} (same weights): an ensemble needs "
                                "independently trained members (e.g. seed=0,1,2)")
        seen[sha] = name


def agreed_head_quantities(members: Sequence) -> Optional[Dict[str, List[str]]]:
    """{head: the quantities every member learned on it} (a quantity one member never learned is
    not learned by the ensemble); None where no member records it."""
    out: Dict[str, List[str]] = {}
    for head in members[0].heads:
        learned = [m.learned_quantities(head) for m in members]
        known = [set(q) for q in learned if q is not None]
        if known:
            out[head] = sorted(set.intersection(*known))
    return out or None


def agreed_training_elements(members: Sequence) -> Optional[Dict[int, int]]:
    """{Z: the fewest training structures with Z over the members that record it}: an element
    rare for one member is rare for the ensemble."""
    tables = [m.training_elements for m in members if getattr(m, "training_elements", None) is not None]
    if not tables:
        return None
    return {z: min(int(t.get(z, 0)) for t in tables) for z in sorted(set().union(*tables))}


def same_branch(values: List[torch.Tensor], cell: torch.Tensor, volume: torch.Tensor) -> List[torch.Tensor]:
    """Members' P (n_graphs, 3) shifted by whole quanta onto the image nearest the first's, per
    periodic structure (the shift is exactly 0 where they already agree)."""
    from mf_lightning.data.polarisation import nearest_image

    ok = torch.isfinite(volume) & (volume > 0)
    if not bool(ok.any()):
        return values
    cells = cell.reshape(-1, 3, 3)[ok].to(values[0].dtype)
    out = [values[0]]
    for v in values[1:]:
        d = (v - values[0]).detach()[ok]
        shift = torch.zeros_like(v)
        shift[ok] = d - nearest_image(d, cells)
        out.append(v - shift)
    return out


class FieldMACEEnsemble(torch.nn.Module):
    """N FieldMACE members as one model (module docstring). ``calibration``: what
    :func:`mf_lightning.analysis.uncertainty.calibrate` fitted (``scale`` {output: factor},
    ``threshold`` {output: per-structure sigma above which ``high_uncertainty`` is flagged} and
    where they were fitted), or None. ``training_ids``: per member, {dataset: ids of its training
    structures} or None; ``sources``: where each member came from (informational)."""

    def __init__(self, members: Sequence[FieldMACE], calibration: Optional[Mapping[str, Any]] = None,
                 training_ids: Optional[Sequence[Optional[Mapping[str, List[str]]]]] = None,
                 sources: Optional[Sequence[Optional[str]]] = None):
        super().__init__()
        members = list(members)
        sources = list(sources) if sources is not None else [None] * len(members)
        check_members(members, [f"member {k}" + (f" ({s})" if s else "") for k, s in enumerate(sources)])
        self.members = torch.nn.ModuleList(members)
        self.calibration: Optional[Dict[str, Any]] = None if calibration is None else dict(calibration)
        self.training_ids = list(training_ids) if training_ids is not None else [None] * len(members)
        self.sources = [None if s is None else str(s) for s in sources]
        if len(self.training_ids) != len(members) or len(self.sources) != len(members):
            raise EnsembleError("training_ids and sources need one entry per member")
        self.head_quantities = agreed_head_quantities(members)
        self.training_elements = agreed_training_elements(members)
        self.loss_scales = None  # per member; what the ensemble learned is head_quantities

    # ------------------------------------------------------------------ what every tool asks a model
    @property
    def n_members(self) -> int:
        return len(self.members)

    @property
    def atomic_numbers(self) -> List[int]:
        return self.members[0].atomic_numbers

    @property
    def r_max(self) -> float:
        return self.members[0].r_max

    @property
    def heads(self) -> List[str]:
        return self.members[0].heads

    @property
    def dtype(self) -> torch.dtype:
        return self.members[0].dtype

    @property
    def cueq(self) -> bool:
        return all(m.cueq for m in self.members)

    def use_cueq(self, enabled: bool = True, fused: Optional[bool] = None) -> "FieldMACEEnsemble":
        for m in self.members:
            m.use_cueq(enabled, fused=fused)
        return self

    # the same rules as one model's, on the ensemble's agreed head_quantities
    resolve_head = FieldMACE.resolve_head
    learned_quantities = FieldMACE.learned_quantities
    check_learned = FieldMACE.check_learned

    # ------------------------------------------------------------------ uncertainty
    @property
    def calibrated(self) -> bool:
        return bool(self.calibration and self.calibration.get("scale"))

    def sigma_scale(self, key: str):
        """The calibration factor of output ``key``: a number, or for Z* and alpha a 3x3 array (the
        diagonal's factor on the diagonal, the off-diagonal's off it); 1 where uncalibrated."""
        scale = (self.calibration or {}).get("scale") or {}
        if scale.get(key) is not None:
            return float(scale[key])
        diag, off = scale.get(key + "_diag"), scale.get(key + "_offdiag")
        if diag is None and off is None:
            return 1.0
        factor = np.full((3, 3), float(off or 1.0))
        np.fill_diagonal(factor, float(diag or 1.0))
        return factor

    def thresholds(self) -> Dict[str, float]:
        """{output: calibrated per-structure sigma above which a structure is ``high_uncertainty``}
        (:func:`mf_lightning.model.uncertainty.structure_sigma`); empty when uncalibrated."""
        return {k: float(v) for k, v in ((self.calibration or {}).get("threshold") or {}).items() if v is not None}

    @contextmanager
    def raw_spread(self):
        """Within it, ``*_std`` is the raw member spread (what calibration fits)."""
        saved, self.calibration = self.calibration, None
        try:
            yield self
        finally:
            self.calibration = saved

    def describe_sigma(self) -> str:
        if self.calibrated:
            c = self.calibration
            return (f"calibrated: std over {self.n_members} members (ddof=1) x a factor per quantity fitted on "
                    f"{c.get('data')} ({c.get('split')} split) so that 68.27 % of its errors lie within one sigma")
        return (f"raw: std over {self.n_members} members (ddof=1), not calibrated (a deep ensemble's raw "
                "spread is usually too small: mf-ensemble --calibrate)")

    def uncertainty_metadata(self) -> Dict[str, Any]:
        """What a tool's output metadata says about its ``*_std`` columns."""
        c = self.calibration or {}
        return {"members": self.n_members, "calibrated": self.calibrated, "sigma": self.describe_sigma(),
                "scale": dict(c.get("scale") or {}), "high_uncertainty_threshold": self.thresholds(),
                "calibration_data": c.get("data"), "calibration_split": c.get("split"),
                "percentile": c.get("percentile")}

    # ------------------------------------------------------------------ forward
    def forward(self, data: Dict[str, torch.Tensor], properties: Iterable[str] = (keys.ENERGY, keys.FORCES),
                training: bool = False, batched_response: bool = False) -> Dict[str, torch.Tensor]:
        """Every member on ``data``; the mean, ``*_std`` and ``*_members`` of each output."""
        properties = tuple(properties)
        outs = [m(data, properties=properties, training=training, batched_response=batched_response)
                for m in self.members]
        return self.combine(outs, data)

    def combine(self, outs: Sequence[Dict[str, torch.Tensor]], data: Mapping[str, torch.Tensor]):
        result: Dict[str, torch.Tensor] = {}
        for key in outs[0]:
            values = [o[key] for o in outs]
            if key == keys.VOLUME:
                result[key] = values[0]
                continue
            if key == keys.POLARISATION:
                values = same_branch(values, data[keys.CELL], outs[0][keys.VOLUME])
            stack = torch.stack(values)
            result[key] = stack.mean(0)
            spread = stack.detach().std(0)
            result[key + STD] = spread * torch.as_tensor(self.sigma_scale(key), dtype=spread.dtype,
                                                         device=spread.device)
            result[key + MEMBERS] = stack.detach()
        return result

    # ------------------------------------------------------------------ identity
    def file_payload(self) -> dict:
        """What :func:`~mf_lightning.model.io.save_model` writes for the ensemble."""
        return ensemble_payload(self)

    def ensemble_checksum(self) -> str:
        """SHA-256 over the members' checksums (in order) and the calibration."""
        text = json.dumps([[model_checksum(m) for m in self.members], strict_json_value(self.calibration)],
                          sort_keys=True, default=str)
        return hashlib.sha256(("ensemble" + text).encode()).hexdigest()


# ---------------------------------------------------------------------- files
def ensemble_payload(ensemble: FieldMACEEnsemble) -> dict:
    payload = {
        "format": ENSEMBLE_FORMAT,
        "format_version": ENSEMBLE_FORMAT_VERSION,
        "members": [model_payload(m) for m in ensemble.members],
        "sources": list(ensemble.sources),
        "training_ids": [None if t is None else {str(k): [str(i) for i in v] for k, v in t.items()}
                         for t in ensemble.training_ids],
        "calibration": strict_json_value(ensemble.calibration),
    }
    return with_record_checksum(payload, RECORD_CHECKSUM)


def save_ensemble(ensemble: FieldMACEEnsemble, path) -> None:
    """Write ``ensemble`` as one weights-only file, atomically (module docstring)."""
    atomic_torch_save(ensemble_payload(ensemble), path)


def ensemble_from_payload(payload: dict, path, device: str = "cpu", dtype=None, cueq: Optional[bool] = None):
    """The :class:`FieldMACEEnsemble` of an ensemble file's record (its checksum and each
    member's checked first)."""
    if next(reversed(payload), None) != RECORD_CHECKSUM:
        raise ModelFileError(f"{path}: the ensemble file is corrupted: its checksum entry is missing or damaged; "
                             "use another copy")
    problem = verify_record_checksum(payload, RECORD_CHECKSUM)
    if problem:
        raise ModelFileError(f"{path}: the file is corrupted: {problem}; use another copy")
    if payload.get("format_version", 0) > ENSEMBLE_FORMAT_VERSION:
        raise ModelFileError(f"{path}: written by a newer mf-lightning (ensemble format {payload['format_version']})")
    records = payload.get("members")
    if not isinstance(records, list) or not records:
        raise ModelFileError(f"{path}: an ensemble file without members")
    members = [model_from_payload(p, f"{path} (member {k})", device=device, dtype=dtype, cueq=cueq)
               for k, p in enumerate(records)]
    return FieldMACEEnsemble(members, calibration=payload.get("calibration"),
                             training_ids=payload.get("training_ids"), sources=payload.get("sources")).eval()


LOADERS[ENSEMBLE_FORMAT] = ensemble_from_payload  # load_model reads ensemble files


# ---------------------------------------------------------------------- combining runs
def run_training_ids(run_dir: Path) -> Optional[Dict[str, List[str]]]:
    """{dataset: ids of the training split} from a run folder's ``splits/*.json`` (None: none)."""
    found = {}
    for manifest in sorted((run_dir / "splits").glob("*.json")):
        try:
            data = json.loads(manifest.read_text())
        except (OSError, ValueError) as exc:
            raise InputError(f"{manifest}: unreadable split record ({exc})") from exc
        found[str(data.get("name") or manifest.stem)] = [str(i) for i in (data.get("ids") or {}).get("train", [])]
    return found or None


def _check_finished(run_dir: Path) -> None:
    from mf_lightning.utils import run_is_complete

    metrics = run_dir / "metrics.json"
    if not metrics.is_file():
        return
    data = json.loads(metrics.read_text())
    if not data.get("finished", True):
        raise EnsembleError(f"{run_dir}: the run failed (non-finite metrics in metrics.json): its model.pt must "
                            "not be used")
    if not run_is_complete(data):
        log.warning("%s: the run was cut by trainer.max_time (resume it to finish); its model is used as it is",
                    run_dir)


def _runs_under(folder: Path) -> List[Path]:
    """A run folder itself, or the run folders below it (a sweep, an ensemble run's member_<k>/)."""
    if (folder / "model.pt").is_file():
        return [folder]
    import re

    def natural(p: Path):
        return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", p.relative_to(folder).as_posix())]

    runs = sorted((p.parent for p in folder.rglob("model.pt")), key=natural)
    if not runs:
        raise InputError(f"{folder}: no model.pt in this folder or below it (not a run or sweep folder)")
    return runs


def members_from(paths: Sequence, device: str = "cpu") -> Tuple[List, List[str], List, List]:
    """(members, sources, training ids, calibrations of the ensemble files) of run folders, sweep
    folders, model files and ensemble files (whose members are taken), in the order given."""
    members, sources, ids, calibrations = [], [], [], []
    for given in paths:
        path = Path(given)
        if path.is_dir():
            for run in _runs_under(path):
                _check_finished(run)
                members.append(load_model(run / "model.pt", device=device))
                sources.append(str(run / "model.pt"))
                ids.append(run_training_ids(run))
            continue
        model = load_model(path, device=device)
        if isinstance(model, FieldMACEEnsemble):
            members += list(model.members)
            sources += [s or f"{path} (member {k})" for k, s in enumerate(model.sources)]
            ids += list(model.training_ids)
            calibrations.append(model.calibration)
            continue
        members.append(model)
        sources.append(str(path))
        ids.append(run_training_ids(path.parent) if path.name == "model.pt" else None)
    return members, sources, ids, calibrations


def combine(paths: Sequence, device: str = "cpu") -> FieldMACEEnsemble:
    """An ensemble of the models at ``paths`` (:func:`members_from`), uncalibrated (one ensemble
    file alone keeps its calibration: its members are unchanged). Members trained on different
    splits (``seed=`` also draws the data split, unless ``data.seed=`` is fixed) are combined with
    a warning: no structure may then be both in one member's training split and in the
    calibration."""
    members, sources, ids, calibrations = members_from(paths, device=device)
    calibration = calibrations[0] if len(paths) == 1 and len(calibrations) == 1 else None
    if calibration is None and any(calibrations):
        log.warning("the calibration of the ensemble files given is dropped (the members changed): calibrate again")
    check_distinct(members, sources)
    ensemble = FieldMACEEnsemble(members, calibration=calibration, training_ids=ids, sources=sources)
    known = [t for t in ids if t is not None]
    if any(t != known[0] for t in known[1:]):
        log.warning("the members were trained on different splits (seed= draws the data split too; train members "
                    "with data.seed=<one value> to share it): calibration and eval skip every structure a member "
                    "trained on, which can leave few validation structures")
    if len(known) < len(ids):
        log.warning("%d of %d members come without their run folder's splits/: calibration cannot check that its "
                    "structures were not in their training split", len(ids) - len(known), len(ids))
    return ensemble.eval()


def trained_ids(model) -> set:
    """Every structure id any member of ``model`` was trained on (empty for a single model)."""
    out: set = set()
    for t in getattr(model, "training_ids", None) or []:
        for ids in (t or {}).values():
            out.update(ids)
    return out
