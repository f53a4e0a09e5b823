"""``mf-spectra``: the command line of :mod:`mf_lightning.analysis.spectra`."""

from __future__ import annotations

import json
import sys
from typing import Optional, Sequence

from mf_lightning.cli._common import cli_main, doc_summary, finish, module_constant, writable_output
from mf_lightning.cli._common import parser as cli_parser

PROG = "mf-spectra"
MODULE = "mf_lightning.analysis.spectra"
FIGURES = "mf_lightning.train.plots"  # the figure formats and resolution


def build_parser():
    parser = cli_parser(PROG, description=doc_summary(MODULE))
    parser.add_argument("trajectory", help="extxyz trajectory of mf_lightning.simulation.md")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--sigma", type=float, default=20.0, help="Gaussian broadening (cm^-1)")
    parser.add_argument("--temperature", type=float, default=None, help="K (default: mean logged temperature)")
    parser.add_argument("--skip-fs", type=float, default=0.0, help="discard this much equilibration (fs)")
    parser.add_argument("--axis", default="z", choices=sorted(module_constant(MODULE, "AXIS_INDEX")),
                        help="the 'parallel' axis")
    parser.add_argument("--max-cm", type=float, default=2000.0, help="highest wavenumber analysed (cm^-1)")
    parser.add_argument("--format", default="png", choices=module_constant(FIGURES, "FIGURE_FORMATS"),
                        help="the figure's file format (pdf and svg: vector graphics for a paper)")
    parser.add_argument("--dpi", type=float, default=module_constant(FIGURES, "FIGURE_DPI"),
                        help="the figure's resolution in dots per inch (png; the raster parts of pdf/svg)")
    return parser


@cli_main(PROG)
def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.dpi > 0:
        parser.error(f"--dpi must be > 0, got {args.dpi:g}")
    from mf_lightning.analysis.spectra import (
        AXIS_INDEX,
        analyse_trajectory,
        check_settings,
        describe_length,
        write_outputs,
    )

    axis = AXIS_INDEX[args.axis]
    check_settings(args.temperature, args.skip_fs, args.sigma, args.max_cm)
    writable_output(args.out, folder=True)  # before the trajectory is read
    result = analyse_trajectory(args.trajectory, temperature_K=args.temperature, skip_fs=args.skip_fs,
                                sigma_cm=args.sigma, axis=axis, max_cm=args.max_cm)
    paths = write_outputs(result, args.out, axis=axis, fmt=args.format, dpi=args.dpi)
    print(json.dumps({"ir_peaks_cm": [round(p["wavenumber_cm"]) for p in result["ir_peaks"][:5]],
                      "raman_peaks_cm": [round(p["wavenumber_cm"]) for p in result.get("raman_peaks", [])[:5]],
                      "eps_inf": result["eps_inf_par_perp"], "eps_0": result["eps_0_par_perp"],
                      "field": result.get("field_protocol", {}).get("label"),
                      "length": describe_length(result["duration_fs"]), "samples": result["n_samples"]}, indent=1))
    return finish(result["warnings"], paths)


if __name__ == "__main__":
    sys.exit(main())
