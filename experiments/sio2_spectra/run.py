"""alpha-quartz IR/Raman spectra and dielectric constants from finite-field MD (zero field, 300 K).

    python experiments/sio2_spectra/run.py                 # CPU size: minutes (quickstart model)
    python experiments/sio2_spectra/run.py --paper --model M.pt   # the paper's 200 ps at 300 K

CPU size: the 72-atom cell of the shared trajectory, Langevin 300 K, 1 fs steps, 200 fs of
equilibration then 2 ps of production (resolution ~17 cm^-1), P every 2 fs, alpha every 4 fs.
Paper: 200 ps of production (resolution 0.17 cm^-1) after 10 ps of equilibration, same sampling.
Writes ``<out>/trajectory.xyz``, ``<out>/spectra/`` (spectra.png, spectra.csv, summary.json) and
``<out>/comparison.md``: our IR peaks, eps_inf and eps_0 (parallel = c = z, perpendicular) next to
the paper's and Allegro-pol's (SPEC section 5). Rerunning continues an interrupted trajectory.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mf_lightning.analysis.spectra import analyse_trajectory, write_outputs
from mf_lightning.cli.experiment_tools import ensure_model, fmt
from mf_lightning.data.root import resolve_file
from mf_lightning.simulation.calculator import MACEFieldCalculator
from mf_lightning.simulation.md import load_structure, run_md
from mf_lightning.utils import markdown_table

PAPER = {"ir": [1036, 428, 759], "eps_inf": (2.37, 2.13), "eps_0": (4.56, 4.44)}
ALLEGRO = {"ir": [1041, 420, 765], "eps_inf": (2.41, 2.37), "eps_0": (4.73, 4.51)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="exported model (default: train the quickstart once)")
    p.add_argument("--out", default="sio2_spectra",
                   help="output folder (default: ./sio2_spectra in the current folder)")
    p.add_argument("--paper", action="store_true", help="the paper's protocol (200 ps)")
    p.add_argument("--production-fs", type=float, default=None)
    p.add_argument("--equilibration-fs", type=float, default=None)
    p.add_argument("--temperature", type=float, default=300.0)
    p.add_argument("--dt", type=float, default=1.0)
    p.add_argument("--friction", type=float, default=0.002, help="Langevin friction (1/fs): weak, to keep lines sharp")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    production = args.production_fs or (200_000.0 if args.paper else 2_000.0)
    equilibration = args.equilibration_fs if args.equilibration_fs is not None else (10_000.0 if args.paper else 200.0)
    out = Path(args.out)
    model = ensure_model(args.model, "quickstart", out)

    atoms = load_structure(str(resolve_file("md/SiO2.xyz")), frame=0)
    calc = MACEFieldCalculator(str(model))
    steps = int(round((equilibration + production) / args.dt))
    log_every = max(1, int(round(2.0 / args.dt)))
    run_md(atoms, calc, out / "trajectory.xyz", steps=steps, timestep_fs=args.dt, ensemble="nvt",
           temperature_K=args.temperature, friction_per_fs=args.friction, log_every=log_every,
           response_every=2 * log_every, progress=not args.no_progress)
    result = analyse_trajectory(out / "trajectory.xyz", temperature_K=args.temperature, skip_fs=equilibration,
                                sigma_cm=20.0, axis=2)
    write_outputs(result, out / "spectra", axis=2)

    ours_ir = [round(pk["wavenumber_cm"]) for pk in result["ir_peaks"][:3]]
    ei, e0 = result["eps_inf_par_perp"], result["eps_0_par_perp"]
    rows = [
        ["IR peaks (cm^-1, strongest first)", ", ".join(map(str, ours_ir)), ", ".join(map(str, PAPER["ir"])),
         ", ".join(map(str, ALLEGRO["ir"]))],
        ["eps_inf parallel / perpendicular", f"{fmt(ei['parallel'])} / {fmt(ei['perpendicular'])}",
         "%s / %s" % PAPER["eps_inf"], "%s / %s" % ALLEGRO["eps_inf"]],
        ["eps_0 parallel / perpendicular", f"{fmt(e0['parallel'])} / {fmt(e0['perpendicular'])}",
         "%s / %s" % PAPER["eps_0"], "%s / %s" % ALLEGRO["eps_0"]],
    ]
    text = (f"## alpha-quartz, {result['duration_fs'] / 1000:.1f} ps at {args.temperature:.0f} K "
            f"(resolution {result['resolution_cm']:.1f} cm^-1), model {model}\n\n"
            + markdown_table(["quantity", "this run", "paper (MACE-Field)", "Allegro-pol"], rows) + "\n")
    (out / "comparison.md").write_text(text)
    print(text)
    print(json.dumps({"raman_peaks_cm": [round(pk["wavenumber_cm"]) for pk in result.get("raman_peaks", [])[:5]]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
