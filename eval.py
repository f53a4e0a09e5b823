"""``python eval.py model=<model.pt> data=<config | extxyz path>`` in a checkout: the same as the
installed ``mf-eval`` console script (:mod:`mf_lightning.cli.eval`)."""

import os
from pathlib import Path

os.environ.setdefault("PROJECT_ROOT", str(Path(__file__).resolve().parent))

from mf_lightning.cli.eval import cli, rewrite_overrides  # noqa: E402,F401

if __name__ == "__main__":
    cli()
