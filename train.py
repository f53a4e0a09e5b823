"""Training entry point (Hydra): ``python train.py experiment=<name> [overrides]``.

Only puts things in order; see :mod:`mf_lightning.training`. Returns the validation metric
named by ``optimized_metric`` (for sweepers). ``demo.only=true`` instead prints the response
of the configured, untrained model for one structure.
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("PROJECT_ROOT", str(Path(__file__).resolve().parent))

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig):
    from mf_lightning.cli.runner import run_hydra_job

    return run_hydra_job(_main, cfg, "train.py")


def _main(cfg: DictConfig):
    if cfg.demo.only:
        from mf_lightning.cli.demo import response_demo

        response_demo(cfg)
        return None
    from mf_lightning.training import train

    return train(cfg)


if __name__ == "__main__":
    main()
