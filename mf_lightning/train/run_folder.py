"""One training per run folder, and no run loses its record.

``train.py`` takes the folder's lock before it writes anything (Hydra's own ``.hydra/`` copy is
off, ``conf/train.yaml``: it was written before the lock, so a refused second training had
already replaced the running one's config and overrides). Holding it, :func:`claim_run_folder`
decides whether the folder may be used:

* a folder without a run's outputs (checkpoints, ``model.pt``, ``metrics.json``): yes;
* ``overwrite=true``: the old outputs are removed first (no stale ``best.ckpt`` beside a new
  ``best-v1.ckpt``, no old model.pt under new metrics);
* the command resumes that very run: ``resume=true`` with the same configuration (the saved
  ``.hydra/config.yaml``; the keys that only steer the run, :data:`RUN_CONTROL_KEYS`, may
  differ) skips a finished run and resumes an unfinished one; ``ckpt_path`` naming one of the
  folder's own checkpoints continues it; an HPC checkpoint of a requeued SLURM job is
  resumed by Lightning;
* anything else is refused (a :class:`~mf_lightning.train.config_check.ConfigError`), with
  nothing in the folder changed.

Then :func:`write_run_record` writes ``.hydra/`` (config.yaml, hydra.yaml, overrides.yaml), as
Hydra would have.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any, Dict, List, Optional

from omegaconf import DictConfig, OmegaConf

from mf_lightning.files import atomic_write_text
from mf_lightning.train.config_check import ConfigError
from mf_lightning.utils import run_is_complete

log = logging.getLogger(__name__)

# keys (and key prefixes) that steer a run without changing what it trains: a resumed run may
# differ from the saved config in these (e.g. a run cut by max_time resumed without the limit)
RUN_CONTROL_KEYS = ("resume", "ckpt_path", "overwrite", "debug", "torch_threads", "malloc_tuning", "allow_pickle",
                    "paths", "demo", "trainer.max_time", "trainer.enable_progress_bar",
                    "ensemble")  # a member's is 0; runs from before the key have none
# what a run writes into its folder that a later run would replace or leave stale
OUTPUT_FILES = ("metrics.json", "model.pt", "metrics.csv")
OUTPUT_GLOBS = ("checkpoints/*.ckpt", "hpc_ckpt_*.ckpt")
OUTPUT_DIRS = ("checkpoints", "parity", "splits", "csv", "tensorboard")  # removed whole by overwrite=true
CKPT_KEYWORDS = ("last", "hpc", "best", "registry")  # Lightning's ckpt_path names: this folder's checkpoints


def run_outputs(run_dir: Path) -> List[Path]:
    """The files that say ``run_dir`` holds a run (started or finished)."""
    found = [run_dir / f for f in OUTPUT_FILES[:2] if (run_dir / f).is_file()]
    for pattern in OUTPUT_GLOBS:
        found += sorted(run_dir.glob(pattern))
    return found


def remove_outputs(run_dir: Path) -> None:
    """``overwrite=true``: every output of the run the folder held (its log stays)."""
    for name in OUTPUT_FILES:
        (run_dir / name).unlink(missing_ok=True)
    for path in run_dir.glob(OUTPUT_GLOBS[1]):
        path.unlink()
    for name in OUTPUT_DIRS:
        if (run_dir / name).is_dir():
            shutil.rmtree(run_dir / name)


_ABSENT = object()


def _flat(node: Any, prefix: str = "") -> Dict[str, Any]:
    if isinstance(node, dict):
        out: Dict[str, Any] = {}
        for k, v in node.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out if out or not prefix else {prefix[:-1]: {}}
    return {prefix[:-1]: node}


def _is_run_control(key: str) -> bool:
    return any(key == k or key.startswith(k + ".") for k in RUN_CONTROL_KEYS)


# Config keys added after runs were written, with the value that reproduces those runs: a run
# folder from before the key resumes with that value (e.g. ``model.atomic_charges=false``) and is
# refused, naming the key, with any other (the default ``auto`` would add a term its checkpoint lacks)
ADDED_KEYS = {"model.atomic_charges": False}


def config_differences(saved: DictConfig, current: DictConfig) -> List[str]:
    """Dotted keys where two run configs differ (unresolved, as ``.hydra/config.yaml`` holds
    them), except :data:`RUN_CONTROL_KEYS`."""
    def flat(cfg):  # through YAML, so both sides are read back the same way
        return _flat(OmegaConf.to_container(OmegaConf.create(OmegaConf.to_yaml(cfg)), resolve=False))

    a, b = flat(saved), flat(current)
    for key, before in ADDED_KEYS.items():  # a run written before the key existed behaved as this value
        a.setdefault(key, before)
    return sorted(k for k in set(a) | set(b) if not _is_run_control(k) and a.get(k, _ABSENT) != b.get(k, _ABSENT))


def _read_metrics(run_dir: Path) -> Optional[dict]:
    try:
        return json.loads((run_dir / "metrics.json").read_text())
    except (OSError, ValueError):
        return None


def _inside(path: str, run_dir: Path) -> bool:
    try:
        Path(path).resolve().relative_to(run_dir.resolve())
        return True
    except ValueError:
        return False


def claim_run_folder(cfg: DictConfig, run_dir: Path) -> Optional[dict]:
    """Whether this training may use ``run_dir`` (the caller holds its lock): None to train,
    the finished run's metrics to skip it (``resume=true``, same config); a
    :class:`ConfigError` when the folder holds another run, with nothing changed."""
    outputs = run_outputs(run_dir)
    if not outputs:
        return None
    if cfg.get("overwrite", False):
        log.info("%s: overwrite=true: removing the previous run's outputs", run_dir)
        remove_outputs(run_dir)
        return None
    metrics = _read_metrics(run_dir)
    if metrics is None:
        state = "an unfinished run"
    else:
        state = "a finished run" if metrics.get("finished", True) else "a failed run"
    listed = ", ".join(str(p.relative_to(run_dir)) for p in outputs[:4]) + (", ..." if len(outputs) > 4 else "")
    held = f"{run_dir} holds {state} ({listed})"
    if any(run_dir.glob(OUTPUT_GLOBS[1])):  # a requeued SLURM job: Lightning resumes from its HPC checkpoint
        return None
    ckpt = cfg.get("ckpt_path")
    if ckpt:
        if str(ckpt) in CKPT_KEYWORDS or _inside(str(ckpt), run_dir):
            return None  # continues this very run from one of its checkpoints
        raise ConfigError(f"{held}; ckpt_path={ckpt} is a checkpoint of another run: choose another "
                          "hydra.run.dir, or overwrite=true to replace this folder's run")
    if cfg.get("resume", False):
        saved = run_dir / ".hydra" / "config.yaml"
        if not saved.is_file():
            raise ConfigError(f"{held} but no {saved.relative_to(run_dir)} to compare with, so resume=true "
                              "cannot tell whether it is this run: overwrite=true replaces it, or choose another "
                              "hydra.run.dir")
        diff = config_differences(OmegaConf.load(saved), cfg)
        if diff:
            shown = ", ".join(diff[:6]) + (", ..." if len(diff) > 6 else "")
            raise ConfigError(f"{held} with another configuration (it differs at {shown}): resume=true continues "
                              "only the same run; overwrite=true replaces it, or choose another hydra.run.dir")
        if metrics is not None and metrics.get("finished") and run_is_complete(metrics):
            return metrics
        return None  # the unfinished run resumes from its last.ckpt
    raise ConfigError(f"{held}: resume=true continues it (or skips it when finished), overwrite=true replaces "
                      "it, or choose another hydra.run.dir")


def write_run_record(cfg: DictConfig, run_dir: Path) -> None:
    """``.hydra/config.yaml``, ``hydra.yaml`` and ``overrides.yaml``, what Hydra writes when
    ``hydra.output_subdir`` is set (nothing when it is: then Hydra wrote them itself, or when
    not run by Hydra)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return
    hydra_cfg = HydraConfig.instance().cfg
    if hydra_cfg.hydra.output_subdir is not None:
        return
    out = run_dir / ".hydra"
    atomic_write_text(out / "config.yaml", OmegaConf.to_yaml(cfg))
    atomic_write_text(out / "hydra.yaml", OmegaConf.to_yaml(hydra_cfg))
    atomic_write_text(out / "overrides.yaml", OmegaConf.to_yaml(hydra_cfg.hydra.overrides.task))
