"""``mf-baselines``: the command line of :mod:`mf_lightning.analysis.baselines`."""

from __future__ import annotations

import os
import sys
from typing import Optional, Sequence

from mf_lightning.cli._common import cli_main, doc_summary
from mf_lightning.cli._common import parser as cli_parser

PROG = "mf-baselines"


def build_parser():
    parser = cli_parser(PROG, description=doc_summary("mf_lightning.analysis.baselines"))
    parser.add_argument("data", help="a data config of conf/data (e.g. mp_dielectric)")
    parser.add_argument("--model", help="an exported model.pt to score beside the baselines")
    parser.add_argument("--split", default="test", choices=["train", "val", "test"], help="the split to score")
    parser.add_argument("--seed", type=int, default=0, help="the split seed (training's)")
    parser.add_argument("--out", help="also write the numbers as JSON here")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    return parser


@cli_main(PROG)
def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)

    from hydra import compose, initialize_config_dir

    from mf_lightning.analysis.baselines import compare, table
    from mf_lightning.files import atomic_write_text, dumps_json
    from mf_lightning.runtime import configure_process
    from mf_lightning.train.pipeline import bind_to_model, make_datamodule

    configure_process(args.threads)
    from mf_lightning.cli import CONF_DIR

    os.environ.setdefault("PROJECT_ROOT", os.getcwd())
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[f"data={args.data}", f"seed={args.seed}",
                                          "paths.output_dir=${oc.env:TMPDIR,/tmp}/mf-baselines"])
    dm = make_datamodule(cfg)
    model = None
    if args.model:
        from mf_lightning.model.io import load_model

        model = load_model(args.model)
        bind_to_model(dm, model)
    dm.setup()
    result = compare(dm, args.split, model)
    print(table(result))
    if args.out:
        atomic_write_text(args.out, dumps_json(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
