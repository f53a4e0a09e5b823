"""``train.py experiment=<preset> ensemble=N``: a deep ensemble, N members trained one after the
other into ``<run>/member_<k>/`` (each a complete run folder: checkpoints, model.pt,
metrics.json, splits/), then one ensemble model file ``<run>/ensemble.pt``
(:mod:`mf_lightning.model.ensemble`) calibrated on the validation split
(:func:`mf_lightning.analysis.uncertainty.calibrate`); the members' configs are made here, the
run is :func:`mf_lightning.cli.train.train_ensemble` (it calibrates: a layer above training).

Member k trains with ``seed + k`` (its initial weights and batch order) on the data split of
``seed`` (every ``seed`` of the data config is pinned to it): the members share one split, so
the validation split is free of every member's training data and calibrates them. Rerunning the
command with ``resume=true`` skips finished members and resumes an unfinished one, as a sweep
does. Members trained separately (``seed=1 data.seed=0``, ...) are combined by ``mf-ensemble``.
"""

from __future__ import annotations

import copy
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict


def pin_split_seed(node, seed: int) -> None:
    """Every ``seed`` of a data config that follows the run's ``seed`` (``${seed}``,
    ``${oc.select:seed,0}``) set to ``seed``, in every source."""
    if not isinstance(node, DictConfig):
        return
    raw = OmegaConf.to_container(node, resolve=False)
    for key, value in raw.items():
        if key == "seed" and isinstance(value, str) and value.startswith("${") and "seed" in value:
            node[key] = int(seed)
        elif isinstance(value, dict):
            pin_split_seed(node[key], seed)


def member_config(cfg: DictConfig, k: int, run_dir: Path) -> DictConfig:
    """The config of member ``k``: its own run folder and seed, the data split of ``cfg.seed``."""
    member = copy.deepcopy(cfg)
    with open_dict(member):
        pin_split_seed(member.data, int(cfg.seed))
        member.paths.output_dir = str(run_dir / f"member_{k}")
        member.seed = int(cfg.seed) + k
        member.ensemble = 0  # each member is one model
    return member
