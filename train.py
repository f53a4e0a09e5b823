"""Training entry point (Hydra): ``python train.py [overrides]``.

The training loop arrives with the training issue. Until then this composes the same config,
builds the model it describes and prints the response of alpha-quartz, so `make train` shows
the whole stack (config -> model -> P, Z*, alpha) working.
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("PROJECT_ROOT", str(Path(__file__).resolve().parent))

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> None:
    from mf_lightning.cli.demo import response_demo

    response_demo(cfg)


if __name__ == "__main__":
    main()
