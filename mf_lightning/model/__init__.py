"""The field-aware model: coupling forms, FieldMACE, observables, weights-only I/O, ensembles."""

from mf_lightning.model.build import build_model
from mf_lightning.model.coupling import coupling_forms
from mf_lightning.model.ensemble import FieldMACEEnsemble  # also registers its file format with load_model
from mf_lightning.model.field_mace import FieldMACE
from mf_lightning.model.io import ModelFileError, load_model, save_model

__all__ = ["FieldMACE", "FieldMACEEnsemble", "build_model", "load_model", "save_model", "ModelFileError",
           "coupling_forms"]
