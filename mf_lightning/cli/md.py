"""``mf-md``: the command line of :mod:`mf_lightning.simulation.md`."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional, Sequence

from mf_lightning.cli._common import (
    add_field_args,
    add_model_args,
    add_structure_args,
    calculator_from,
    cli_main,
    doc_summary,
    field_from_args,
    setup_process,
    writable_output,
)
from mf_lightning.cli._common import parser as cli_parser

PROG = "mf-md"


def build_parser():
    parser = cli_parser(PROG, description=doc_summary("mf_lightning.simulation.md"))
    add_structure_args(parser)
    add_model_args(parser)
    parser.add_argument("--out", required=True, help="trajectory (extxyz); continued if it exists")
    parser.add_argument("--steps", type=int, required=True, help="total number of steps")
    parser.add_argument("--dt", type=float, default=1.0, help="time step (fs)")
    parser.add_argument("--ensemble", default="nvt", choices=["nvt", "nve"],
                        help="nvt (Langevin thermostat) or nve")
    parser.add_argument("--temperature", type=float, default=300.0, help="K (NVT; initial velocities)")
    parser.add_argument("--friction", type=float, default=0.01, help="Langevin friction (1/fs)")
    parser.add_argument("--log-every", type=int, default=10, help="write a frame every N steps")
    parser.add_argument("--response-every", type=int, default=None, help="also log alpha every N steps")
    parser.add_argument("--becs", action="store_true", help="with alpha, also log Z* per atom")
    parser.add_argument("--seed", type=int, default=0, help="seed of the initial velocities and the thermostat")
    parser.add_argument("--no-restart", action="store_true", help="overwrite an existing trajectory")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_field_args(parser)
    return parser


@cli_main(PROG)
def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    setup_process()
    from mf_lightning.simulation.md import check_dynamics, check_output, load_structure, run_md

    check_dynamics(args.steps, args.dt, args.temperature, args.friction, args.log_every, args.response_every)
    check_output(Path(args.out), [args.structure, args.model])
    writable_output(args.out)
    field = field_from_args(args)  # a bad axis or field function before the model loads
    calc = calculator_from(args)
    atoms = load_structure(args.structure, args.frame, args.supercell, periodic=True)
    result = run_md(atoms, calc, args.out, steps=args.steps, timestep_fs=args.dt, ensemble=args.ensemble,
                    temperature_K=args.temperature, friction_per_fs=args.friction, field=field,
                    log_every=args.log_every, response_every=args.response_every, becs=args.becs, seed=args.seed,
                    restart=not args.no_restart, progress=not args.no_progress)
    print(json.dumps(result))
    for w in result.get("untrained", []):
        print(f"warning: {w}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
