"""``mf-hysteresis``: the command line of :mod:`mf_lightning.analysis.hysteresis`."""

from __future__ import annotations

import json
import sys
from typing import Optional, Sequence

from mf_lightning.cli import _common as common

PROG = "mf-hysteresis"
MODULE = "mf_lightning.analysis.hysteresis"
FIGURES = "mf_lightning.train.plots"  # the figure formats and resolution


def build_parser():
    parser = common.parser(PROG, description=common.doc_summary(MODULE))
    common.add_structure_args(parser)
    common.add_model_args(parser, dtype_default=None)
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--mode", default="dynamic", choices=["dynamic", "quasistatic"],
                        help="dynamic: MD under E0 sin(2 pi t / period); quasistatic: relaxations on a field grid")
    common.add_field_amplitude_args(parser, E0=36.0, unit="MV/cm", period_fs=2000.0)
    parser.add_argument("--cycles", type=float, default=2.0, help="field periods (dynamic)")
    parser.add_argument("--dt", type=float, default=2.0, help="time step (fs)")
    parser.add_argument("--temperature", type=float, default=0.0, help="K (0: damped dynamics)")
    parser.add_argument("--friction", type=float, default=0.01, help="1/fs")
    parser.add_argument("--log-every", type=int, default=5, help="log P and E every N steps")
    parser.add_argument("--points", type=int, default=11, help="quasi-static: field values per quarter cycle")
    parser.add_argument("--fmax", type=float, default=0.01, help="quasi-static: relaxation force threshold (eV/A)")
    parser.add_argument("--discard", type=float, default=None,
                        help="fraction of the samples before the loop (default: the first quarter period)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--format", default="png", choices=common.module_constant(FIGURES, "FIGURE_FORMATS"),
                        help="the figure's file format (pdf and svg: vector graphics for a paper)")
    parser.add_argument("--dpi", type=float, default=common.module_constant(FIGURES, "FIGURE_DPI"),
                        help="the figure's resolution in dots per inch (png)")
    return parser


@common.cli_main(PROG)
def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.dpi > 0:
        parser.error(f"--dpi must be > 0, got {args.dpi:g}")
    from mf_lightning.analysis.hysteresis import (
        check_loop,
        dynamic_loop,
        loop_protocol,
        paper_reference,
        quasi_static_loop,
        write_loop,
    )
    from mf_lightning.simulation.md import axis_vector, check_dynamics, load_structure

    common.setup_process()
    E0 = common.field_amplitude(args)
    # every setting and the output folder before the model loads or anything runs
    check_loop(args.mode, E0, args.period_fs, args.cycles, args.dt, args.points, args.fmax, args.discard)
    if args.mode == "dynamic":
        steps = int(round(args.cycles * args.period_fs / args.dt)) if args.dt > 0 else 0
        check_dynamics(steps, args.dt, args.temperature, args.friction, args.log_every, None)
    axis_vector(args.axis)
    common.writable_output(args.out, folder=True)
    calc = common.calculator_from(args)
    atoms = load_structure(args.structure, args.frame, args.supercell, periodic=True)
    if args.mode == "dynamic":
        loop = dynamic_loop(atoms, calc, args.out, E0, args.period_fs, cycles=args.cycles, axis=args.axis,
                            timestep_fs=args.dt, temperature_K=args.temperature, friction_per_fs=args.friction,
                            log_every=args.log_every, progress=not args.no_progress)
        discard = args.discard if args.discard is not None else 0.25 / args.cycles
    else:
        loop = quasi_static_loop(atoms, calc, E0, n_points=args.points, axis=args.axis, fmax=args.fmax)
        discard = args.discard if args.discard is not None else (args.points - 1) / len(loop["E"])
    protocol = loop_protocol(args.mode, E0, args.axis, period_fs=args.period_fs, n_points=args.points)
    metrics = write_loop(loop, args.out, discard, title=atoms.get_chemical_formula(),
                         reference=paper_reference(atoms), protocol=protocol, fmt=args.format, dpi=args.dpi)
    print(json.dumps(metrics, indent=1))
    for w in metrics.get("warnings", []):
        print(f"warning: {w}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
