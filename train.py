"""``python train.py experiment=<name> [overrides]`` in a checkout: the same as the installed
``mf-train`` console script (:mod:`mf_lightning.cli.train`)."""

import os
from pathlib import Path

os.environ.setdefault("PROJECT_ROOT", str(Path(__file__).resolve().parent))

from mf_lightning.cli.train import main  # noqa: E402

if __name__ == "__main__":
    main()
