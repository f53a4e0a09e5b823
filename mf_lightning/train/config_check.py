"""The configuration of ``train.py`` and ``eval.py``, checked once, before any data is read or
anything is written.

Two kinds of mistakes are caught here instead of deep inside Hydra, mace, e3nn, torch or
Lightning (a traceback, exit code 1) or, worse, not at all (a negative loss weight trains a
model to *maximise* that error):

* the command line as Hydra composes it (:func:`check_command_line`): an unknown key
  (``nonsense=1``, ``model.nonsense=1``), an unknown option of a config group
  (``model/coupling=bogus``, ``experiment=bogus``), an override that does not parse. The entry
  points run it before Hydra creates the run folder;
* the composed values (:func:`check_train_config`, :func:`check_eval_config`): batch sizes,
  loss weights and Huber deltas, the model's dtype, sizes and coupling form, label units, and
  values a config leaves to the user (``???``, e.g. ``finetune_replay``'s replay file).

Every problem is one :class:`ConfigError` (an :class:`~mf_lightning.errors.InputError`: one
line on stderr, exit code 2) that names its key, all problems of a config in that one line.
Known names come from the registries: coupling forms (:func:`~mf_lightning.model.coupling.coupling_forms`),
quantities and their units (:mod:`mf_lightning.data.quantities`), dtypes
(:data:`~mf_lightning.utils.DTYPES`), mace's interaction blocks and gates.
"""

from __future__ import annotations

import math
import os
from typing import Any, Iterator, List, Optional, Sequence, Tuple

from omegaconf import DictConfig, ListConfig, OmegaConf

from mf_lightning.errors import InputError


class ConfigError(InputError, ValueError):
    """A configuration the run cannot use: an unknown key or option, or a value out of range.
    The message names every offending key."""


# ---------------------------------------------------------------- the command line (Hydra)
def _sweep_values(override) -> Optional[List[str]]:
    """The values of a sweep override that can be listed without Hydra's config loader
    (choice and range sweeps); None for a plain override, [] for one to leave to Hydra (glob,
    interval: the Optuna sweeper's)."""
    from hydra.core.override_parser.types import ValueType

    if not override.is_sweep_override():
        return None
    if override.value_type == ValueType.GLOB_CHOICE_SWEEP:
        return []
    if override.is_discrete_sweep():
        return list(override.sweep_string_iterator())
    return []


def command_line_overrides(overrides: Sequence[str], multirun: bool) -> List[List[str]]:
    """The override lists to compose so that every value of every sweep is composed once:
    each sweep at its first value, then each further value of one sweep at a time (a sum, not
    the product, of the sweeps' sizes). Without ``-m`` Hydra refuses sweeps itself."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser = OverridesParser.create()
    options: List[List[str]] = []  # per override: the forms to compose ([]: left to Hydra)
    for text in overrides:
        try:
            override = parser.parse_override(text)
        except HydraException as exc:  # the grammar's complaint: OverrideParseException or its HydraException
            raise ConfigError(f"{text}: not a valid override ({_one_line(exc)})") from exc
        values = _sweep_values(override) if multirun else None
        if values is None:
            options.append([text])
        else:
            options.append([f"{override.get_key_element()}={v}" for v in values])
    first = [o[0] for o in options if o]
    out = [first]
    for i, forms in enumerate(options):
        for form in forms[1:]:
            out.append([form if j == i else o[0] for j, o in enumerate(options) if o])
    return out


def _one_line(text) -> str:
    return " ".join(str(text).split())


def composition_error(exc: Exception) -> str:
    """One line for an error of Hydra's composition, naming the key or the group option."""
    from hydra.errors import MissingConfigException

    cause = exc.__cause__
    full_key = getattr(cause, "full_key", None)
    if isinstance(exc, MissingConfigException) and exc.options is not None and "/" in str(exc.missing_cfg_file):
        group, _, name = str(exc.missing_cfg_file).rpartition("/")
        return f"{group}={name}: no such option in config group '{group}'; options: {', '.join(exc.options)}"
    if type(cause).__name__ in ("ConfigAttributeError", "ConfigKeyError") and full_key:
        return (f"{full_key}: no such key in the configuration (a typo? a new key is added with "
                f"+{full_key}=...)")
    if cause is not None and full_key:
        return f"{full_key}: {_one_line(str(cause).splitlines()[0])}"
    return _one_line(exc)


