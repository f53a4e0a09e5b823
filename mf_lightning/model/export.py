"""Back into mace's ecosystem: a trained FieldMACE's zero-field model as a mace ``.model`` file.

``python -m mf_lightning.model.export model.pt --out model.model [--dtype float64]``

At E = 0 every coupling term vanishes (it is linear or quadratic in E) and so does the atomic
polarisability term -1/2 a_Z |E|^2: the FieldMACE *is* its mace backbone there. The export is that
backbone, a plain mace-torch ``ScaleShiftMACE`` (or ``MACE``) saved the way mace saves models
(a pickled module), so mace's ``MACECalculator(model_paths=...)``, ``mace_eval_configs`` and
mace's own LAMMPS conversion (``create_lammps_model``) read it. Its energies, forces and stress
equal ``MACEFieldCalculator`` at zero field (tested to 1e-10 in float64); the field response
(P, Z*, alpha) is not part of it.

The file is a pickle, as every mace ``.model`` file is: it is written by us from our own weights,
but whoever loads it runs mace's unpickling (mace's choice, not ours).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Optional, Sequence

import torch

from mf_lightning.cli.runner import cli_main, parser as cli_parser
from mf_lightning.model.field_mace import FieldMACE


def zero_field_backbone(model: FieldMACE, dtype: Optional[str] = None) -> torch.nn.Module:
    """A standalone copy of ``model``'s mace backbone (the model at E = 0), in eval mode."""
    from mf_lightning.utils import resolve_dtype

    backbone = copy.deepcopy(model.backbone).cpu()
    if dtype is not None:
        backbone = backbone.to(resolve_dtype(dtype))
    return backbone.eval()


def export_mace(model: FieldMACE, out, dtype: Optional[str] = None) -> Path:
    """Write ``model``'s zero-field backbone as a mace ``.model`` file (atomically)."""
    from mf_lightning.model.io import atomic_torch_save

    out = Path(out)
    atomic_torch_save(zero_field_backbone(model, dtype), out)
    return out


PROG = "python -m mf_lightning.model.export"


@cli_main(PROG)
def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = cli_parser(PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="an mf-lightning model file (model.pt of train.py)")
    parser.add_argument("--out", required=True, help="the mace .model file to write")
    parser.add_argument("--dtype", default=None, choices=["float32", "float64"], help="default: the model's own")
    args = parser.parse_args(argv)
    from mf_lightning.errors import InputError
    from mf_lightning.model.io import load_model

    out = Path(args.out)
    if out.exists() and out.resolve() == Path(args.model).resolve():
        raise InputError(f"--out {out} is the model being exported: choose another file")
    path = export_mace(load_model(args.model), out, args.dtype)
    print(f"wrote {path}: the zero-field mace model (MACECalculator(model_paths='{path}'))")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
