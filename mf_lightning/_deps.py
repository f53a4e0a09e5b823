"""The one place that imports mace-torch and e3nn, in the order they need.

Two traps, measured on torch 2.13 with mace-torch 0.3.16 / e3nn 0.4.4:

* e3nn 0.4.4 loads its Wigner constants with a bare ``torch.load`` at import time, which the
  torch>=2.6 default ``weights_only=True`` refuses. ``import mace`` sets
  ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` first, which makes that load pass. So mace must be
  imported before e3nn, and every module of this package gets both through here.
* With ``TORCH_FORCE_WEIGHTS_ONLY_LOAD=1`` also set, torch refuses every load ("both were
  set"): that variable is lifted during these imports and restored after them.
* That variable then stays set for the whole process, as mace wants it (mace's own calculator
  loads pickled ``.model`` files without ``weights_only``), so we leave it: restoring it broke
  ``MACECalculator`` for users who import us first. It only changes loads that do not pass
  ``weights_only``; every load in this package passes it explicitly.
"""

from __future__ import annotations

import os

_ENV = "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"
_before = os.environ.get(_ENV)
# A user who sets TORCH_FORCE_WEIGHTS_ONLY_LOAD=1 (the stricter setting) would make torch refuse
# e3nn's import-time load ("both were set") once mace sets _ENV: it is lifted for these imports
# only and restored below, so the user's setting holds for every later load.
_FORCE = "TORCH_FORCE_WEIGHTS_ONLY_LOAD"
_force_before = os.environ.pop(_FORCE, None)

import warnings  # noqa: E402

import mace  # noqa: E402  (sets _ENV; must precede e3nn)

with warnings.catch_warnings():
    # torch warns that _ENV forces weights_only=False for e3nn's own constants file: expected.
    warnings.filterwarnings("ignore", message="Environment variable TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")
    import e3nn.o3  # noqa: E402,F401  (loads its constants while _ENV is set)
import mace.modules  # noqa: E402,F401
import mace.calculators.mace  # noqa: E402,F401  (sets _ENV again at its own import)

if _force_before is not None:
    # the user asked for weights-only loads everywhere: theirs wins over mace's opposite setting
    # (both set makes torch refuse every load)
    os.environ[_FORCE] = _force_before
    if _before is None:
        os.environ.pop(_ENV, None)
# Otherwise _ENV stays as mace set it: importing mf_lightning changes nothing in mace's own
# behaviour (MACECalculator loads pickled .model files without weights_only, whichever package is
# imported first). It only affects loads that do not pass weights_only; every load in this
# package passes it explicitly (torch honours an explicit weights_only over _ENV).

# e3nn/mace build their modules through torch.jit.script, which torch 2.13 reports as deprecated
# and whose type checker complains about e3nn's codegen; harmless, and printed for every block.
warnings.filterwarnings("ignore", message=r"`torch.jit.script` is deprecated")
warnings.filterwarnings("ignore", message=r"The TorchScript type system doesn't support instance-level annotations")

from e3nn import o3  # noqa: E402
from mace import modules as mace_modules  # noqa: E402

__all__ = ["o3", "mace_modules"]
