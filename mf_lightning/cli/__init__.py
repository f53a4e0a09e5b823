"""Command-line tools, the top layer: one thin ``main`` per console script (``mf-<tool>`` is
``cli/<tool>.py``, pyproject ``[project.scripts]``) over :mod:`._common` (shared options, process
set-up, model loading, one bad-input policy); the Hydra entry points (:mod:`.train`, :mod:`.eval`)
whose configs ship inside the package (:data:`CONF_DIR`), so an installed wheel trains.
"""

from pathlib import Path

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
