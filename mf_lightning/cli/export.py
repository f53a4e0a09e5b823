"""``mf-export``: the command line of :mod:`mf_lightning.model.export`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional, Sequence

from mf_lightning.cli._common import cli_main, doc_summary
from mf_lightning.cli._common import parser as cli_parser
from mf_lightning.utils import DTYPES

PROG = "mf-export"


def build_parser():
    parser = cli_parser(PROG, description=doc_summary("mf_lightning.model.export"))
    parser.add_argument("--model", default=None, help="an mf-lightning model file (model.pt of train.py)")
    parser.add_argument("legacy_model", nargs="?", default=None, metavar="MODEL",
                        help="the model as a positional argument (older spelling of --model)")
    parser.add_argument("--out", required=True,
                        help="the file to write: a mace .model, or with --lammps the TorchScript LAMMPS model")
    parser.add_argument("--dtype", default="float64", choices=sorted(DTYPES),
                        help="dtype of the exported model (default float64: a float32 export of a constant "
                             "field shifts every energy by its round-off, 0.3 meV on quartz)")
    parser.add_argument("--allow-untrained", action="store_true",
                        help="export a head that never learned energies and forces (its MD would be meaningless)")
    parser.add_argument("--field", nargs=3, type=float, default=None, metavar=("EX", "EY", "EZ"),
                        help="export the model at this constant field (V/A); default zero field")
    parser.add_argument("--lammps", action="store_true",
                        help="write mace's TorchScript LAMMPS model (pair_style mace) instead of a .model file")
    parser.add_argument("--head", default=None,
                        help="--lammps: the head to run (needed when several heads learnt energies and forces)")
    return parser


@cli_main(PROG)
def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if (args.model is None) == (args.legacy_model is None):
        parser.error("give the model once: --model MODEL")
    args.model = args.model or args.legacy_model
    from mf_lightning.errors import InputError
    from mf_lightning.model.export import export_lammps, export_mace
    from mf_lightning.model.io import load_model

    out = Path(args.out)
    if out.exists() and out.resolve() == Path(args.model).resolve():
        raise InputError(f"--out {out} is the model being exported: choose another file")
    model = load_model(args.model)
    if hasattr(model, "members"):
        raise InputError(f"{args.model}: an ensemble: mace's .model and LAMMPS formats hold one model; export a "
                         "member (its run folder's model.pt)")
    # a mace model is for energies and forces (MD, relaxations): a head that never learned them is refused
    head = model.resolve_head(args.head, ["energy", "forces"])
    model.check_learned(("energy", "forces"), "an export for MD (mace .model / LAMMPS)", head=head,
                        allow_untrained=args.allow_untrained)
    at = f"the field {tuple(args.field)} V/A" if args.field and any(args.field) else "zero field"
    if args.lammps:
        path = export_lammps(model, out, args.field, head, args.dtype)
        print(f"wrote {path}: the model at {at} for LAMMPS "
              f"(pair_style mace no_domain_decomposition; pair_coeff * * {path.name} <elements>)")
    else:
        path = export_mace(model, out, args.dtype, args.field)
        print(f"wrote {path}: the mace model at {at} (MACECalculator(model_paths='{path}'))")
    return 0


if __name__ == "__main__":
    sys.exit(main())
