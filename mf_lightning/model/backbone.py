"""The mace backbone: its constructor config as JSON, building it, upgrading a mace-torch model
(or a pickled ``.model`` file, only with an opt-in) into the private ScaleShiftMACE copy that
FieldMACE wraps. Saving and loading whole models is :mod:`mf_lightning.model.io`."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import numpy as np
import torch
from mace.modules.blocks import ScaleShiftBlock
from mace.modules.models import MACE, ScaleShiftMACE
from mace.tools.scripts_utils import extract_config_mace_model

from mf_lightning._deps import mace_modules, o3
from mf_lightning.errors import CueqUnavailableError, ModelFileError
from mf_lightning.files import plain_value
from mf_lightning.utils import default_dtype

# ---------------------------------------------------------------- backbone config <-> JSON
_CLASS_KEYS = {
    "interaction_cls": mace_modules.interaction_classes,
    "interaction_cls_first": mace_modules.interaction_classes,
    "readout_cls": mace_modules.readout_classes,
}
_IRREPS_KEYS = ("hidden_irreps", "MLP_irreps", "edge_irreps")




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
    with default_dtype(dtype):
        return ScaleShiftMACE(**config_from_json(config_json)).to(dtype)


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
            "(mf-distill), model.allow_pickle=true (train.py), or "
            "allow_pickle=True (FieldMACE.from_mace in Python)."
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is a bad file for the user
        raise ModelFileError(f"{path}: could not load mace model ({type(exc).__name__}: {exc})") from exc
    if isinstance(obj, dict) and str(obj.get("format", "")).startswith("mf-lightning/"):
        raise ModelFileError(f"{path}: this is already an mf-lightning model; use mf_lightning.load_model")
    if not isinstance(obj, torch.nn.Module):
        raise ModelFileError(f"{path}: holds a {type(obj).__name__}, not a mace-torch model")
    return obj


# ---------------------------------------------------------------- cuEquivariance
def cueq_available() -> bool:
    """Whether mace-torch found cuequivariance-torch (``pip install '.[cueq]'``; on a GPU also
    the CUDA kernels, ``'.[gpu]'``). Without the kernels it runs, slowly, in plain torch."""
    from mace.modules import wrapper_ops

    return bool(getattr(wrapper_ops, "CUET_AVAILABLE", False))


def convert_backbone(backbone: ScaleShiftMACE, cueq: bool, fused: Optional[bool] = None) -> ScaleShiftMACE:
    """The backbone rebuilt on cuEquivariance (``cueq=True``) or back on e3nn, every weight
    carried over by mace-torch's own converters (``mace.cli.convert_e3nn_cueq`` and
    ``convert_cueq_e3nn``). The cuEquivariance blocks use the ``mul_ir`` layout: node features
    keep e3nn's order, so FieldMACE's coupling (an e3nn tensor product with no cuEquivariance
    counterpart in mace) reads and writes them unchanged between the blocks. ``fused``: mace's
    fused convolution kernel (CUDA only; default: where the backbone is on a GPU, as mace does)."""
    if cueq and not cueq_available():
        raise CueqUnavailableError("cuEquivariance was requested (model.cueq=true) but cuequivariance-torch is not "
                                   "installed: pip install '.[gpu]' (CUDA) or '.[cueq]' (any device, slow), "
                                   "or set model.cueq=false")
    reference = next(backbone.parameters())
    device, dtype = reference.device, reference.dtype
    with default_dtype(dtype):  # mace's converters set torch's default dtype process-wide
        if cueq:
            from mace.cli.convert_e3nn_cueq import run

            # mace fuses the convolution only when told "cuda" (not "cuda:1"); .to() places it after
            fused = device.type == "cuda" if fused is None else bool(fused)
            new = run(backbone, device="cuda" if fused else "cpu", return_model=True, layout="mul_ir")
        else:
            from mace.cli.convert_cueq_e3nn import run

            new = run(backbone, device="cpu", return_model=True)
    return new.to(device=device, dtype=dtype)
