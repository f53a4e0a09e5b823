"""What ``train.py`` does, in order: data -> dataset statistics -> model -> module -> trainer ->
fit -> test -> write metrics.json, the exported model and parity plots -> print the table.
Everything is built from the Hydra config; this module only puts objects in order."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import EarlyStopping, ModelCheckpoint, Timer
from pytorch_lightning.loggers import CSVLogger

from mf_lightning.data import keys
from mf_lightning.data.datamodules import FieldDataModule, MultiSourceDataModule
from mf_lightning.data.dataset import ref_key, weight_key
from mf_lightning.data.quantities import metric_units
from mf_lightning.errors import RunFailedError
from mf_lightning.files import FileLock, atomic_write_text, dumps_json
from mf_lightning.model.build import build_model
from mf_lightning.model.field_mace import FieldMACE, fit_atomic_charges, fit_atomic_polarisabilities
from mf_lightning.model.io import save_model
from mf_lightning.runtime import configure_process
from mf_lightning.train.callbacks import run_progress_bar
from mf_lightning.train.checkpointing import AtomicCheckpointIO, check_checkpoint
from mf_lightning.train.config_check import check_train_config
from mf_lightning.train.losses import label_scales
from mf_lightning.train.module import FieldMACEModule
from mf_lightning.train.plots import parity_plots
from mf_lightning.train.run_folder import claim_run_folder, write_run_record
from mf_lightning.units import EPS0_E_PER_V_A
from mf_lightning.utils import markdown_table

log = logging.getLogger(__name__)


def dataset_statistics(graphs: List, atomic_numbers: List[int]) -> Dict[str, Any]:
    """E0 per element (least squares of labelled energies on composition), mean neighbour count,
    and the RMS force (MACE's scale); shift 0. Computed on the training split only."""
    rows, energies, forces, edges, nodes = [], [], [], 0, 0
    for g in graphs:
        edges += g[keys.EDGE_INDEX].shape[1]
        nodes += g.num_nodes
        if float(g[weight_key("energy")]) > 0:
            counts = g[keys.NODE_ATTRS].sum(0).numpy()
            rows.append(counts)
            energies.append(float(g[ref_key("energy")]))
        if float(g[weight_key("forces")]) > 0:
            forces.append(g[ref_key("forces")].numpy().ravel())
    e0 = np.zeros(len(atomic_numbers))
    if rows:
        A = np.array(rows)
        present = A.sum(0) > 0
        sol, *_ = np.linalg.lstsq(A[:, present], np.array(energies), rcond=None)
        e0[present] = sol
    scale = float(np.sqrt(np.mean(np.concatenate(forces) ** 2))) if forces else 1.0
    return {
        "atomic_energies": e0.tolist(),
        "avg_num_neighbors": edges / max(nodes, 1),
        "atomic_inter_scale": scale if scale > 0 else 1.0,
        "atomic_inter_shift": 0.0,
    }


def training_element_counts(graphs: List, atomic_numbers: List[int]) -> Dict[int, int]:
    """{atomic number: number of training structures that contain it} (0 for an element of the
    table no training structure has): what the model's extrapolation flag compares against."""
    counts = np.zeros(len(atomic_numbers), dtype=int)
    for g in graphs:
        counts += (g[keys.NODE_ATTRS].sum(0).numpy() > 0).astype(int)[: len(atomic_numbers)]
    return {int(z): int(n) for z, n in zip(atomic_numbers, counts)}


def make_datamodule(cfg: DictConfig) -> MultiSourceDataModule:
    data = instantiate(cfg.data)
    if isinstance(data, FieldDataModule):
        data = MultiSourceDataModule({data.name: data}, batch_size=data.batch_size, seed=cfg.seed)
    return data


def upgrade_source_model(cfg: DictConfig, dm: MultiSourceDataModule):
    """``model.source``: a mace-torch model file to upgrade (FieldMACE.from_mace), or None.
    A single-head source trained on several data sources gets one head per source (each a copy
    of the source head), as in the paper's fine-tune; otherwise sources use the model's heads."""
    source = cfg.model.get("source")
    if not source:
        return None
    from mf_lightning.model.backbone import load_mace_pickle
    from mf_lightning.simulation.distill import distill

    coupling = OmegaConf.to_container(cfg.model.coupling, resolve=True)
    module = load_mace_pickle(source, allow_pickle=bool(cfg.model.get("allow_pickle", False)))
    for src in dm.sources.values():  # a replay set to be labelled by the source model itself
        if getattr(src, "distill", None) and not src.file:
            path = src.distill_from(FieldMACE.from_mace(module, form="none", dtype=cfg.model.dtype), distill)
            log.info("replay source %r: structures labelled by %s in %s", src.name, source, path)
    heads = None
    if len(dm.sources) > 1:
        if len(module.heads) == 1:
            heads = dm.heads
        else:
            log.info("source model has several heads; data sources train its existing heads")
    return FieldMACE.from_mace(module, dtype=cfg.model.dtype, heads=heads, **coupling)


def bind_to_model(dm: MultiSourceDataModule, model: FieldMACE, head: Optional[str] = None) -> None:
    """Make the data use ``model``'s element table, cutoff and heads (before ``dm.setup()``).
    Each source uses, in this order: ``head`` if given; its own head or its name if the model has
    such a head; else the one head the model was trained on the source's labels with
    (:meth:`FieldMACE.resolve_head`), which raises if that is ambiguous: never a silent guess."""
    dm.atomic_numbers = model.atomic_numbers
    for name, src in dm.sources.items():
        src.r_max = model.r_max
        if head is not None:
            chosen = model.resolve_head(head)
        elif src.head in model.heads:
            chosen = src.head
        elif name in model.heads:
            chosen = name
        else:
            chosen = model.resolve_head(None, src.labels)
        if chosen != src.head:
            log.info("source %s uses the model's head %r", name, chosen)
        src.head = chosen
    dm.fixed_heads = model.heads


def head_quantities(cfg: DictConfig, dm: MultiSourceDataModule) -> Dict[str, List[str]]:
    """{head: the quantities it is trained on} (labelled by its sources, with a loss weight > 0),
    saved in the model file so a multi-head model can pick the head for each use."""
    weights = cfg.loss.weights
    out: Dict[str, List[str]] = {}
    for src in dm.sources.values():
        trained = out.setdefault(src.head, [])
        for q in keys.ALL_PROPERTIES:
            if q in src.labels and float(weights.get(q) or 0.0) > 0 and q not in trained:
                trained.append(q)
    return out


def make_model(cfg: DictConfig, dm: MultiSourceDataModule, upgraded=None):
    """The upgraded source model as it is, or a new model whose element table, heads and
    dataset statistics (E0s, neighbour count, scale) come from the training data."""
    if upgraded is not None:
        return upgraded, {}
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    for key in ("_target_", "source", "allow_pickle", "cueq"):
        model_cfg.pop(key, None)
    model_cfg["atomic_numbers"] = dm.atomic_numbers
    model_cfg["heads"] = dm.heads
    stats = dataset_statistics(dm.train_graphs(), dm.atomic_numbers)
    if model_cfg.get("atomic_polarisabilities") is None and model_cfg["coupling"].get("form") != "none":
        a = fit_atomic_polarisabilities(dm.train_graphs(), len(dm.atomic_numbers))
        if a is not None:
            stats["atomic_polarisabilities"] = a.tolist()
    charges = resolve_atomic_charges(model_cfg.get("atomic_charges"), model_cfg["coupling"].get("form"), dm)
    if charges is not None:
        stats["atomic_charges"] = charges
    model_cfg["atomic_charges"] = charges if charges is not None else model_cfg.get("atomic_charges")
    for key, value in stats.items():
        if model_cfg.get(key) is None:
            model_cfg[key] = value
    model = build_model(**model_cfg)
    if cfg.model.get("atomic_inter_shift") is None:
        stats["atomic_inter_shift"] = centre_initial_energy(model, dm.train_graphs())
    log.info("dataset statistics: %s",
             {k: (np.round(v, 4) if not isinstance(v, list) else "...") for k, v in stats.items()})
    return model, stats


def resolve_atomic_charges(setting, form: Optional[str], dm: MultiSourceDataModule) -> Optional[List[float]]:
    """The per-element Born charges to build the model with (``model.atomic_charges``): fitted
    (:func:`fit_atomic_charges`) for ``"fit"``, and for ``None``/``"auto"`` where the training
    data have Z* labels and none has absolute P labels; None (no charge term) for ``False``,
    for coupling ``none`` and otherwise; a given list or dict is left to ``build_model``.

    Why not where P is labelled: the term's P moves by q a / Omega when a file re-wraps an atom
    into the cell, not by a quantum (:func:`~mf_lightning.model.field_mace.charge_enthalpy`),
    and MD files do (alpha-quartz's frames re-wrap atoms between frames)."""
    if setting is False or form == "none" or isinstance(setting, (list, tuple, dict)):
        return None
    if setting not in (None, "auto", "fit"):
        raise ValueError(f"model.atomic_charges={setting!r}: auto (null), fit, false, a list or {{Z: q}}")
    train = dm.train_graphs()
    has = {t: any(float(g[weight_key(t)]) > 0 for g in train) for t in ("becs", "polarisation")}
    if setting != "fit" and (not has["becs"] or has["polarisation"]):
        return None
    q = fit_atomic_charges(train, len(dm.atomic_numbers))
    return None if q is None else q.tolist()


def centre_initial_energy(model: FieldMACE, graphs: List, max_graphs: int = 32) -> float:
    """Set the scale-shift block's shift so that the *initial* model's interaction energy per
    atom averages zero over (up to ``max_graphs``) energy-labelled training structures, and
    return it. E0s are the least-squares fit of the labels, so the labels' own residual
    averages zero; a random readout does not, and its offset (per atom, of order the force RMS
    that scales it) would otherwise make the energy term ten times every other term at step 0
    and spend the first steps removing it. Like mace's own shift it is a fixed buffer after this
    (saved in the state dict and in the model's config)."""
    from mf_lightning.data.graphs import collate

    labelled = [g for g in graphs if float(g[weight_key("energy")]) > 0][:max_graphs]
    if not labelled:
        return 0.0
    shift_block = model.backbone.scale_shift
    total, atoms = 0.0, 0
    for start in range(0, len(labelled), 8):
        chunk = labelled[start:start + 8]
        batch = collate(chunk, dtype=model.dtype)
        with torch.no_grad():
            e0 = model.backbone.atomic_energies_fn(batch[keys.NODE_ATTRS])[:, 0]  # mace's E0 block, head 0
            energy = model(batch, properties=(keys.ENERGY,))[keys.ENERGY]
        total += float(energy.sum() - e0.sum())
        atoms += int(batch[keys.NODE_ATTRS].shape[0])
    shift = -total / atoms
    with torch.no_grad():
        shift_block.shift.add_(shift)
    model.backbone_config["atomic_inter_shift"] = shift_block.shift.reshape(-1).tolist()
    return float(shift_block.shift.reshape(-1)[0])


def loss_scales(cfg: DictConfig, dm: MultiSourceDataModule, model: FieldMACE,
                stats: Optional[Dict[str, Any]] = None) -> Dict[str, float]:
    """The unit-free loss scales (RMS of each task's training labels, :func:`label_scales`).

    ``stats``: :func:`make_model`'s dataset statistics (their E0s); computed here when there
    are none (an upgraded source model). ``loss.scales`` in the config overrides the scales task
    by task; a model that was trained here (a fine-tuning source) brings its own, which are kept
    so the loss means what it meant."""
    given = cfg.loss.get("scales") if "loss" in cfg else None
    given = OmegaConf.to_container(given, resolve=True) if given else {}
    inherited = getattr(model, "loss_scales", None) or {}
    e0 = (stats or dataset_statistics(dm.train_graphs(), dm.atomic_numbers))["atomic_energies"]
    # alpha: the RMS of its labels as they are, not after the fitted atomic polarisabilities.
    # Measured on alpha-quartz: scaled by the spread left after a_Z (about 1/20 of the RMS),
    # alpha's term was 10-20x every other term for the whole run and forces learned half as
    # fast (experiments/README.md); by its RMS, alpha's mean is right from step 0 (a_Z) and the
    # environment's part is learned at the weight the experiment gives it.
    scales = {**label_scales(dm.train_graphs(), e0), **inherited, **{k: float(v) for k, v in given.items()}}
    log.info("loss scales (RMS of training labels, internal units): %s", {k: f"{v:.4g}" for k, v in scales.items()})
    return scales


def non_finite_metrics(metrics: Dict[str, Any]) -> List[str]:
    """Names (stage/source/quantity/stat) of the NaN or infinite final metrics, and the
    optimised metric (``optimized_metric``, what checkpoints, early stopping and sweeps use) if it
    is: a loss weight of 1e300 gives finite per-dataset losses but an infinite ``val/loss``."""
    bad = []
    for stage in ("val", "test"):
        for source, quantities in (metrics.get(stage) or {}).items():
            for q, entry in quantities.items():
                bad += [f"{stage}/{source}/{q}/{k}" for k, v in entry.items()
                        if isinstance(v, float) and not np.isfinite(v)]
    optimized = metrics.get("optimized_metric") or {}
    if isinstance(optimized.get("value"), float) and not np.isfinite(optimized["value"]):
        bad.append(f"optimized_metric {optimized.get('name')}")
    return bad


def _final_metrics(results: List[Dict[str, float]], stage: str, names: List[str]) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for r in results:
        for k, v in r.items():
            parts = k.split("/")
            if len(parts) == 3 and parts[0] == stage and parts[1] in names:
                if parts[2] == "loss":
                    out.setdefault(parts[1], {})["loss"] = {"unit": "", "value": float(v)}
                    continue
                q, stat = parts[2].rsplit("_", 1)
                out.setdefault(parts[1], {}).setdefault(q, {"unit": metric_units().get(q, "")})[stat] = float(v)
    for per_q in out.values():  # eps_inf = 1 + alpha/eps0: its error is alpha's divided by eps0
        alpha = per_q.get("polarisability_diag")
        if alpha:
            per_q["eps_inf_diag"] = {"unit": "", **{k: v / EPS0_E_PER_V_A for k, v in alpha.items() if k != "unit"}}
    return out


def label_spread(predictions) -> Dict[str, Dict[str, float]]:
    """RMS of the reference values per dataset and quantity (what a model predicting zero would
    miss by), from the test stage's (reference, prediction) pairs: the size an error is judged by.
    Energy per atom: its spread about the mean (the E0s take the mean)."""
    out: Dict[str, Dict[str, float]] = {}
    for name, per_q in predictions.items():
        for q, chunks in per_q.items():
            ref = np.concatenate([c.reshape(2, -1)[0] for c in chunks])
            if q == "energy":
                ref = ref - ref.mean()
            out.setdefault(name, {})[q] = float(np.sqrt(np.mean(ref ** 2)))
    return out


def results_table(metrics: Dict[str, Any], stage: str = "test") -> str:
    """Markdown table of a stage's RMSE and MAE per dataset and quantity, with the labels' RMS
    (``metrics["label_rms"]``, when there) so an error can be read against its label's size."""
    spread = metrics.get("label_rms", {})
    rows = []
    for name, per_q in metrics.get(stage, {}).items():
        for q, m in per_q.items():
            if q == "loss":
                continue
            size = spread.get(name, {}).get(q)
            rows.append([name, q, f"{m.get('rmse', float('nan')):.4g}", f"{m.get('mae', float('nan')):.4g}",
                         "-" if size is None else f"{size:.4g}", m["unit"]])
    return markdown_table(["dataset", "quantity", f"{stage} RMSE", f"{stage} MAE", "label RMS", "unit"], rows)


def make_loggers(cfg_logger):
    """One logger (a config with ``_target_``), several (a mapping of named logger configs, as
    ``logger=many``), or none."""
    if not cfg_logger:
        return False
    if "_target_" in cfg_logger:
        return instantiate(cfg_logger)
    return [instantiate(c) for c in cfg_logger.values() if c]


def _process_rank() -> int:
    for var in ("RANK", "SLURM_PROCID", "LOCAL_RANK"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return 0


def stopped_by(trainer: pl.Trainer) -> str:
    """Why fit ended: ``max_epochs``, ``max_steps``, ``early_stopping``, ``max_time`` or
    ``stopped`` (another callback, e.g. the non-finite guard). A run cut by ``max_time`` is not
    comparable with full runs in an ablation table."""
    for cb in trainer.callbacks:
        remaining = cb.time_remaining() if isinstance(cb, Timer) else None  # None: a Timer without a limit
        if remaining is not None and remaining <= 0:
            return "max_time"
        if isinstance(cb, EarlyStopping) and cb.stopped_epoch > 0:
            return "early_stopping"
    if trainer.max_steps is not None and 0 <= trainer.max_steps <= trainer.global_step:
        return "max_steps"
    if trainer.max_epochs is not None and trainer.current_epoch >= trainer.max_epochs:
        return "max_epochs"
    return "stopped"


def train_time(trainer: pl.Trainer) -> Optional[float]:
    """Seconds spent in fit over all of the run's processes (the Timer's state travels in the
    checkpoints); None without a Timer."""
    timers = [cb for cb in trainer.callbacks if isinstance(cb, Timer)]
    return float(timers[0].time_elapsed("train")) if timers else None


def train(cfg: DictConfig) -> Optional[float]:
    check_train_config(cfg)  # before any data is read or anything written: a bad value is one line, exit 2
    run_dir = Path(cfg.paths.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if _process_rank() != 0:  # DDP ranks share rank 0's run folder (and its lock and decisions)
        return _train(cfg, run_dir)
    # one training per run folder: a second one would crash in the CSV logger and write
    # last.ckpt alternately with the first. Taken before anything is written (the log included)
    with FileLock(run_dir / ".train.lock", f"{run_dir}: another training is running in this run folder"):
        done = claim_run_folder(cfg, run_dir)  # refuses a folder holding another run
        if done is not None:
            log.info("%s: finished already (resume=true): skipped", run_dir)
            print(f"run directory: {run_dir}: finished already, skipped (resume=true)")
            return (done.get("optimized_metric") or {}).get("value")
        write_run_record(cfg, run_dir)
        return _train(cfg, run_dir)


def _train(cfg: DictConfig, run_dir: Path) -> Optional[float]:
    configure_process(cfg.get("torch_threads"), malloc=cfg.get("malloc_tuning", True))
    torch.set_float32_matmul_precision(str(cfg.get("float32_matmul_precision") or "highest"))
    pl.seed_everything(int(cfg.seed), workers=True)
    last = run_dir / "checkpoints" / "last.ckpt"
    if cfg.get("resume", False) and cfg.get("ckpt_path") is None and last.is_file():
        log.info("%s: resuming the unfinished run from %s (resume=true)", run_dir, last)
        cfg.ckpt_path = str(last)
    started = time.time()
    dm = make_datamodule(cfg)
    upgraded = upgrade_source_model(cfg, dm)
    if upgraded is not None:  # the data must use the source model's element table and heads
        bind_to_model(dm, upgraded)
    dm.setup()
    model, stats = make_model(cfg, dm, upgraded)
    scales = loss_scales(cfg, dm, model, stats)
    model.loss_scales = scales
    model.head_quantities = head_quantities(cfg, dm)
    model.training_elements = training_element_counts(dm.train_graphs(), dm.atomic_numbers)
    if cfg.model.get("cueq"):  # before Lightning restores a checkpoint: its weights are cuEquivariance's
        # built on the CPU, trained on the GPU: ask for mace's fused CUDA convolution explicitly
        model.use_cueq(fused=torch.cuda.is_available() and cfg.trainer.get("accelerator") in ("gpu", "cuda", "auto"))
    module = FieldMACEModule(model, dataset_names=dm.names, loss_scales=scales,
                             **OmegaConf.to_container(cfg.module, resolve=True))
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]
    if cfg.trainer.get("enable_progress_bar", True):  # Lightning's bar + per-quantity RMSE and the run's ETA
        callbacks.append(run_progress_bar())
    if not cfg.trainer.get("max_time"):  # Lightning adds its own Timer for max_time
        # training time kept in the checkpoints, so a resumed run reports its whole cost
        callbacks.append(Timer(duration=None, verbose=False))
    logger = make_loggers(cfg.get("logger"))
    # numerics are set once: the trainer's precision follows the model's dtype unless given
    precision = cfg.trainer.get("precision") or {"float64": "64-true", "float32": "32-true"}[str(cfg.model.dtype)]
    allow_pickle = bool(cfg.get("allow_pickle", False))
    plugins = list(cfg.trainer.get("plugins") or []) + [AtomicCheckpointIO(allow_pickle=allow_pickle)]
    trainer: pl.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=logger, default_root_dir=str(run_dir),
                                      precision=precision, plugins=plugins)
    ckpt_path = cfg.get("ckpt_path")
    if ckpt_path and ckpt_path not in ("last", "hpc", "best", "registry"):
        check_checkpoint(ckpt_path, allow_pickle=allow_pickle, module=module)  # a clear error before Lightning's
    trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path, weights_only=not allow_pickle)
    # read now: validate/test below load the best checkpoint, which restores the Timer's state of
    # that epoch as an offset, so afterwards the Timer counts that training time twice
    fit_end = {"steps": int(trainer.global_step), "stopped_by": stopped_by(trainer),
               "train_time_s": train_time(trainer)}

    monitored = [cb for cb in trainer.checkpoint_callbacks if isinstance(cb, ModelCheckpoint) and cb.monitor]
    best = monitored[0].best_model_path if monitored else ""
    ckpt = best if best and os.path.exists(best) else None
    val = trainer.validate(module, datamodule=dm, ckpt_path=ckpt, verbose=False, weights_only=not allow_pickle)
    test = trainer.test(module, datamodule=dm, ckpt_path=ckpt, verbose=False, weights_only=not allow_pickle)
    metrics = {"val": _final_metrics(val, "val", dm.names), "test": _final_metrics(test, "test", dm.names),
               "checkpoint": ckpt, "epochs": trainer.current_epoch, "statistics": stats,
               "loss_scales": {t: module.loss_fn.scale_of(t) for t in scales},
               "label_rms": label_spread(module.predictions),
               "n_structures": {n: {s: len(src.datasets[s]) for s in src.datasets} for n, src in dm.sources.items()},
               "n_parameters": int(sum(p.numel() for p in module.model.parameters())),
               # this process's wall time (a resumed run: since its resume), and the machine's
               "wall_time_s": time.time() - started, "resumed": bool(ckpt_path),
               **fit_end,
               "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count()}
    monitor = cfg.get("optimized_metric")  # what a sweeper minimises (a validation metric)
    values = [r[monitor] for r in val if monitor and monitor in r]
    metrics["optimized_metric"] = {"name": monitor, "value": float(values[0]) if values else None}
    bad = non_finite_metrics(metrics)
    metrics["finished"] = not bad  # what a resumed sweep skips
    # under DDP every rank gets here with the same weights: one writer per file (rank 0), or
    # one rank's temporary-file clean-up removes the other's file mid-write
    if trainer.is_global_zero:
        save_model(module.model, run_dir / "model.pt")
        atomic_write_text(run_dir / "metrics.json", dumps_json(metrics))  # last: it marks the run finished
        parity_plots(module.predictions, run_dir, fmt=str(cfg.get("figure_format", "png")),
                     dpi=float(cfg.get("figure_dpi", 300)))
        for lg in (logger if isinstance(logger, list) else [logger] if logger else []):
            if isinstance(lg, CSVLogger) and (Path(lg.log_dir) / "metrics.csv").exists():
                atomic_write_text(run_dir / "metrics.csv", (Path(lg.log_dir) / "metrics.csv").read_text())
        print(results_table(metrics))
        print(f"run directory: {run_dir} (metrics.json, metrics.csv, model.pt, checkpoints/, parity/)")
    if bad:  # e.g. atoms at zero distance in a split, or a diverged run: never a silent exit 0
        raise RunFailedError(f"{len(bad)} non-finite metrics ({', '.join(bad[:4])}{', ...' if len(bad) > 4 else ''}): "
                             f"the run in {run_dir} failed; its model.pt must not be used")
    return (metrics.get("optimized_metric") or {}).get("value")
