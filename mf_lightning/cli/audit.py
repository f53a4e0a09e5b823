"""``mf-audit``: the command line of :mod:`mf_lightning.data.audit`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional, Sequence

from mf_lightning.cli._common import cli_main, doc_summary, module_constant
from mf_lightning.cli._common import parser as cli_parser

PROG = "mf-audit"


def build_parser():
    parser = cli_parser(PROG, description=doc_summary("mf_lightning.data.audit"))
    parser.add_argument("files", nargs="+", help="extxyz files to audit (duplicates are checked across them)")
    parser.add_argument("--out", default="audit", help="output folder for audit.csv and audit.md")
    parser.add_argument("--polarisability-unit", default=None,
                        help="unit of REF_polarisability (default chi/4pi, as in MP-Dielectric; BaTiO3 uses e/(V*A))")
    parser.add_argument("--asr-tol", type=float, default=module_constant("mf_lightning.data.audit", "ASR_TOL"),
                        help="acoustic-sum-rule tolerance: largest |sum_k Z*_k| component (e)")
    return parser


@cli_main(PROG)
def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    from mf_lightning.data.audit import audit_records, labels_for, write_report
    from mf_lightning.data.polarisation import PATH_KEYS
    from mf_lightning.data.reader import read_records

    records = []
    for f in args.files:
        path = Path(f)
        records += read_records(path, labels_for(path, args.polarisability_unit), meta_keys=PATH_KEYS)
    rows = audit_records(records, asr_tol=args.asr_tol)
    title = "Label audit: " + ", ".join(Path(f).name for f in args.files)
    csv_path, md_path = write_report(rows, args.out, title=title)
    print(md_path.read_text())
    print(f"wrote {csv_path} and {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
