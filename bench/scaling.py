"""Cost against system size: alpha-quartz supercells from 72 to 4,608 atoms.

    python bench/scaling.py [--repeats 2] [--dtype float64] [--channels 64]

For each supercell (one process each): seconds and peak memory of one calculator call for
E/F/S + P (an MD step) and for E/F/S + P + Z* + alpha, divided by the atom count. Memory per
atom is (peak RSS - RSS before the first call) / atoms. Linear cost = flat per-atom columns.
Appends a table to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np
from _common import append, child_setup, elements, fmt, header, parse, peak_rss_gib, records, run_child

REPEATS = [(1, 1, 1), (2, 1, 1), (2, 2, 1), (2, 2, 2), (4, 2, 2), (4, 4, 2), (4, 4, 4)]


def one(spec: dict) -> dict:
    malloc = child_setup(spec["threads"], spec["malloc"])
    import mf_lightning
    from mf_lightning.simulation.calculator import MACEFieldCalculator

    rec = records("sio2", 1)[0]
    atoms = rec.atoms.copy() * tuple(spec["repeat"])
    atoms.calc = None
    model = mf_lightning.build_model(atomic_numbers=elements([rec]), num_channels=spec["channels"], dtype=spec["dtype"],
                                     coupling={"form": "residual_tp", "init": "random"}, seed=0)
    calc = MACEFieldCalculator(model)
    ask = calc.get_becs if spec["row"] == "Z*" else calc.get_polarisation
    rng = np.random.default_rng(0)
    start = atoms.positions.copy()
    base = peak_rss_gib()
    times = []
    for i in range(spec["repeats"] + 1):
        atoms.positions = start + rng.normal(scale=0.01, size=start.shape)
        t0 = time.perf_counter()
        ask(atoms)
        if i:
            times.append(time.perf_counter() - t0)
    return {"s": statistics.median(times), "gib": peak_rss_gib(), "base": base, "atoms": len(atoms), "malloc": malloc}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--dtype", default="float64")
    p.add_argument("--channels", type=int, default=64)
    p.add_argument("--max-atoms", type=int, default=5000)
    args = parse(p, one)
    if args is None:
        return 0
    lines = [header(f"Scaling with system size (alpha-quartz supercells, {args.dtype}, {args.channels} channels)",
                     args.threads, "tuned"),
             f"`python bench/scaling.py {' '.join(sys.argv[1:])}`: one calculator call on new positions, median of "
             f"{args.repeats} after a warm-up, one process per cell. ms/atom and MiB/atom (peak RSS above the RSS "
             "before the first call) should stay flat.\n",
             "| atoms | F+P s | F+P ms/atom | F+P MiB/atom | F+P+Z*+alpha s | Z* ms/atom | Z* MiB/atom |",
             "|---|---|---|---|---|---|---|"]
    for rep in REPEATS:
        if 72 * int(np.prod(rep)) > args.max_atoms:
            break
        cells = {}
        for row in ("F+P", "Z*"):
            cells[row] = run_child(__file__, dict(row=row, repeat=rep, dtype=args.dtype, channels=args.channels,
                                                  repeats=args.repeats, threads=args.threads, malloc="tuned"))
        print(rep, cells, flush=True)
        n = 72 * int(np.prod(rep))
        out = [str(n)]
        for row in ("F+P", "Z*"):
            r = cells[row]
            if "error" in r:
                out += [r["error"], "-", "-"]
            else:
                out += [fmt(r["s"]), fmt(1e3 * r["s"] / n, ".3f"), fmt(1024 * (r["gib"] - r["base"]) / n, ".2f")]
        lines.append("| " + " | ".join(out) + " |")
    append("\n".join(lines) + "\n", args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
