"""The mace backbone: its constructor config as JSON, building it, upgrading a mace-torch model
(or a mace ``.model`` file, read without running anything in it: :func:`load_mace_pickle`) into
the private ScaleShiftMACE copy that FieldMACE wraps. Saving and loading whole models is
:mod:`mf_lightning.model.io`."""

from __future__ import annotations

import contextlib
import copy
import functools
import pickle
import re
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


# ---------------------------------------------------------------- mace .model files, without running them
# A mace ``.model`` file is a pickled module. Plain unpickling runs whatever the file names, and even
# an unpickler that allows only mace's own classes would still run code from it: e3nn modules load
# TorchScript archives stored in the file (``CodeGenMixin.__setstate__``: ``torch.jit.load``, whose
# scripted ``__setstate__`` runs at once and can write any file through ``torch.from_file``), and
# mace's symmetric contractions are torch.fx GraphModules, rebuilt by ``exec`` of Python source
# stored in the file (``torch.fx.graph_module.reduce_graph_module``). So a file is read by torch's
# weights-only unpickler with only the classes below allowed, its compiled code dropped unread, and
# the model is then built anew by mace's own constructors from its config
# (``extract_config_mace_model``, as mace fine-tunes foundation models) with the file's weights.
_MACE_FILE_GLOBALS = (
    # torch.nn containers and layers (mace's radial MLPs, readouts)
    "torch.nn.modules.container.ModuleList", "torch.nn.modules.container.ModuleDict",
    "torch.nn.modules.container.Sequential", "torch.nn.modules.container.ParameterList",
    "torch.nn.modules.container.ParameterDict", "torch.nn.modules.linear.Linear",
    "torch.nn.modules.linear.Identity", "torch.nn.modules.normalization.LayerNorm",
    "torch.nn.modules.activation.SiLU", "torch.nn.modules.activation.Tanh", "torch.nn.modules.activation.Sigmoid",
    "torch.nn.modules.sparse.Embedding",
    # activations mace stores by reference (its gates; torch.tanh and torch.abs: _TORCH_FUNCTIONS)
    "torch.nn.functional.silu", "torch.nn.functional.sigmoid",
    # e3nn 0.4: irreps, equivariant layers, activations
    "e3nn.o3._irreps.Irrep", "e3nn.o3._irreps.Irreps", "e3nn.o3._irreps._MulIr",
    "e3nn.o3._linear.Linear", "e3nn.o3._linear.Instruction",
    "e3nn.o3._tensor_product._tensor_product.TensorProduct", "e3nn.o3._tensor_product._instruction.Instruction",
    "e3nn.o3._tensor_product._sub.FullyConnectedTensorProduct",
    "e3nn.o3._tensor_product._sub.ElementwiseTensorProduct", "e3nn.o3._tensor_product._sub.FullTensorProduct",
    "e3nn.o3._tensor_product._sub.TensorSquare", "e3nn.o3._spherical_harmonics.SphericalHarmonics",
    "e3nn.nn._activation.Activation", "e3nn.nn._fc.FullyConnectedNet", "e3nn.nn._fc._Layer",
    "e3nn.nn._gate.Gate", "e3nn.nn._gate._Sortcut", "e3nn.nn._extract.Extract", "e3nn.nn._extract.ExtractIr",
    "e3nn.nn._identity.Identity", "e3nn.math._normalize_activation.normalize2mom",
    # mace-torch: the two energy models and the blocks they are made of (names of mace 0.3.x;
    # a name this mace lacks is skipped: mace could not unpickle it either)
    "mace.modules.models.MACE", "mace.modules.models.ScaleShiftMACE",
    "mace.modules.blocks.LinearNodeEmbeddingBlock", "mace.modules.blocks.LinearReadoutBlock",
    "mace.modules.blocks.NonLinearReadoutBlock", "mace.modules.blocks.NonLinearBiasReadoutBlock",
    "mace.modules.blocks.GeneralNonLinearBiasReadoutBlock", "mace.modules.blocks.AtomicEnergiesBlock",
    "mace.modules.blocks.RadialEmbeddingBlock", "mace.modules.blocks.EquivariantProductBasisBlock",
    "mace.modules.blocks.RealAgnosticInteractionBlock", "mace.modules.blocks.RealAgnosticResidualInteractionBlock",
    "mace.modules.blocks.RealAgnosticDensityInteractionBlock",
    "mace.modules.blocks.RealAgnosticDensityResidualInteractionBlock",
    "mace.modules.blocks.RealAgnosticAttResidualInteractionBlock",
    "mace.modules.blocks.RealAgnosticResidualNonLinearInteractionBlock", "mace.modules.blocks.ScaleShiftBlock",
    "mace.modules.radial.BesselBasis", "mace.modules.radial.ChebychevBasis", "mace.modules.radial.GaussianBasis",
    "mace.modules.radial.PolynomialCutoff", "mace.modules.radial.ZBLBasis", "mace.modules.radial.AgnesiTransform",
    "mace.modules.radial.SoftTransform", "mace.modules.radial.RadialMLP",
    "mace.modules.symmetric_contraction.SymmetricContraction", "mace.modules.symmetric_contraction.Contraction",
    "mace.modules.symmetric_contraction.EmptyParam", "mace.modules.irreps_tools.reshape_irreps",
    "mace.modules.irreps_tools.inverse_reshape_irreps", "mace.modules.embeddings.GenericJointEmbedding",
    "mace.modules.gate.GatedEquivariantBlock", "mace.modules.wrapper_ops.CuEquivarianceConfig",
    "mace.modules.wrapper_ops.OEQConfig",
    # numpy values a model may hold as attributes (an np.float64 avg_num_neighbors)
    "numpy.ndarray", "numpy.dtype",
)
# numpy 2 pickles numpy._core, numpy 1 numpy.core: both names, numpy 2's objects
_NUMPY_FUNCTIONS = ("multiarray._reconstruct", "multiarray.scalar")
# torch's C functions are pickled as getattr(torch._C._VariableFunctionsClass, name): this getattr
# gives those (mace's gates torch.tanh and torch.abs, and torch.sigmoid) and nothing else
_TORCH_FUNCTIONS = ("tanh", "abs", "sigmoid")


