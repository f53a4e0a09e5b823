"""Inference (MD-step) cost per structure: upstream ``MACECalculator`` vs ``MACEFieldCalculator``
on the same weights, for forces, forces + P, and forces + P + Z* + alpha.

    python bench/md_step.py                                  # sio2 + batio3, float64 and float32, 64 ch
    python bench/md_step.py --malloc tuned default

One step = move the atoms (a new small random displacement, so nothing is cached), then ask the
calculator: ``get_forces`` (every row also returns energy and stress, as mace's calculator
does), ``get_polarisation`` with ``compute_polarisation`` on, or ``get_becs`` (Z* and alpha).
The field model is a random-weight ``residual_tp`` FieldMACE; upstream runs mace-torch's own
``ScaleShiftMACE`` with the same backbone weights (at E = 0 both give the same forces; checked
every run). All rows run in one process, in interleaved rounds (one step of each row per round),
median over ``--steps`` rounds after 2 warm-up steps per row.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import time

import numpy as np
from _common import append, child_setup, elements, fmt, header, parse, peak_rss_gib, records, run_child

ROWS = {"upstream": "mace MACECalculator, E/F/S", "F": "ours, E/F/S", "F+P": "ours, E/F/S + P",
        "F+P+Z*+alpha": "ours, E/F/S + P + Z* + alpha"}


def models(z, dtype, channels):
    import mf_lightning

    kw = dict(atomic_numbers=z, num_channels=channels, dtype=dtype, seed=0)
    field = mf_lightning.build_model(coupling={"form": "residual_tp", "init": "random"}, **kw)
    plain = mf_lightning.build_model(coupling={"form": "residual_tp", "init": "random", "split_backward": False}, **kw)
    return field, plain.backbone


def one(spec: dict) -> dict:
    """All rows in one process, timed in interleaved rounds (one step of each row per round) so
    machine noise hits every row alike; peak RSS after the warm-up of each row in the order of
    ROWS (so the Z* row's figure is its own)."""
    malloc = child_setup(spec["threads"], spec["malloc"])
    from mace.calculators import MACECalculator

    from mf_lightning.simulation.calculator import MACEFieldCalculator

    rec = records(spec["structure"], 1)[0]
    field_model, backbone = models(elements([rec]), spec["dtype"], spec["channels"])
    upstream = MACECalculator(models=[backbone], device="cpu", default_dtype=spec["dtype"])
    plain = MACEFieldCalculator(field_model, compute_polarisation=False)
    ours = MACEFieldCalculator(field_model)
    asks = {"upstream": upstream.get_forces, "F": plain.get_forces, "F+P": ours.get_polarisation,
            "F+P+Z*+alpha": ours.get_becs}
    atoms = rec.atoms.copy()
    atoms.calc = None
    rng = np.random.default_rng(0)
    start = atoms.positions.copy()
    out = {row: {"atoms": len(atoms), "malloc": malloc, "times": []} for row in asks}

    def move():
        atoms.positions = start + rng.normal(scale=0.01, size=start.shape)

    for row, ask in asks.items():
        for _ in range(2):
            move()
            ask(atoms)
        out[row]["gib"] = peak_rss_gib()
    for _ in range(spec["steps"]):
        move()
        for row, ask in asks.items():
            t0 = time.perf_counter()
            ask(atoms)
            out[row]["times"].append(time.perf_counter() - t0)
    for r in out.values():
        r["s"] = statistics.median(r["times"])
    out["max_dF"] = float(np.abs(upstream.get_forces(atoms) - plain.get_forces(atoms)).max())
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--structures", nargs="+", default=["sio2", "batio3"], choices=["sio2", "batio3"])
    p.add_argument("--dtype", nargs="+", default=["float64", "float32"], choices=["float32", "float64"])
    p.add_argument("--channels", nargs="+", type=int, default=[64])
    p.add_argument("--malloc", nargs="+", default=["tuned"], choices=["tuned", "default"])
    p.add_argument("--steps", type=int, default=10)
    args = parse(p, one)
    if args is None:
        return 0
    names = list(ROWS)
    lines = [header("MD step (inference)", args.threads, " / ".join(args.malloc)),
             f"`python bench/md_step.py {' '.join(sys.argv[1:])}`: median seconds per step over {args.steps} "
             "interleaved rounds (new positions each round), one process per line; "
             + "; ".join(f"{k}: {v}" for k, v in ROWS.items()) + ". Ratios are to ours, E/F/S.\n",
             "| structure | atoms | dtype | ch | malloc | " + " | ".join(f"{n} s" for n in names)
             + " | ours/upstream | (F+P)/F | (F+P+Z*+alpha)/F | peak GiB (Z*) | max abs dF vs upstream (eV/A) |",
             "|" + "---|" * (5 + len(names) + 5)]
    for s, dt, ch, mal in itertools.product(args.structures, args.dtype, args.channels, args.malloc):
        got = run_child(__file__, dict(structure=s, dtype=dt, channels=ch, malloc=mal, threads=args.threads, steps=args.steps))
        res = {n: got.get(n, {"error": got.get("error", "failed")}) for n in names}
        print(s, dt, ch, mal, {n: r.get("s", r.get("error")) for n, r in res.items()}, flush=True)
        t = {n: r.get("s") for n, r in res.items()}
        same = f"{got['max_dF']:.1e}" if "max_dF" in got else "-"
        def ratio(a, b):
            return fmt(a / b) if a and b else "-"
        lines.append(f"| {s} | {res['F'].get('atoms', '?')} | {dt} | {ch} | {mal} | "
                     + " | ".join(fmt(t[n], ".3f") if t[n] else res[n]["error"] for n in names)
                     + f" | {ratio(t['F'], t['upstream'])} | {ratio(t['F+P'], t['F'])} | {ratio(t['F+P+Z*+alpha'], t['F'])}"
                     f" | {fmt(res['F+P+Z*+alpha'].get('gib'))} | {same} |")
    append("\n".join(lines) + "\n", args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
