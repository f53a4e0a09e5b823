"""Rootdir conftest: make ``import tests`` mean *this* repository's tests.

The mace-torch wheel installs a top-level ``tests`` package into site-packages. pytest runs in
importlib mode (pyproject.toml), which does not touch sys.path, so we put the repository root
first here and check that the package found is ours before any test module imports from it.
"""

import sys
from pathlib import Path

_ROOT = Path(__file__).resolve().parent
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))
sys.modules.pop("tests", None)

import tests  # noqa: E402

if Path(tests.__file__).resolve().parent != _ROOT / "tests":
    raise RuntimeError(f"`tests` resolves to {tests.__file__}, not this repository's tests/")
