"""Saving and loading models without pickle.

Our model files hold only tensors and plain Python values (a state dict and a JSON-able
config) and are read with ``torch.load(weights_only=True)``: opening one cannot run code. A
mace-torch ``.model`` file, by contrast, is a pickled module, and unpickling runs code stored in
it; :func:`load_mace_pickle` therefore refuses unless the caller opts in with
``allow_pickle=True``. Files are written atomically (temporary file in the same folder, fsync,
rename), so a crash during a save leaves the previous file intact.
"""

from __future__ import annotations

import copy
import errno
import pickle
import zipfile
from pathlib import Path
from typing import Any, Dict, Tuple

import numpy as np
import torch
from mace.modules.blocks import ScaleShiftBlock
from mace.modules.models import MACE, ScaleShiftMACE
from mace.tools.scripts_utils import extract_config_mace_model

from mf_lightning._deps import mace_modules, o3
from mf_lightning.errors import InputError

FORMAT = "mf-lightning/field-mace"
FORMAT_VERSION = 1


class ModelFileError(InputError, RuntimeError):
    """A model file is missing, truncated, corrupted, or not of a kind we may load."""


# ---------------------------------------------------------------- backbone config <-> JSON
_CLASS_KEYS = {
    "interaction_cls": mace_modules.interaction_classes,
    "interaction_cls_first": mace_modules.interaction_classes,
    "readout_cls": mace_modules.readout_classes,
}
_IRREPS_KEYS = ("hidden_irreps", "MLP_irreps", "edge_irreps")