def check_command_line(config_name: str, argv: Sequence[str]) -> None:
    """Compose ``argv`` (``python train.py`` / ``eval.py``'s arguments) as Hydra will, and
    raise :class:`ConfigError` for what Hydra would refuse, before it creates the run folder.
    ``--help``, ``--cfg``, ``--info``, ``--shell-completion`` and another config directory or
    path are Hydra's own business and are not checked. Hydra's argument syntax errors exit 2
    through argparse, as before."""
    from hydra import compose, initialize_config_module
    from hydra._internal.utils import get_args_parser
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    args = get_args_parser().parse_args(list(argv))
    if (args.help or args.hydra_help or args.cfg or args.info or args.shell_completion
            or args.config_dir or args.config_path):
        return
    name = args.config_name or config_name
    for overrides in command_line_overrides(args.overrides, bool(args.multirun)):
        try:
            with initialize_config_module(config_module="mf_lightning.conf", version_base="1.3"):
                compose(config_name=name, overrides=overrides, return_hydra_config=True)
        except (HydraException, OmegaConfBaseException) as exc:
            if debug_requested(args.overrides):
                raise
            raise ConfigError(composition_error(exc)) from exc


def debug_requested(overrides: Sequence[str]) -> bool:
    """``debug=true`` among the overrides, ``MF_DEBUG=1`` or ``HYDRA_FULL_ERROR=1``: show tracebacks."""
    flags = {o.replace(" ", "").lower() for o in overrides}
    return bool(flags & {"debug=true", "+debug=true", "++debug=true"}) or any(
        os.environ.get(v, "") not in ("", "0") for v in ("MF_DEBUG", "HYDRA_FULL_ERROR"))


# ---------------------------------------------------------------- the composed values
class Problems:
    """What is wrong with a config, key by key; :meth:`raise_if_any` makes it one line."""

    def __init__(self):
        self.items: List[str] = []

    def add(self, key: str, message: str, value: Any = None, show_value: bool = True) -> None:
        self.items.append(f"{key}: {message}" + (f", got {value!r}" if show_value else ""))

    def raise_if_any(self) -> None:
        if self.items:
            raise ConfigError("; ".join(self.items))


