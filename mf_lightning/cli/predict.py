"""``mf-predict``: the command line of :mod:`mf_lightning.analysis.screening`."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Optional, Sequence

from mf_lightning.cli._common import (
    RawDescriptionHelpFormatter,
    add_model_args,
    cli_main,
    doc_summary,
    load_model_from,
    module_constant,
    setup_process,
)
from mf_lightning.cli._common import parser as cli_parser
from mf_lightning.errors import EXIT_OK, EXIT_PARTIAL
from mf_lightning.utils import markdown_table

PROG = "mf-predict"


def build_parser():
    parser = cli_parser(PROG, description=doc_summary("mf_lightning.analysis.screening"),
                        formatter_class=RawDescriptionHelpFormatter)
    parser.add_argument("structures", nargs="+", help="structure files and/or folders")
    parser.add_argument("--out", required=True, help="output CSV (appended to and resumed if it exists)")
    add_model_args(parser)
    parser.add_argument("--field", type=float, nargs=3, default=(0.0, 0.0, 0.0), metavar=("EX", "EY", "EZ"),
                        help="uniform field in V/A")
    parser.add_argument("--ionic", action="store_true", help="also eps_ion (model Hessian + Z*) and eps_0")
    parser.add_argument("--piezo", action="store_true",
                        help="also the proper clamped- and relaxed-ion piezoelectric stress tensors, C/m^2: columns "
                             "e_clamped_{x,y,z}{1..6} and e_relaxed_..., Voigt 1..6 = xx yy zz yz xz xy (a head that "
                             "learned Z* or P and energies and forces; with --ionic its Hessian is reused)")
    parser.add_argument("--relax", action="store_true",
                        help="relax ions first (ase: BFGS one by one; torchsim: batched FIRE); every column "
                             "then describes the relaxed structure")
    engines = module_constant("mf_lightning.analysis.screening", "ENGINES")
    parser.add_argument("--engine", default="ase", choices=engines,
                        help="ase, or torchsim: relaxation and response batched through TorchSim")
    parser.add_argument("--relax-cell", action="store_true", help="relax the cell too")
    parser.add_argument("--fmax", type=float, default=0.01, help="relaxation force threshold (eV/A)")
    parser.add_argument("--max-atoms", type=int, default=2000, help="atoms per batch")
    parser.add_argument("--max-memory", type=float, default=None, metavar="GIB",
                        help="--ionic/--piezo: memory budget of one Hessian in GiB (default: 1, or what one row per "
                             "pass needs, up to half the available memory); its rows are computed in chunks that fit, "
                             "a structure that cannot fit even one row at a time is an error row")
    parser.add_argument("--write-relaxed", default=None, metavar="FILE",
                        help="with --relax: also append the relaxed structures to this extxyz (id in each frame)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


@cli_main(PROG)
def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.relax_cell and not args.relax:
        parser.error("--relax-cell relaxes the cell with the ions: add --relax")
    if args.write_relaxed and not args.relax:
        parser.error("--write-relaxed writes relaxed structures: add --relax")
    if args.max_memory is not None and not (math.isfinite(args.max_memory) and args.max_memory > 0):
        parser.error(f"--max-memory must be a positive number of GiB, got {args.max_memory}")
    setup_process()
    from mf_lightning.analysis.screening import screen
    from mf_lightning.data.structures import count_structures, iter_structures
    from mf_lightning.model.validity import summary_line

    model = load_model_from(args)
    total = None if args.no_progress else count_structures(args.structures)
    counts = screen(iter_structures(args.structures), model, Path(args.out), head=args.head, field=args.field,
                    ionic=args.ionic, piezo=args.piezo, relax=args.relax, fmax=args.fmax, relax_cell=args.relax_cell,
                    max_atoms=args.max_atoms, progress=not args.no_progress, engine=args.engine,
                    allow_untrained=args.allow_untrained, total=total,
                    max_memory=None if args.max_memory is None else args.max_memory * 2 ** 30,
                    relaxed_out=Path(args.write_relaxed) if args.write_relaxed else None)
    if counts["summary"]:
        shown = len(counts["summary"])
        print(markdown_table(list(counts["summary"][0]), [list(r.values()) for r in counts["summary"]]))
        print("eps_inf, n, eps_0: relative (mean eigenvalue; aniso = largest - smallest); Z*: tr/3 per element, e"
              + (f"; first {shown} of {counts['predicted']} rows" if counts["predicted"] > shown else ""))
        if hasattr(model, "members"):  # an ensemble: what the ± and the _std columns are
            print(f"±: sigma, {model.describe_sigma()}")
    out = Path(args.out)
    print(f"written: {out} (units: {out.stem}.meta.json; Z* per atom: {out.stem}.becs.csv)")
    print(f"{args.out}: {counts['predicted']} predicted, {counts['done_before']} already there, "
          f"{counts['failed']} failed" + (f" (see {Path(args.out).with_name(Path(args.out).stem + '.errors.csv')})"
                                          if counts["failed"] else ""))
    print(summary_line(counts["predicted"], counts["flags"]))
    return EXIT_OK if counts["failed"] == 0 else EXIT_PARTIAL


if __name__ == "__main__":
    sys.exit(main())