def plain_value(value):
    """Tensors, arrays and numpy scalars -> plain Python values (JSON- and weights-only-safe)."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    return value


def config_to_json(config: Dict[str, Any]) -> Dict[str, Any]:
    """mace-torch constructor kwargs -> plain values (no classes, functions or arrays)."""
    out = {}
    for k, v in config.items():
        if k in _CLASS_KEYS:
            v = v.__name__
        elif k in _IRREPS_KEYS:
            v = None if v is None else str(o3.Irreps(v))
        elif k == "gate":
            names = [n for n, f in mace_modules.gate_dict.items() if f is v]
            if not names:
                raise ValueError(f"readout gate {v!r} is not one of mace's gates {list(mace_modules.gate_dict)}")
            v = names[0]
        elif k == "cueq_config":
            v = None  # the e3nn code path; cuEquivariance is a run-time choice, not a weight
        elif k == "distance_transform":
            v = "None" if v is None else v
        out[k] = plain_value(v)
    return out


def config_from_json(config: Dict[str, Any]) -> Dict[str, Any]:
    """Inverse of :func:`config_to_json`: kwargs for ``ScaleShiftMACE(**kwargs)``."""
    out = dict(config)
    for k, table in _CLASS_KEYS.items():
        if k in out:
            out[k] = table[out[k]]
    for k in _IRREPS_KEYS:
        if out.get(k) is not None:
            out[k] = o3.Irreps(out[k])
    out["gate"] = mace_modules.gate_dict[out.get("gate", "None")]
    for k in ("atomic_energies", "atomic_inter_scale", "atomic_inter_shift"):
        out[k] = np.asarray(out[k], dtype=float)
    return out


def backbone_config_of(source: torch.nn.Module) -> Tuple[ScaleShiftMACE, Dict[str, Any]]:
    """A private ScaleShiftMACE copy of ``source`` (every weight kept) and its JSON config.

    A plain ``MACE`` sums E0 + pair + readouts; ``ScaleShiftMACE`` with scale 1 and shift 0
    computes the same, so a plain model is upgraded by giving its deep copy that identity
    scale-shift block (the only thing ``ScaleShiftMACE.__init__`` adds to ``MACE``).
    """
    if type(source) is ScaleShiftMACE:
        backbone = copy.deepcopy(source)
    elif type(source) is MACE:
        backbone = copy.deepcopy(source)
        n_heads = len(getattr(source, "heads", ["Default"]))
        dtype = source.atomic_energies_fn.atomic_energies.dtype
        scale_shift = ScaleShiftBlock(scale=np.ones(n_heads), shift=np.zeros(n_heads))
        backbone.__class__ = ScaleShiftMACE
        backbone.scale_shift = scale_shift.to(dtype)
    else:
        raise TypeError(
            f"from_mace takes a mace-torch MACE or ScaleShiftMACE, got {type(source).__name__}"
        )
    config = extract_config_mace_model(backbone)
    if "error" in config:
        raise TypeError(config["error"])
    # extract_config_mace_model reads use_reduced_cg from the model; make sure the flag that
    # decides the product basis (default True in the class, False in mace's CLI) survives.
    config["use_reduced_cg"] = bool(getattr(source, "use_reduced_cg", False))
    config["keep_last_layer_irreps"] = _keeps_last_layer_irreps(source)
    return backbone, config_to_json(config)


def with_heads(backbone: ScaleShiftMACE, config_json: Dict[str, Any], heads) -> Tuple[ScaleShiftMACE, Dict[str, Any]]:
    """A copy of a single-head backbone with ``heads`` (e.g. one per fine-tuning data source),
    each head starting as an exact copy of the source head (mace's own multi-head fine-tuning
    transfer, ``load_foundations_elements``; E0, scale and shift are copied per head)."""
    from mace.tools import AtomicNumberTable
    from mace.tools.finetuning_utils import load_foundations_elements

    heads = [str(h) for h in heads]
    if len(backbone.heads) != 1:
        raise ValueError(f"adding heads needs a single-head source model; this one has {backbone.heads}")
    config = dict(config_json)
    n = len(heads)
    config["heads"] = heads
    e0 = np.asarray(config["atomic_energies"], dtype=float).reshape(1, -1)
    config["atomic_energies"] = np.tile(e0, (n, 1)).tolist()
    for k in ("atomic_inter_scale", "atomic_inter_shift"):
        config[k] = np.repeat(np.asarray(config[k], dtype=float).reshape(-1)[:1], n).tolist()
    dtype = backbone.atomic_energies_fn.atomic_energies.dtype
    new = build_backbone(config, dtype)
    max_L = max(ir.l for _, ir in o3.Irreps(config["hidden_irreps"]))
    load_foundations_elements(new, backbone, AtomicNumberTable([int(z) for z in backbone.atomic_numbers]),
                              load_readout=True, use_shift=True, use_scale=True, max_L=max_L, default_dtype=dtype)
    return new, config


def _keeps_last_layer_irreps(model) -> bool:
    if len(model.products) < 2:
        return False
    last = o3.Irreps(str(model.products[-1].linear.irreps_out))
    return any(ir.l > 0 for _, ir in last)


def build_backbone(config_json: Dict[str, Any], dtype: torch.dtype) -> ScaleShiftMACE:
    from mf_lightning.utils import default_dtype

    with default_dtype(dtype):
        return ScaleShiftMACE(**config_from_json(config_json)).to(dtype)


# ---------------------------------------------------------------- files
def atomic_torch_save(obj, path) -> None:
    """``torch.save`` through :func:`~mf_lightning.utils.atomic_open` (temporary file beside
    ``path``, fsync, rename over it).

    Temporary files left by earlier writes of the same ``path`` that were killed (SIGKILL runs no
    clean-up) are removed first: one writer per target is the rule (a training run holds a lock
    on its run folder). A write that fails because the disk is full raises ``OSError(ENOSPC)``
    naming the file, not torch's ``enforce fail at inline_container.cc``."""
    from mf_lightning.utils import atomic_open

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        stale.unlink(missing_ok=True)
    try:
        with atomic_open(path, "wb") as fh:
            torch.save(obj, fh)
    except RuntimeError as exc:
        if "file write failed" in str(exc) or "unexpected pos" in str(exc):
            raise OSError(errno.ENOSPC, "No space left on device (disk full)", str(path)) from exc
        raise


def tensor_checksum(state: Dict[str, torch.Tensor]) -> str:
    """SHA-256 over every tensor's name, dtype, shape and bytes, in name order."""
    import hashlib

    h = hashlib.sha256()
    for name, t in sorted(state.items()):
        t = t.detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def save_model(model, path) -> None:
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
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
        "state_dict": state,
        # torch does not check the zip CRC on load: a flipped bit in a weight loads silently
        "sha256": tensor_checksum(state),
    }
    atomic_torch_save(payload, path)


