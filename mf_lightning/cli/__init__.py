"""Command-line tools: the Hydra entry points (train, eval), the shared runner and helpers.

Every tool is a console script (pyproject ``[project.scripts]``, ``mf-<tool>``); the Hydra
configs ship inside the package (:data:`CONF_DIR`), so an installed wheel trains.
"""

from pathlib import Path

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
