"""Training entry point (Hydra): ``mf-train experiment=<name> [overrides]`` (installed console
script) or ``python train.py ...`` in a checkout; the configs ship in ``mf_lightning/conf``.

Only puts things in order; see :mod:`mf_lightning.train.pipeline`. Returns the validation metric
named by ``optimized_metric`` (for sweepers). ``demo.only=true`` instead prints the response
of the configured, untrained model for one structure.
"""

from __future__ import annotations

import os

# paths.root_dir: the checkout (train.py sets it) or, installed, the working directory
os.environ.setdefault("PROJECT_ROOT", os.getcwd())

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig):
    from mf_lightning.cli._common import run_hydra_job

    return run_hydra_job(_main, cfg, "train.py")


def _main(cfg: DictConfig):
    if cfg.demo.only:
        from mf_lightning.cli.demo import response_demo

        response_demo(cfg)
        return None
    from mf_lightning.train.pipeline import train

    return train(cfg)


if __name__ == "__main__":
    main()