def guarded_torch_load(path, error: type, kind: str, pickle_message: str, corrupt_hint: str = "",
                       allow_pickle: bool = False, map_location="cpu"):
    """``torch.load`` (weights-only unless ``allow_pickle``) whose failures are ``error`` with a
    message: no such ``kind``; truncated or corrupted (+ ``corrupt_hint``); or, for a file that
    needs unpickling, ``pickle_message``. Shared by model files and training checkpoints."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: no such {kind}")
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive; a cut one has no directory
        raise error(f"{path}: truncated or corrupted {kind} (not a complete torch archive).{corrupt_hint}")
    try:
        return torch.load(path, map_location=map_location, weights_only=not allow_pickle)
    except pickle.UnpicklingError as exc:
        raise error(f"{path}: {pickle_message}") from exc
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as exc:
        raise error(f"{path}: truncated or corrupted {kind} ({type(exc).__name__}: "
                    f"{str(exc).splitlines()[0] if str(exc) else ''}).{corrupt_hint}") from exc


def _weights_only_load(path: Path):
    return guarded_torch_load(
        path, ModelFileError, "model file",
        "not a weights-only file (it needs unpickling of Python objects, which can run code). If it is a "
        "mace-torch .model file you trust, upgrade it with FieldMACE.from_mace(path, allow_pickle=True).")


def load_model(path, device: str = "cpu", dtype=None):
    """Load a model written by :meth:`FieldMACE.save` (``weights_only=True``; no code runs)."""
    from mf_lightning.model.field_mace import FieldMACE
    from mf_lightning.utils import default_dtype, resolve_dtype

    path = Path(path)
    payload = _weights_only_load(path)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ModelFileError(f"{path}: not an mf-lightning model file (format key {FORMAT!r} missing)")
    if payload.get("format_version", 0) > FORMAT_VERSION:
        raise ModelFileError(f"{path}: written by a newer mf-lightning (format {payload['format_version']})")
    saved_dtype = resolve_dtype(payload["dtype"])
    backbone = build_backbone(payload["backbone_config"], saved_dtype)
    with default_dtype(saved_dtype):
        # files written before the field-squared term existed hold a purely bilinear coupling
        coupling = {"field_order": 1, **payload["coupling"]}
        model = FieldMACE(backbone, payload["backbone_config"], **coupling)
    state = dict(payload["state_dict"])
    stored = payload.get("sha256")  # files written before checksums existed have none
    if stored is not None and tensor_checksum(state) != stored:
        raise ModelFileError(f"{path}: the weights do not match the file's checksum: the file is corrupted "
                             "(a changed byte); use another copy")
    # files written before atomic polarisabilities existed: the term was absent, i.e. zero
    state.setdefault("atomic_polarisabilities", torch.zeros_like(model.atomic_polarisabilities))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ModelFileError(f"{path}: weights do not match the stored architecture: {exc}") from exc
    model.loss_scales = payload.get("loss_scales")
    model.head_quantities = payload.get("head_quantities")
    model = model.to(device=device, dtype=resolve_dtype(dtype) if dtype is not None else saved_dtype)
    return model.eval()


def load_mace_pickle(path, allow_pickle: bool = False) -> torch.nn.Module:
    """Load a pickled mace-torch ``.model`` file, only with an explicit opt-in. ``path`` may also
    be a foundation-model name (``mace-mp-0:medium``) or a URL, fetched and pinned by
    :mod:`mf_lightning.model.foundation`; mace-torch's named official models need no opt-in
    (as with ``mace_mp``), a URL does."""
    from mf_lightning.model.foundation import URL_SCHEMES, resolve_source

    text = str(path)
    if not Path(text).exists() and (text.startswith(URL_SCHEMES) or ("/" not in text and not Path(text).suffix)):
        path, trusted = resolve_source(text)  # a name or URL (an unknown name: an error listing them)
        allow_pickle = allow_pickle or trusted
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: no such model file")
    if not allow_pickle:
        raise ModelFileError(
            f"{path}: a mace-torch .model file is a pickled Python module; loading it executes code "
            "stored in the file. Only for files from a source you trust, opt in: --allow-pickle "
            "(python -m mf_lightning.data.distill), model.allow_pickle=true (train.py), or "
            "allow_pickle=True (FieldMACE.from_mace in Python)."
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is a bad file for the user
        raise ModelFileError(f"{path}: could not load mace model ({type(exc).__name__}: {exc})") from exc
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        raise ModelFileError(f"{path}: this is already an mf-lightning model; use mf_lightning.load_model")
    if not isinstance(obj, torch.nn.Module):
        raise ModelFileError(f"{path}: holds a {type(obj).__name__}, not a mace-torch model")
    return obj
