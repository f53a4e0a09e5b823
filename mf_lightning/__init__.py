"""mf-lightning: field-aware MACE (MACE-Field) on PyTorch Lightning + Hydra.

One learned scalar, the electric enthalpy F(R, E); forces, stress, polarisation P, Born charges
Z* and polarisability alpha are its exact autograd derivatives.
"""

import mf_lightning._deps  # noqa: F401  (mace before e3nn; see _deps for why)
from mf_lightning.model import COUPLING_FORMS, FieldMACE, ModelFileError, build_model, load_model

__version__ = "0.1.0"
__all__ = ["FieldMACE", "build_model", "load_model", "ModelFileError", "COUPLING_FORMS", "__version__"]
