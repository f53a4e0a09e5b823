"""Saving and loading models without pickle.

Our model files hold only tensors and plain Python values (a state dict and a JSON-able
config) and are read with ``torch.load(weights_only=True)``: opening one cannot run code. A
mace-torch ``.model`` file, by contrast, is a pickled module, and unpickling runs code stored in
it; :func:`mf_lightning.model.backbone.load_mace_pickle` reads one without running it (only the
classes a mace model is made of, then rebuilt by mace's constructors), or unpickles it when the
caller opts in with ``allow_pickle=True``. Files are written atomically (temporary file in the
same folder, fsync, rename), so a crash during a save leaves the previous file intact. A file
written before the record checksum loads with a warning that it is unverified.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import torch

from mf_lightning.errors import ModelFileError
from mf_lightning.files import (
    atomic_torch_save,
    guarded_torch_load,
    tensor_checksum,
    verify_record_checksum,
    with_record_checksum,
)
from mf_lightning.model.backbone import build_backbone, convert_backbone, cueq_available
from mf_lightning.model.field_mace import FieldMACE
from mf_lightning.utils import default_dtype, resolve_dtype

__all__ = ["FORMAT", "FORMAT_VERSION", "ModelFileError", "save_model", "load_model", "model_payload",
           "model_from_payload"]
log = logging.getLogger(__name__)

FORMAT = "mf-lightning/field-mace"
FORMAT_VERSION = 1






RECORD_CHECKSUM = "record_sha256"
# loaders of the other record formats, by format key: mf_lightning.model.ensemble registers the
# ensemble's (imported with mf_lightning.model, so load_model always knows it)
LOADERS: dict = {}


def save_model(model, path) -> None:
    """Write ``model`` (a :class:`FieldMACE`, or an ensemble of them:
    :mod:`mf_lightning.model.ensemble`) as a weights-only file, atomically. A model running on
    cuEquivariance is written with its backbone's e3nn weights (mace's converter), so the file
    loads anywhere; ``cueq`` records the choice for :func:`load_model`."""
    # an ensemble writes its own record (mf_lightning.model.ensemble): one file, its members' records in it
    atomic_torch_save(model.file_payload() if hasattr(model, "file_payload") else model_payload(model), path)


def model_payload(model) -> dict:
    """What :func:`save_model` writes for one :class:`FieldMACE`: tensors and plain values, its
    record checksum last (an ensemble file holds one such record per member)."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    if getattr(model, "cueq", False):
        e3nn = convert_backbone(model.backbone, cueq=False).state_dict()
        state = {**{k: v for k, v in state.items() if not k.startswith("backbone.")},
                 **{f"backbone.{k}": v.detach().cpu() for k, v in e3nn.items()}}
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "dtype": str(model.dtype).replace("torch.", ""),
        "backbone_config": model.backbone_config,
        "coupling": model.coupling_config,
        # the unit-free loss scales of the run that trained it (None: not trained here)
        "loss_scales": getattr(model, "loss_scales", None),
        # {head: quantities trained on}: how a multi-head model picks its head (resolve_head)
        "head_quantities": getattr(model, "head_quantities", None),
        # {atomic number: training structures with it} (None: not trained here); JSON-able keys
        "training_elements": (None if getattr(model, "training_elements", None) is None
                              else {str(int(z)): int(n) for z, n in model.training_elements.items()}),
        "state_dict": state,
        "cueq": bool(getattr(model, "cueq", False)),
        # torch does not check the zip CRC on load: a flipped bit in a weight loads silently
        "sha256": tensor_checksum(state),
    }
    # ... and one in the config would too: the whole record, checked before anything is built
    return with_record_checksum(payload, RECORD_CHECKSUM)




def model_checksum(model) -> str:
    """SHA-256 of a model's tensors and its configuration: which model predicted a table's row
    or wrote a trajectory's frame (the same weights in another file give the same checksum).
    An ensemble's covers its members in order and its calibration."""
    if hasattr(model, "ensemble_checksum"):
        return model.ensemble_checksum()
    import hashlib
    import json

    config = json.dumps([model.backbone_config, model.coupling_config], sort_keys=True, default=str)
    return hashlib.sha256((tensor_checksum(model.state_dict()) + config).encode()).hexdigest()


