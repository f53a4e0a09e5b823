"""mf-lightning: field-aware MACE (MACE-Field) on PyTorch Lightning + Hydra.

One learned scalar, the electric enthalpy F(R, E); forces, stress, polarisation P, Born charges
Z* and polarisability alpha are its exact autograd derivatives.
"""

# the one version number (pyproject.toml reads it: [tool.setuptools.dynamic])
__version__ = "0.1.0"

import mf_lightning._deps  # noqa: F401,E402  (mace before e3nn; see _deps for why)
from mf_lightning.model import (  # noqa: E402
    FieldMACE,
    ModelFileError,
    build_model,
    coupling_forms,
    load_model,
    save_model,
)

__all__ = ["FieldMACE", "MACEFieldCalculator", "build_model", "load_model", "save_model", "ModelFileError",
           "coupling_forms", "COUPLING_FORMS", "__version__"]


def __getattr__(name):
    # lazily: the calculator pulls in ASE; COUPLING_FORMS stays current as forms register
    if name == "MACEFieldCalculator":
        from mf_lightning.simulation.calculator import MACEFieldCalculator

        return MACEFieldCalculator
    if name == "COUPLING_FORMS":
        return coupling_forms()
    raise AttributeError(f"module 'mf_lightning' has no attribute {name!r}")