class DroppedCode(torch.nn.Module):
    """Stands in, while a mace ``.model`` file is read, for compiled code the file holds (a torch.fx
    GraphModule's Python source): the code is not run; the model is rebuilt by mace's constructors."""

    def forward(self, *args, **kwargs):
        raise RuntimeError("compiled code of a mace .model file, not loaded")


def _drop_graph_module(body=None, import_block=None, *args):
    """What ``torch.fx.graph_module.reduce_graph_module`` (``exec`` of the file's source) becomes."""
    return DroppedCode()


class _TorchFunctions:
    """Stands in for ``torch._C._VariableFunctionsClass`` while a mace ``.model`` file is read."""


def _torch_function(owner, name):
    """What ``builtins.getattr`` becomes: only ``torch.<name>`` for a name in _TORCH_FUNCTIONS."""
    if owner is not _TorchFunctions or name not in _TORCH_FUNCTIONS:
        owner_name = "torch._C._VariableFunctionsClass" if owner is _TorchFunctions else type(owner).__name__
        raise pickle.UnpicklingError(f"not allowed: getattr({owner_name}, {name!r})")
    return getattr(torch, name)


def _without_compiled_code(cls):
    """``cls`` (an e3nn ``CodeGenMixin`` module) whose unpickling drops the TorchScript archives the
    file holds instead of loading them; the object is of class ``cls`` once built."""

    def __setstate__(self, state):
        state = dict(state)
        state.pop("__codegen__", None)
        self.__class__ = cls
        torch.nn.Module.__setstate__(self, state)
        self.__codegen__ = []

    return type(cls.__name__, (cls,), {"__setstate__": __setstate__, "__module__": __name__})


@functools.lru_cache(maxsize=1)
def mace_file_allow_list() -> Tuple[Tuple[Any, str], ...]:
    """(object, pickled name) for every global a mace ``.model`` file may name."""
    import importlib

    from e3nn.util.codegen import CodeGenMixin

    allowed = []
    for name in _MACE_FILE_GLOBALS:
        module_name, attr = name.rsplit(".", 1)
        obj = getattr(importlib.import_module(module_name), attr, None)
        if obj is None:
            continue
        if isinstance(obj, type) and issubclass(obj, CodeGenMixin):
            if obj.__setstate__ is not CodeGenMixin.__setstate__:  # a state this module cannot vet
                continue
            obj = _without_compiled_code(obj)
        allowed.append((obj, name))
    core = np._core if hasattr(np, "_core") else np.core
    for name in _NUMPY_FUNCTIONS:
        module_name, attr = name.split(".")
        obj = getattr(getattr(core, module_name), attr)
        allowed += [(obj, f"numpy.core.{name}"), (obj, f"numpy._core.{name}")]
    for dtype_class in {type(np.dtype(c)) for c in "?bhilqBHILQefdgFDGUSO"}:
        allowed.append((dtype_class, f"numpy.dtypes.{dtype_class.__name__}"))
    allowed += [(_drop_graph_module, "torch.fx.graph_module.reduce_graph_module"),
                (DroppedCode, "torch.fx._symbolic_trace.Tracer"),
                (_torch_function, "builtins.getattr"), (_TorchFunctions, "torch._C._VariableFunctionsClass")]
    return tuple(allowed)


