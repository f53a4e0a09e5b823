"""Checkpoints that survive kills and never run code from a file.

* :class:`AtomicCheckpointIO` (a Lightning ``CheckpointIO`` plugin, installed by ``train.py``):
  every checkpoint is written to a temporary file beside its target, fsync'ed, then renamed over
  it (:func:`~mf_lightning.files.atomic_torch_save`), so a kill during a save leaves the
  previous checkpoint intact. Loading uses ``torch.load(weights_only=True)``: our checkpoints
  hold only tensors and plain values (the hyper-parameters are plain, see
  :class:`~mf_lightning.train.module.FieldMACEModule`).
* :func:`check_checkpoint` is run on ``ckpt_path`` before training resumes: a missing,
  truncated or corrupted file, or one that needs unpickling of arbitrary Python objects, gives a
  :class:`CheckpointError` saying which and what to do (``allow_pickle=true`` is the explicit
  opt-in for a trusted pickled checkpoint), not a stack trace from inside torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional

from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

from mf_lightning.errors import InputError
from mf_lightning.files import atomic_torch_save, guarded_torch_load, verify_record_checksum, with_record_checksum


class CheckpointError(InputError, RuntimeError):
    """A checkpoint that is missing, truncated, corrupted, or needs unpickling."""


# A SHA-256 of the whole checkpoint, stored in it: torch does not check the zip's CRCs, so a
# flipped bit in a weight, an optimiser moment or a loop counter would resume silently.
RECORD_CHECKSUM = "mf_record_sha256"
CORRUPT_HINT = " Resume from another one (checkpoints/ keeps best.ckpt and last.ckpt)."


def load_checkpoint(path, allow_pickle: bool = False, map_location="cpu") -> Dict[str, Any]:
    ckpt = guarded_torch_load(
        path, CheckpointError, "checkpoint",
        "this checkpoint needs unpickling of Python objects, which can run code stored in the file. Resume "
        f"from it only if you trust its source, with allow_pickle=true (python train.py ... ckpt_path={path} "
        "allow_pickle=true).",
        corrupt_hint=CORRUPT_HINT, allow_pickle=allow_pickle, map_location=map_location)
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path}: not a Lightning training checkpoint (a {type(ckpt).__name__})")
    problem = verify_record_checksum(ckpt, RECORD_CHECKSUM)  # Lightning's own and older ones have none
    if problem:
        raise CheckpointError(f"{path}: the checkpoint is corrupted: {problem}.{CORRUPT_HINT}")
    return ckpt


def check_checkpoint(path, allow_pickle: bool = False, module=None) -> Path:
    """Validate a checkpoint before Lightning resumes from it (see the module docstring); with
    ``module``, also that its weights fit that module (another element table, cutoff or width
    gives one line naming the first mismatches, not torch's page of size mismatches)."""
    ckpt = load_checkpoint(path, allow_pickle=allow_pickle)
    missing = [k for k in ("state_dict", "global_step", "loops") if k not in ckpt]
    if missing:
        raise CheckpointError(f"{path}: not a Lightning training checkpoint (no {missing})")
    if module is not None:
        own = module.state_dict()
        theirs = ckpt["state_dict"]
        wrong = [f"{k} {tuple(theirs[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
                 if k in theirs and tuple(theirs[k].shape) != tuple(v.shape)]
        absent = [k for k in own if k not in theirs]
        if wrong or absent:
            detail = "; ".join(wrong[:2] + [f"missing {k}" for k in absent[:2]])
            raise CheckpointError(f"{path}: was written by a different model ({len(wrong)} weights of another "
                                  f"shape, {len(absent)} missing, e.g. {detail}): resume with the configuration "
                                  "that wrote it (element table, r_max, channels, coupling)")
    return Path(path)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Temporary file + fsync + rename for saves; weights-only loads with clear errors."""

    def __init__(self, allow_pickle: bool = False):
        super().__init__()
        self.allow_pickle = bool(allow_pickle)

    def save_checkpoint(self, checkpoint: Dict[str, Any], path, storage_options: Optional[Any] = None) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO takes no storage_options")
        atomic_torch_save(with_record_checksum(checkpoint, RECORD_CHECKSUM), path)

    def load_checkpoint(self, path, map_location=None, weights_only: Optional[bool] = None) -> Dict[str, Any]:
        return load_checkpoint(path, allow_pickle=self.allow_pickle, map_location=map_location or "cpu")
