"""``mf-foundation``: the command line of :mod:`mf_lightning.model.foundation`."""

from __future__ import annotations

import sys
from typing import Optional

from mf_lightning.model.foundation import cache_path_of, foundation_models


def main(argv: Optional[list] = None) -> int:
    """List the foundation-model names, their URLs and whether each is cached here."""
    for name, (key, url) in sorted(foundation_models().items()):
        cached = "cached" if cache_path_of(url).is_file() else "-"
        print(f"{name:28s} {cached:7s} {url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