@contextlib.contextmanager
def _only_globals(allowed):
    """torch's weights-only unpickler with exactly ``allowed`` beyond its defaults: globals a caller
    added process-wide (``torch.serialization.add_safe_globals``) are set aside meanwhile."""
    before = torch.serialization.get_safe_globals()
    torch.serialization.clear_safe_globals()
    try:
        with torch.serialization.safe_globals(list(allowed)):
            yield
    finally:
        torch.serialization.clear_safe_globals()
        torch.serialization.add_safe_globals(before)


_OPT_IN = ("Only if you trust the file's source, opt in to unpickling it (which runs code stored in it): "
           "allow_pickle=True (FieldMACE.from_mace), --allow-pickle (mf-distill) or model.allow_pickle=true "
           "(train.py)")


def _refused(exc: Exception) -> Optional[str]:
    """What torch's weights-only unpickler refused (a global, a call, a build), or None."""
    text = str(exc)
    for pattern in (r"GLOBAL (\S+)", r"not allowed: (.+)", r"unrecognized function (.+?)(?: which belongs|$)",
                    r"(?:Can only build|Can only create new object)[^\n]*?but got (.+)"):
        m = re.search(pattern, text, flags=re.MULTILINE)
        if m:
            return m.group(1).strip().rstrip(".")
    return None