def _weights_only_load(path: Path):
    return guarded_torch_load(
        path, ModelFileError, "model file",
        "not a weights-only file (it needs unpickling of Python objects, which can run code). If it is a "
        "mace-torch .model file you trust, upgrade it with FieldMACE.from_mace(path, allow_pickle=True).")


def load_model(path, device: str = "cpu", dtype=None, cueq: Optional[bool] = None):
    """Load a model written by :func:`save_model` (``weights_only=True``; no code runs).
    ``cueq``: run the backbone on cuEquivariance (True; an error if it is not installed) or on
    e3nn (False); None: as the model was saved, where cuEquivariance is installed. An ensemble
    file gives a :class:`~mf_lightning.model.ensemble.FieldMACEEnsemble`."""
    path = Path(path)
    payload = _weights_only_load(path)
    if isinstance(payload, dict) and payload.get("format") in LOADERS:  # an ensemble file
        return LOADERS[payload["format"]](payload, path, device=device, dtype=dtype, cueq=cueq)
    return model_from_payload(payload, path, device=device, dtype=dtype, cueq=cueq)


def model_from_payload(payload, path, device: str = "cpu", dtype=None, cueq: Optional[bool] = None):
    """The model of one record written by :func:`model_payload` (checked against its checksum
    first); ``path`` names it in messages (a file, or a member of an ensemble file)."""
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ModelFileError(f"{path}: not an mf-lightning model file (format key {FORMAT!r} missing)")
    # files written before it have none: they end with the tensors' "sha256"
    recorded = next(reversed(payload), None) == RECORD_CHECKSUM  # what verify_record_checksum checks
    problem = verify_record_checksum(payload, RECORD_CHECKSUM, older_last_keys=("sha256",))
    if problem:
        raise ModelFileError(f"{path}: the file is corrupted: {problem}; use another copy")
    if not recorded:  # an older file: what it holds is not (all) verified; say so, naming the file
        log.warning("%s: unverified model file: it was written before model files carried a checksum of their "
                    "whole record, so %s; save_model(load_model(path), path) rewrites it with one", path,
                    "its weights are checked but a changed byte in its config would load silently"
                    if "sha256" in payload else "a changed byte in its weights or config would load silently")
    if payload.get("format_version", 0) > FORMAT_VERSION:
        raise ModelFileError(f"{path}: written by a newer mf-lightning (format {payload['format_version']})")
    try:
        saved_dtype = resolve_dtype(payload["dtype"])
        backbone = build_backbone(payload["backbone_config"], saved_dtype)
        with default_dtype(saved_dtype):
            # files written before the field-squared term existed hold a purely bilinear coupling
            coupling = {"field_order": 1, **payload["coupling"]}
            model = FieldMACE(backbone, payload["backbone_config"], **coupling)
    except (KeyError, TypeError, ValueError, AssertionError, RuntimeError) as exc:  # a damaged file of the
        # days before the record checksum, or a config this version cannot build
        raise ModelFileError(f"{path}: does not describe a model this mf-lightning can build "
                             f"({type(exc).__name__}: {exc})") from exc
    state = dict(payload["state_dict"])
    # the tensors' own checksum matters for files without the record's (which covers the tensors)
    stored = None if recorded else payload.get("sha256")  # files before any checksum have neither
    if stored is not None and tensor_checksum(state) != stored:
        raise ModelFileError(f"{path}: the weights do not match the file's checksum: the file is corrupted "
                             "(a changed byte); use another copy")
    # files written before atomic polarisabilities existed: the term was absent, i.e. zero
    state.setdefault("atomic_polarisabilities", torch.zeros_like(model.atomic_polarisabilities))
    state.setdefault("atomic_charges", torch.zeros_like(model.atomic_charges))  # files from before the Z* baseline
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ModelFileError(f"{path}: weights do not match the stored architecture: {exc}") from exc
    model.loss_scales = payload.get("loss_scales")
    model.head_quantities = payload.get("head_quantities")
    elements = payload.get("training_elements")
    model.training_elements = None if elements is None else {int(z): int(n) for z, n in elements.items()}
    model = model.to(device=device, dtype=resolve_dtype(dtype) if dtype is not None else saved_dtype)
    if cueq is None:
        cueq = bool(payload.get("cueq", False))
        if cueq and not cueq_available():
            log.info("%s was trained on cuEquivariance, which is not installed here: running it on e3nn "
                     "(the same numbers)", path)
            cueq = False
    if cueq:
        model.use_cueq()
    return model.eval()


