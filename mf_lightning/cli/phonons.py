"""``mf-phonons``: the command line of :mod:`mf_lightning.analysis.phonons`."""

from __future__ import annotations

import math
import sys
from typing import Optional, Sequence

from mf_lightning.cli import _common as common

PROG = "mf-phonons"
MODULE = "mf_lightning.analysis.phonons"
FIGURES = "mf_lightning.train.plots"  # the figure formats and resolution


def build_parser():
    parser = common.parser(PROG, description=common.doc_summary(MODULE))
    common.add_structure_args(parser)
    common.add_model_args(parser)
    parser.add_argument("--out", default="phonons", help="output folder (modes.csv, modes.<format>, summary.json, "
                                                         "piezo.json/csv with --piezo)")
    parser.add_argument("--relax", action="store_true", help="relax the ions first (BFGS); every output then "
                                                             "describes the relaxed structure (relaxed.extxyz)")
    parser.add_argument("--relax-cell", action="store_true", help="relax the cell too (needs a head that learned "
                                                                  "the stress)")
    parser.add_argument("--fmax", type=float, default=0.01, help="relaxation force threshold (eV/A)")
    parser.add_argument("--relax-steps", type=int, default=common.module_constant(MODULE, "RELAX_STEPS"),
                        help="most relaxation steps")
    parser.add_argument("--piezo", action="store_true",
                        help="also the clamped- and relaxed-ion piezoelectric tensors (piezo.json, piezo.csv; C/m^2)")
    parser.add_argument("--born", default=None, metavar="DIR",
                        help="also write a phonopy BORN file (eps_inf, symmetry-independent Z*) into DIR")
    parser.add_argument("--no-raman", action="store_true",
                        help="no Raman activities (skips d alpha/dR, a third-order graph: for large cells)")
    parser.add_argument("--symprec", type=float, default=common.module_constant("mf_lightning.analysis.born",
                                                                                "SYMPREC"),
                        help="symmetry tolerance (A) of the irreps and the BORN file's independent atoms, as "
                             "phonopy's")
    parser.add_argument("--sigma", type=float, default=common.module_constant("mf_lightning.analysis.modes",
                                                                              "SIGMA_CM"),
                        help="Gaussian broadening of the drawn spectra (cm^-1, standard deviation)")
    parser.add_argument("--max-memory", type=float, default=None, metavar="GIB",
                        help="memory budget of the Hessian in GiB (default: 1, or what one row per pass needs, up to "
                             "half the available memory)")
    parser.add_argument("--format", default="png", choices=common.module_constant(FIGURES, "FIGURE_FORMATS"),
                        help="the figure's file format (pdf and svg: vector graphics for a paper)")
    parser.add_argument("--dpi", type=float, default=common.module_constant(FIGURES, "FIGURE_DPI"),
                        help="the figure's resolution in dots per inch (png; the raster parts of pdf/svg)")
    return parser


def _positive(parser, name: str, value) -> None:
    if value is not None and not (math.isfinite(value) and value > 0):
        parser.error(f"{name} must be a positive number, got {value:g}")


@common.cli_main(PROG)
def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.relax_cell and not args.relax:
        parser.error("--relax-cell relaxes the cell with the ions: add --relax")
    for name in ("dpi", "fmax", "symprec", "sigma", "max_memory"):
        _positive(parser, "--" + name.replace("_", "-"), getattr(args, name))
    if args.relax_steps < 1:
        parser.error(f"--relax-steps must be at least 1, got {args.relax_steps}")
    common.setup_process()
    from mf_lightning.analysis.phonons import analyse, summary, write_outputs
    from mf_lightning.model.io import model_checksum
    from mf_lightning.simulation.md import load_structure

    common.writable_output(args.out, folder=True)  # before any work
    if args.born:
        common.writable_output(args.born, folder=True, option="--born")
    atoms = load_structure(args.structure, args.frame, args.supercell, periodic=True)
    calc = common.calculator_from(args)
    result = analyse(calc, atoms, relax=args.relax, relax_cell=args.relax_cell, fmax=args.fmax,
                     relax_steps=args.relax_steps, piezo=args.piezo, raman=not args.no_raman,
                     max_memory=None if args.max_memory is None else args.max_memory * 2 ** 30, symprec=args.symprec)
    meta = {"model": str(args.model), "model_sha256": model_checksum(calc.model), "structure": str(args.structure),
            "frame": args.frame, "options": {k: v for k, v in vars(args).items() if k not in ("model", "structure")}}
    paths = write_outputs(result, args.out, fmt=args.format, dpi=args.dpi, born_dir=args.born, sigma_cm=args.sigma,
                          meta=meta)
    record = summary(result, sigma_cm=args.sigma)

    def cm(values):
        return ", ".join(f"{v:.0f}" for v in values) or "-"

    print(f"{result['formula']}: {len(result['rows'])} optical modes; strongest IR "
          f"{cm(r['wavenumber_cm'] for r in record['strongest_ir'])} cm^-1, IR peaks (sigma {args.sigma:g}) "
          f"{cm(p['wavenumber_cm'] for p in record['ir_peaks'][:3])}, strongest Raman "
          f"{cm(r['wavenumber_cm'] for r in record['strongest_raman'])}; unstable: "
          f"{cm(result['unstable_modes_cm'])}")
    print("eps_inf (diagonal):", " ".join(f"{v:.4f}" for v in result["eps_inf"].diagonal()))
    if "piezo" in result:
        from mf_lightning.analysis.piezo import VOIGT_LABELS

        for name in ("e_clamped", "e_relaxed"):
            print(f"{name} (C/m^2; rows x y z, columns {' '.join(VOIGT_LABELS)}):")
            for i, row in enumerate(result["piezo"][name + "_voigt"]):
                print(f"  {'xyz'[i]}: " + " ".join(f"{v:8.4f}" if math.isfinite(v) else "       -" for v in row))
    print("flags:", ";".join(result["flags"]) or "-")
    return common.finish(result["warnings"], paths)


if __name__ == "__main__":
    sys.exit(main())
