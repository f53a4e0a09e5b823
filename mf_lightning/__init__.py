"""mf-lightning: field-aware MACE (MACE-Field) on PyTorch Lightning + Hydra.

One learned scalar, the electric enthalpy F(R, E); forces, stress, polarisation P, Born charges
Z* and polarisability alpha are its exact autograd derivatives.

Importing the package is cheap (a tool's ``--help`` needs no torch): the public names below load
on first use (PEP 562), and mace-torch and e3nn, whoever imports them first, go through
:mod:`mf_lightning._deps` (mace before e3nn, the weights-only variables handled), as when this
module imported them eagerly.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

# the one version number (pyproject.toml reads it: [tool.setuptools.dynamic])
__version__ = "0.1.0"

__all__ = ["FieldMACE", "MACEFieldCalculator", "build_model", "load_model", "save_model", "ModelFileError",
           "coupling_forms", "COUPLING_FORMS", "__version__"]

_MODEL_NAMES = {"FieldMACE", "build_model", "load_model", "save_model", "ModelFileError", "coupling_forms"}
_ORDERED = ("mace", "e3nn")  # the packages _deps imports, in its order


class _AlreadyImported(importlib.abc.Loader):
    """Hands the import system a module _deps has just imported, without executing it again (the
    import system re-executes a module found in ``sys.modules`` during its own import unless its
    spec's loader is this one: see :meth:`_DepsFirst.find_spec`)."""

    def __init__(self, original):
        self.original = original

    def create_module(self, spec):
        return sys.modules[spec.name]

    def exec_module(self, module):
        module.__spec__ = self.original  # the import system set ours; the module keeps its own


class _DepsFirst(importlib.abc.MetaPathFinder):
    """The first import of mace or e3nn (from any module, ours or not) runs :mod:`mf_lightning._deps`
    first: e3nn imported before mace fails its import-time ``torch.load`` under torch>=2.6."""

    def find_spec(self, name, path=None, target=None):
        if name not in _ORDERED:
            return None
        _uninstall()
        if "mf_lightning._deps" not in sys.modules:
            importlib.import_module("mf_lightning._deps")
        module = sys.modules.get(name)
        if module is None:
            return None
        spec = importlib.util.spec_from_loader(name, _AlreadyImported(module.__spec__))
        module.__spec__ = spec  # what the import system reads back from sys.modules (and then loads)
        return spec


_FINDER = _DepsFirst()


def _uninstall() -> None:
    if _FINDER in sys.meta_path:
        sys.meta_path.remove(_FINDER)


if "mf_lightning._deps" not in sys.modules and not any(m in sys.modules for m in _ORDERED):
    sys.meta_path.insert(0, _FINDER)
elif "mf_lightning._deps" not in sys.modules:
    # mace or e3nn came before us (the user's order): _deps now, as the eager import did
    importlib.import_module("mf_lightning._deps")


def __getattr__(name):
    # lazily: the model pulls in torch and mace, the calculator ASE; COUPLING_FORMS stays current
    if name in _MODEL_NAMES:
        return getattr(importlib.import_module("mf_lightning.model"), name)
    if name == "MACEFieldCalculator":
        from mf_lightning.simulation.calculator import MACEFieldCalculator

        return MACEFieldCalculator
    if name == "COUPLING_FORMS":
        return importlib.import_module("mf_lightning.model").coupling_forms()
    raise AttributeError(f"module 'mf_lightning' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
