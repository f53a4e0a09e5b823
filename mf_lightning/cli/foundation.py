"""``mf-foundation``: the command line of :mod:`mf_lightning.model.foundation`."""

from __future__ import annotations

import sys
from typing import Optional, Sequence

from mf_lightning.cli._common import cli_main
from mf_lightning.cli._common import parser as cli_parser

PROG = "mf-foundation"


def build_parser():
    p = cli_parser(PROG, description="The foundation-model names mf-lightning knows (distill, fine-tuning), "
                                     "their URLs and whether each is cached here.")
    p.add_argument("command", nargs="?", default="list", choices=["list"],
                   help="list: print the names, whether cached, and the URLs")
    return p


@cli_main(PROG)
def main(argv: Optional[Sequence[str]] = None) -> int:
    """List the foundation-model names, their URLs and whether each is cached here."""
    build_parser().parse_args(argv)
    from mf_lightning.model.foundation import cache_path_of, foundation_models

    for name, (key, url) in sorted(foundation_models().items()):
        cached = "cached" if cache_path_of(url).is_file() else "-"
        print(f"{name:28s} {cached:7s} {url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
