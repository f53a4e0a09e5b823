"""``mf-distill``: the command line of :mod:`mf_lightning.simulation.distill`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional, Sequence

from mf_lightning.cli._common import add_model_args, cli_main, doc_summary, load_model_from, setup_process
from mf_lightning.cli._common import parser as cli_parser
from mf_lightning.errors import EXIT_OK, EXIT_PARTIAL, InputError, ModelFileError

PROG = "mf-distill"


def build_parser():
    p = cli_parser(PROG, description=doc_summary("mf_lightning.simulation.distill"))
    p.add_argument("structures", nargs="+", help="structure files and/or folders to label")
    add_model_args(p, dtype_default=None, model_help="mace .model file, a foundation-model name (mace-mp-0:medium) "
                   "or URL, or an mf-lightning model file")
    p.add_argument("--allow-pickle", action="store_true",
                   help="plain unpickling of a mace .model file (runs its code): only for a trusted file the "
                        "restricted loader refuses")
    p.add_argument("--out", required=True, help="the labelled extxyz to write")
    p.add_argument("--every", type=int, default=1, help="keep every N-th structure")
    return p


@cli_main(PROG)
def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    setup_process()
    from mf_lightning.model.field_mace import FieldMACE
    from mf_lightning.simulation.distill import distill

    try:
        model = load_model_from(args)
    except ModelFileError:
        model = FieldMACE.from_mace(args.model, allow_pickle=args.allow_pickle, form="none", dtype=args.dtype)
        model = model.to(args.device)
    from mf_lightning.data.structures import expand_inputs, iter_structures

    out = Path(args.out)
    if any(out.resolve() == p for p in expand_inputs(args.structures)):
        raise InputError(f"--out {out} is also an input: choose another output file")
    errors = out.with_name(out.stem + ".errors.csv")
    n = distill(model, iter_structures(args.structures), out, args.every, head=args.head, errors=errors)
    failed = sum(1 for _ in open(errors)) - 1 if errors.exists() else 0
    print(f"wrote {n} structures labelled by {args.model} to {out}"
          + (f"; {failed} skipped (see {errors})" if failed else ""))
    return EXIT_PARTIAL if failed else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