def _restricted_load(path: Path):
    try:
        with _only_globals(mace_file_allow_list()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        refused = _refused(exc)
        if refused is None:
            raise ModelFileError(f"{path}: truncated or corrupted model file (its pickled record does not "
                                 "parse)") from exc
        raise ModelFileError(
            f"{path}: refused, nothing in it was run: it needs {refused}, which is none of the torch, e3nn and "
            f"mace-torch classes a mace model is made of. {_OPT_IN}.") from exc
    except Exception as exc:  # noqa: BLE001 - a damaged archive fails in torch/zip/pickle code in many ways
        raise ModelFileError(f"{path}: could not load mace model ({type(exc).__name__}: "
                             f"{' '.join(str(exc).split())[:300]})") from exc


def _plain_attributes(module: torch.nn.Module) -> Dict[str, Any]:
    """A module's own settings that no state dict holds (floats, flags, irreps, gates), by name."""
    def plain(v):
        if isinstance(v, (tuple, list)):
            return all(plain(x) for x in v)
        if isinstance(v, dict):
            return all(plain(x) for x in v.values())
        return v is None or isinstance(v, (bool, int, float, str, np.generic, torch.dtype)) or callable(v) and \
            not isinstance(v, (torch.nn.Module, type))

    return {k: v for k, v in vars(module).items() if not k.startswith("_") and k != "training" and plain(v)}


def _rebuilt(skeleton: torch.nn.Module, path: Path) -> torch.nn.Module:
    """A fresh mace model equal to ``skeleton`` (read without its compiled code): built by mace's
    constructors from its config, with its weights, and checked module by module (types and every
    plain setting) so that a model the config does not describe is an error, not another model."""
    from e3nn.util.codegen import CodeGenMixin

    try:
        _, config = backbone_config_of(skeleton)
        dtype = skeleton.atomic_energies_fn.atomic_energies.dtype
        kwargs = config_from_json(config)
        with default_dtype(dtype):
            if type(skeleton) is MACE:
                for k in ("atomic_inter_scale", "atomic_inter_shift"):
                    kwargs.pop(k)
                fresh = MACE(**kwargs).to(dtype)
            else:
                fresh = ScaleShiftMACE(**kwargs).to(dtype)
        # the constants of e3nn's compiled code (Wigner 3j symbols) are the rebuilt code's own
        compiled = tuple(f"{name}.{f}." if name else f"{f}." for name, m in fresh.named_modules()
                         if isinstance(m, CodeGenMixin) for f in getattr(m, "__codegen__", ()))
        result = fresh.load_state_dict(skeleton.state_dict(), strict=False)
        missing = [k for k in result.missing_keys if not k.startswith(compiled)]
        if missing or result.unexpected_keys:
            raise RuntimeError(f"weights missing from the file: {missing[:3]}; weights the model does not have: "
                               f"{result.unexpected_keys[:3]}")
    except Exception as exc:  # noqa: BLE001 - mace's config reader and constructors fail in many ways
        text = " ".join(str(exc).split())
        raise ModelFileError(f"{path}: could not rebuild the mace model it holds from its config "
                             f"({type(exc).__name__}: {text[:300]}). {_OPT_IN}.") from exc
    built = dict(fresh.named_modules())
    for name, old in skeleton.named_modules():
        new = built.get(name)
        expected = torch.fx.GraphModule if isinstance(old, DroppedCode) else type(old)
        if not isinstance(new, expected) or (expected is not torch.fx.GraphModule and type(new) is not expected):
            problem = f"{name or 'the model'} is a {type(old).__name__}, rebuilt as a {type(new).__name__}"
            break
        new_attrs = _plain_attributes(new)
        changed = [k for k, v in _plain_attributes(old).items() if k in new_attrs and not _same(v, new_attrs[k])]
        if changed:
            problem = f"{name or 'the model'}.{changed[0]} is {getattr(old, changed[0])!r} in the file, " \
                      f"{getattr(new, changed[0])!r} rebuilt"
            break
    else:
        return fresh.train(skeleton.training)
    raise ModelFileError(f"{path}: the mace model it holds is not fully described by its config ({problem}). "
                         f"{_OPT_IN}.")


def _same(a, b) -> bool:
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        a, b = [x for x in a], [y for y in b]  # (e3nn's Irrep, a tuple, has no len())
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    try:
        return bool(a == b)
    except Exception:  # noqa: BLE001 - values without a plain comparison
        return False


def load_mace_pickle(path, allow_pickle: bool = False) -> torch.nn.Module:
    """A mace-torch model from a ``.model`` file, a foundation-model name (``mace-mp-0:medium``) or
    a URL (fetched and pinned by :mod:`mf_lightning.model.foundation`).

    Nothing in the file is run, whatever its source: it is read by torch's weights-only unpickler
    allowing only the torch, e3nn and mace-torch classes a mace model is made of
    (:func:`mace_file_allow_list`), its compiled code (e3nn's TorchScript, mace's torch.fx graphs)
    is dropped unread, and the model is rebuilt by mace's constructors with the file's weights. A
    file that names anything else is refused before anything runs. ``allow_pickle=True`` is the
    escape hatch for trusted files the allow-list cannot read: plain unpickling, which runs code
    from the file."""
    from mf_lightning.model import foundation

    text, url = str(path), None
    if not Path(text).exists() and (text.startswith(foundation.URL_SCHEMES)
                                    or ("/" not in text and not Path(text).suffix)):
        url = foundation.url_of(text)  # a name or URL (an unknown name: an error listing them)
        path, _ = foundation.resolve_source(text, record=False)  # pinned once it has loaded
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: no such model file")
    try:
        model = _load_mace_file(path, allow_pickle)
    except ModelFileError as exc:
        if url is None:
            raise
        raise ModelFileError(f"{exc} (fetched from {url} into mace's cache: delete {path} to fetch it "
                             "again)") from exc.__cause__
    if url is not None:
        foundation.pin(path, url)
    return model


def _load_mace_file(path: Path, allow_pickle: bool) -> torch.nn.Module:
    if allow_pickle:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as exc:  # noqa: BLE001 - any unpickling failure is a bad file for the user
            raise ModelFileError(f"{path}: could not load mace model ({type(exc).__name__}: "
                                 f"{' '.join(str(exc).split())[:300]})") from exc
    else:
        obj = _restricted_load(path)
    if isinstance(obj, dict) and str(obj.get("format", "")).startswith("mf-lightning/"):
        raise ModelFileError(f"{path}: this is already an mf-lightning model; use mf_lightning.load_model")
    if not isinstance(obj, torch.nn.Module):
        raise ModelFileError(f"{path}: holds a {type(obj).__name__}, not a mace-torch model")
    if allow_pickle:
        return obj
    if type(obj) not in (MACE, ScaleShiftMACE):
        raise ModelFileError(f"{path}: holds a {type(obj).__name__}, not a mace-torch MACE or ScaleShiftMACE")
    return _rebuilt(obj, path)


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
