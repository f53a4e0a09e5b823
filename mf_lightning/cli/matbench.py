"""``mf-matbench``: the command line of :mod:`mf_lightning.analysis.matbench`."""

from __future__ import annotations

import json
import sys
from typing import Optional, Sequence

from mf_lightning.cli._common import (
    add_model_args,
    cli_main,
    doc_summary,
    load_model_from,
    module_constant,
    setup_process,
)
from mf_lightning.cli._common import parser as cli_parser

PROG = "mf-matbench"


def build_parser():
    TASK_FILE = module_constant("mf_lightning.analysis.matbench", "TASK_FILE")
    parser = cli_parser(PROG, description=doc_summary("mf_lightning.analysis.matbench"))
    add_model_args(parser, dtype_default=None)
    parser.add_argument("--out", required=True, help="output folder (resumable)")
    parser.add_argument("--file", default=None, help=f"the task file (default: <data root>/{TASK_FILE})")
    parser.add_argument("--root", default=None, help="data root (default: MF_DATA_DIR or the shared data)")
    parser.add_argument("--train-file", action="append", default=None,
                        help="structures the model was trained on, for the leakage check (repeatable; "
                             "default mp_dielectric/dielectric-valid.xyz)")
    parser.add_argument("--limit", type=int, default=None, help="only the first N entries (a quick check)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


@cli_main(PROG)
def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    setup_process()
    from mf_lightning.analysis.matbench import run

    model = load_model_from(args)
    result = run(model, args.out, file=args.file, root=args.root,
                 train_files=args.train_file or ("mp_dielectric/dielectric-valid.xyz",), limit=args.limit,
                 head=args.head, progress=not args.no_progress)
    print(json.dumps({k: v for k, v in result.items() if k != "matbench_scores"}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