def _plain(value):
    return OmegaConf.to_container(value, resolve=True) if isinstance(value, (DictConfig, ListConfig)) else value


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def positive_int(p: Problems, key: str, value, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if not _is_int(value) or value < 1:
        p.add(key, "must be a positive integer", value)


def non_negative_int(p: Problems, key: str, value) -> None:
    if not _is_int(value) or value < 0:
        p.add(key, "must be an integer >= 0", value)


def positive_number(p: Problems, key: str, value) -> None:
    if not _is_number(value) or not math.isfinite(value) or value <= 0:
        p.add(key, "must be a finite number > 0", value)


def choice(p: Problems, key: str, value, options: Sequence, what: str = "") -> None:
    if value not in options:
        p.add(key, f"unknown {what or 'value'} {value!r}; choose from {', '.join(map(str, options))}",
              show_value=False)


def missing_values(node, path: str = "") -> Iterator[str]:
    """Dotted keys whose value is ``???`` (a value the config leaves to the user), without
    resolving any interpolation."""
    is_dict = isinstance(node, DictConfig)
    for k in (node.keys() if is_dict else range(len(node))):
        key = (f"{path}.{k}" if path else str(k)) if is_dict else f"{path}[{k}]"
        if OmegaConf.is_missing(node, k):
            yield key
        elif not OmegaConf.is_interpolation(node, k):
            child = node[k]
            if isinstance(child, (DictConfig, ListConfig)):
                yield from missing_values(child, key)


def check_missing(p: Problems, cfg: DictConfig, hints: Optional[dict] = None) -> set:
    """Report every ``???`` value; returns their keys (not checked further)."""
    missing = set(missing_values(cfg))
    for key in sorted(missing):
        hint = (hints or {}).get(key) or f"{key}=..."
        p.add(key, f"needs a value (??? in the config): give {hint}", show_value=False)
    return missing


def _data_sources(data: DictConfig, prefix: str = "data") -> List[Tuple[str, DictConfig]]:
    """(key prefix, config) of every single-source config in ``data`` (itself, or its
    ``sources`` when it combines several)."""
    sources = data.get("sources") if "sources" in data else None
    if isinstance(sources, DictConfig):
        return [(f"{prefix}.sources.{name}", src) for name, src in sources.items() if isinstance(src, DictConfig)]
    return [(prefix, data)]


def _get(node: DictConfig, key: str, skip: set, prefix: str):
    """``node[key]`` resolved, or a sentinel when absent or left ``???``."""
    if key not in node or f"{prefix}.{key}" in skip or OmegaConf.is_missing(node, key):
        return _ABSENT
    return _plain(node[key])


_ABSENT = object()


def check_data(p: Problems, data: DictConfig, skip: set, prefix: str = "data") -> None:
    """Batch sizes, and each source's label quantities and units and field unit."""
    from mf_lightning.data.quantities import QUANTITIES

    for key in ("batch_size", "eval_batch_size"):
        value = _get(data, key, skip, prefix)
        if value is not _ABSENT:
            positive_int(p, f"{prefix}.{key}", value, allow_none=key == "eval_batch_size")
    for where, src in _data_sources(data, prefix):
        if where != prefix:
            for key in ("batch_size", "eval_batch_size"):
                value = _get(src, key, skip, where)
                if value is not _ABSENT:
                    positive_int(p, f"{where}.{key}", value, allow_none=key == "eval_batch_size")
        labels = _get(src, "labels", skip, where)
        for quantity, spec in (labels if isinstance(labels, dict) else {}).items():
            key = f"{where}.labels.{quantity}"
            if spec is None:
                continue
            known = QUANTITIES.get(quantity)
            if known is None or not known.label:
                choice(p, key, quantity, [q for q, v in QUANTITIES.items() if v.label], "quantity")
            elif not isinstance(spec, dict) or "key" not in spec or "unit" not in spec:
                p.add(key, "needs {key: <file key>, unit: <unit>} (or null)", spec)
            elif spec["unit"] not in known.file_units:
                choice(p, f"{key}.unit", spec["unit"], sorted(known.file_units), f"unit of {quantity}")
        field = _get(src, "electric_field", skip, where)
        if isinstance(field, dict) and "key" in field:
            unit = field.get("unit", "V/A")
            if unit not in QUANTITIES["electric_field"].file_units:
                choice(p, f"{where}.electric_field.unit", unit, sorted(QUANTITIES["electric_field"].file_units),
                       "unit of electric_field")


def check_model(p: Problems, model: DictConfig, skip: set) -> None:
    """dtype, sizes, mace's blocks and the coupling (form, init, field order, keys)."""
    from mf_lightning._deps import mace_modules
    from mf_lightning.model.coupling import DEFAULTS, INIT_MODES, coupling_forms
    from mf_lightning.utils import DTYPES

    def get(key):
        return _get(model, key, skip, "model")

    if (v := get("dtype")) is not _ABSENT:
        choice(p, "model.dtype", v, list(DTYPES), "dtype")
    if (v := get("r_max")) is not _ABSENT:
        positive_number(p, "model.r_max", v)
    for key in ("num_bessel", "num_polynomial_cutoff", "num_channels", "num_interactions"):
        if (v := get(key)) is not _ABSENT:
            positive_int(p, f"model.{key}", v)
    for key in ("max_ell", "max_L"):
        if (v := get(key)) is not _ABSENT:
            non_negative_int(p, f"model.{key}", v)
    if (v := get("correlation")) is not _ABSENT:
        values = v if isinstance(v, list) else [v]
        if not values or not all(_is_int(c) and c >= 1 for c in values):
            p.add("model.correlation", "must be a positive integer (or one per layer)", v)
    if (v := get("radial_MLP")) is not _ABSENT:
        if not isinstance(v, list) or not v or not all(_is_int(c) and c >= 1 for c in v):
            p.add("model.radial_MLP", "must be a list of positive layer widths", v)
    for key, registry in (("interaction", mace_modules.interaction_classes),
                          ("interaction_first", mace_modules.interaction_classes),
                          ("gate", mace_modules.gate_dict)):
        if (v := get(key)) is not _ABSENT:
            choice(p, f"model.{key}", v, sorted(registry), f"mace {key}")
    if (v := get("atomic_charges")) is not _ABSENT and v is not None and v is not False \
            and v not in ("auto", "fit") and not isinstance(v, (list, dict)):
        p.add("model.atomic_charges", "must be auto (null), fit, false, a list (one per element) or {Z: q}", v)
    coupling = get("coupling")
    if isinstance(coupling, dict):
        unknown = sorted(set(coupling) - set(DEFAULTS))
        for key in unknown:
            p.add(f"model.coupling.{key}", f"no such coupling setting; settings: {', '.join(DEFAULTS)}",
                  show_value=False)
        form = coupling.get("form", DEFAULTS["form"])
        choice(p, "model.coupling.form", form, coupling_forms(), "coupling form")
        if "init" in coupling:
            choice(p, "model.coupling.init", coupling["init"], INIT_MODES, "coupling init")
        if coupling.get("field_order") is not None:
            choice(p, "model.coupling.field_order", coupling["field_order"], (1, 2), "field order")
        if coupling.get("init_scale") is not None:
            scale = coupling["init_scale"]
            if not _is_number(scale) or not math.isfinite(scale) or scale < 0:
                p.add("model.coupling.init_scale", "must be a finite number >= 0", scale)


def check_loss(p: Problems, cfg: DictConfig, skip: set) -> None:
    """Weights (finite, >= 0, not all 0), Huber deltas and scales (finite, > 0), per known task.
    A negative weight would make training *maximise* that error; an infinite one makes every
    loss infinite."""
    from mf_lightning.data.quantities import tasks

    known = tasks()
    groups = [("loss", cfg.get("loss"), "weights", "huber_delta", "scales")]
    module = cfg.get("module")
    if isinstance(module, DictConfig):  # given directly to the module instead of through loss.*
        groups.append(("module", module, "loss_weights", "huber_delta", None))
    for prefix, node, weights_key, delta_key, scales_key in groups:
        if not isinstance(node, DictConfig):
            continue
        direct = prefix == "module"
        if weights_key in node and not (direct and OmegaConf.is_interpolation(node, weights_key)):
            weights = _get(node, weights_key, skip, prefix)
            if isinstance(weights, dict):
                for task, w in weights.items():
                    key = f"{prefix}.{weights_key}.{task}"
                    if task not in known:
                        choice(p, key, task, known, "task")
                    elif w is None or not _is_number(w) or not math.isfinite(w) or w < 0:
                        p.add(key, "must be a finite number >= 0 (a negative weight maximises that error, "
                                   "an infinite one makes the loss infinite)", w)
                if weights and all(_is_number(w) and w == 0 for w in weights.values()):
                    p.add(f"{prefix}.{weights_key}", "every weight is 0: there is nothing to learn", show_value=False)
            elif weights is not _ABSENT:
                p.add(f"{prefix}.{weights_key}", "must be a mapping {task: weight}", weights)
        if delta_key in node and not (direct and OmegaConf.is_interpolation(node, delta_key)):
            delta = _get(node, delta_key, skip, prefix)
            if isinstance(delta, dict):
                for task, d in delta.items():
                    if task not in known:
                        choice(p, f"{prefix}.{delta_key}.{task}", task, known, "task")
                    else:
                        positive_number(p, f"{prefix}.{delta_key}.{task}", d)
            elif delta is not _ABSENT:
                positive_number(p, f"{prefix}.{delta_key}", delta)
        if scales_key and scales_key in node:
            scales = _get(node, scales_key, skip, prefix) or {}
            for task, s in (scales.items() if isinstance(scales, dict) else []):
                if task not in known:
                    choice(p, f"{prefix}.{scales_key}.{task}", task, known, "task")
                else:
                    positive_number(p, f"{prefix}.{scales_key}.{task}", s)


def check_module(p: Problems, module: DictConfig, skip: set) -> None:
    from mf_lightning.train.module import SCHEDULERS

    if (v := _get(module, "lr", skip, "module")) is not _ABSENT:
        positive_number(p, "module.lr", v)
    if (v := _get(module, "scheduler", skip, "module")) is not _ABSENT:
        choice(p, "module.scheduler", v, SCHEDULERS, "scheduler")
    if (v := _get(module, "freeze_backbone_epochs", skip, "module")) is not _ABSENT:
        non_negative_int(p, "module.freeze_backbone_epochs", v)


def check_train_config(cfg: DictConfig) -> None:
    """Everything :mod:`mf_lightning.train.pipeline` would otherwise fail on (or silently
    accept) after reading data and writing into the run folder. Raises one :class:`ConfigError`."""
    p = Problems()
    skip = check_missing(p, cfg)
    if isinstance(cfg.get("model"), DictConfig):
        check_model(p, cfg.model, skip)
    check_loss(p, cfg, skip)
    if isinstance(cfg.get("module"), DictConfig):
        check_module(p, cfg.module, skip)
    if isinstance(cfg.get("data"), DictConfig):
        check_data(p, cfg.data, skip)
    if cfg.get("overwrite", False) and (cfg.get("resume", False) or cfg.get("ckpt_path")):
        p.add("overwrite", "overwrite=true trains from scratch: it cannot be combined with resume=true or ckpt_path",
              show_value=False)
    check_figures(p, cfg)
    if cfg.get("ensemble") is not None:
        ensemble = _plain(cfg.ensemble)
        non_negative_int(p, "ensemble", ensemble)
        if ensemble == 1:
            p.add("ensemble", "an ensemble needs at least 2 members (0: one model)", ensemble)
    p.raise_if_any()


EVAL_SPLITS = ("auto", "train", "val", "test", "all")
FIGURE_FORMATS = ("png", "pdf", "svg")  # train.plots.FIGURE_FORMATS (matplotlib stays unimported here)


def check_figures(p: Problems, cfg: DictConfig) -> None:
    if "figure_format" in cfg:
        choice(p, "figure_format", cfg.figure_format, FIGURE_FORMATS, "figure format")
    if "figure_dpi" in cfg:
        positive_number(p, "figure_dpi", _plain(cfg.figure_dpi))


def check_eval_config(cfg: DictConfig) -> None:
    """``eval.py``'s config: the model file given, batch size, dtype, split, and the data."""
    from mf_lightning.utils import DTYPES

    p = Problems()
    skip = check_missing(p, cfg, hints={"model_file": "model=<model.pt>", "data.file": "data=<labelled extxyz file>"})
    if "batch_size" in cfg:
        positive_int(p, "batch_size", _plain(cfg.batch_size))
    if cfg.get("dtype") is not None:
        choice(p, "dtype", cfg.dtype, list(DTYPES), "dtype")
    if "split" in cfg:
        choice(p, "split", cfg.split, EVAL_SPLITS, "split")
    if "ionic_max_atoms" in cfg:
        positive_int(p, "ionic_max_atoms", _plain(cfg.ionic_max_atoms))
    if "piezo_order" in cfg:
        from mf_lightning.data.quantities import PIEZO_ORDERS

        choice(p, "piezo_order", cfg.piezo_order, list(PIEZO_ORDERS), "strain order")
    if isinstance(cfg.get("data"), DictConfig):
        check_data(p, cfg.data, skip)
    check_figures(p, cfg)
    p.raise_if_any()
