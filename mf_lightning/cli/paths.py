"""``mf-paths``: the command line of :mod:`mf_lightning.analysis.paths`."""

from __future__ import annotations

import json
import sys
from typing import Optional, Sequence

from mf_lightning.cli._common import add_model_args, cli_main, load_model_from, setup_process
from mf_lightning.cli._common import parser as cli_parser

PROG = "mf-paths"


def build_parser():
    parser = cli_parser(PROG, description="P along distortion paths and P_s, reference vs model")
    parser.add_argument("file", help="extxyz file of path frames (e.g. mp_ferroelectric/ferroelectric-valid.xyz)")
    add_model_args(parser, dtype_default=None)
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--key", default="REF_polarisation", help="reference P key")
    parser.add_argument("--unit", default="e/A^2", help="its unit (e/A^2, e*A, uC/cm^2)")
    parser.add_argument("--group-key", default="polar_mpid", help="per-frame key of the polar end of the path")
    parser.add_argument("--max-plotted", type=int, default=12, help="paths drawn in the figure")
    parser.add_argument("--batch-atoms", type=int, default=2000,
                        help="atoms per forward pass (lower it if memory runs out)")
    return parser


@cli_main(PROG)
def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    setup_process(log=False)
    from mf_lightning.analysis.paths import evaluate_paths
    from mf_lightning.data.root import resolve_file

    model = load_model_from(args)
    result = evaluate_paths(model, resolve_file(args.file), args.out, key=args.key, unit=args.unit,
                            group_key=args.group_key, head=args.head, max_plotted=args.max_plotted,
                            batch_atoms=args.batch_atoms)
    print(json.dumps(result, indent=1))
    print(f"written: {args.out}/paths.csv, frames.csv, summary.json, polarisation_along_paths.png, ps_parity.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
