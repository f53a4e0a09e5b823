"""BaTiO3 P-E hysteresis under E0 sin(2 pi t / T) along the polar axis, and a quasi-static loop.

    python experiments/batio3_hysteresis/run.py            # CPU size: minutes (BaTiO3 quickstart model)
    python experiments/batio3_hysteresis/run.py --paper --model M.pt   # E0 36 MV/cm, T 2 ps, 2 cycles

The structure is a 3x3x3 tetragonal BaTiO3 supercell (135 atoms: a frame of the shared MD set),
field along z, 0 K (damped Langevin dynamics, T = 0). CPU size: E0 = 36 MV/cm, period 1 ps,
1.5 cycles, 2 fs steps; and a quasi-static loop (ions relaxed at 9 field values per quarter).
Paper: period 2 ps, 2 cycles. Writes ``<out>/dynamic/`` and ``<out>/quasistatic/`` (loop.png,
loop.csv, loop.json) and ``<out>/comparison.md`` (P_r, E_c next to the paper's).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mf_lightning.analysis.hysteresis import PAPER_BATIO3 as PAPER
from mf_lightning.analysis.hysteresis import dynamic_loop, quasi_static_loop, write_loop
from mf_lightning.cli.experiment_tools import ensure_model, fmt
from mf_lightning.data.quantities import to_internal
from mf_lightning.data.root import resolve_file
from mf_lightning.simulation.calculator import MACEFieldCalculator
from mf_lightning.simulation.md import load_structure
from mf_lightning.utils import markdown_table


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="exported model (default: train batio3_quickstart once)")
    p.add_argument("--out", default="batio3_hysteresis",
                   help="output folder (default: ./batio3_hysteresis in the current folder)")
    p.add_argument("--paper", action="store_true")
    p.add_argument("--E0", type=float, default=36.0, help="MV/cm")
    p.add_argument("--period-fs", type=float, default=None)
    p.add_argument("--cycles", type=float, default=None)
    p.add_argument("--dt", type=float, default=2.0)
    p.add_argument("--points", type=int, default=9, help="quasi-static: field values per quarter cycle")
    p.add_argument("--relax-steps", type=int, default=300, help="quasi-static: BFGS steps per field value at most")
    p.add_argument("--skip-quasistatic", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    period = args.period_fs or (2000.0 if args.paper else 1000.0)
    cycles = args.cycles or (2.0 if args.paper else 1.5)
    out = Path(args.out)
    model = ensure_model(args.model, "batio3_quickstart", out)
    atoms = load_structure(str(resolve_file("md/BaTiO3.xyz")), frame=0)
    calc = MACEFieldCalculator(str(model))
    E0 = float(to_internal("electric_field", "MV/cm", args.E0, volume=0.0))

    rows = []
    loop = dynamic_loop(atoms, calc, out / "dynamic", E0, period, cycles=cycles, axis="z", timestep_fs=args.dt,
                        temperature_K=0.0, progress=not args.no_progress)
    m = write_loop(loop, out / "dynamic", discard=0.25 / cycles, title=f"BaTiO3, T = {period / 1000:g} ps",
                   reference=PAPER)
    rows.append([f"dynamic, period {period / 1000:g} ps", f"{fmt(m['P_r_plus'])} / {fmt(m['P_r_minus'])}",
                 f"{fmt(m['E_c_plus'])} / {fmt(m['E_c_minus'])}"])
    if not args.skip_quasistatic:
        qs = quasi_static_loop(atoms, calc, E0, n_points=args.points, axis="z", fmax=0.02, max_steps=args.relax_steps)
        m = write_loop(qs, out / "quasistatic", discard=(args.points - 1) / len(qs["E"]), title="BaTiO3, quasi-static",
                       reference=PAPER)
        rows.append(["quasi-static (relaxed)", f"{fmt(m['P_r_plus'])} / {fmt(m['P_r_minus'])}",
                     f"{fmt(m['E_c_plus'])} / {fmt(m['E_c_minus'])}"])
    rows.append(["paper (MACE-Field, 0 K, period 2 ps)", f"{PAPER['P_r']} / -{PAPER['P_r']}",
                 f"{PAPER['E_c']} / -{PAPER['E_c']}"])
    text = (f"## BaTiO3 hysteresis, E0 = {args.E0:g} MV/cm along z, model {model}\n\n"
            + markdown_table(["protocol", "P_r+ / P_r- (uC/cm^2)", "E_c+ / E_c- (MV/cm)"], rows) + "\n")
    (out / "comparison.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
