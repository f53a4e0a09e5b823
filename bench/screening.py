"""Screening throughput (structures per second) of the two engines of ``mf_lightning.analysis.screening``:
``ase`` (response in batched forward passes of the model, relaxation one structure at a time
with ASE's BFGS) and ``torchsim`` (both batched through TorchSim's ``FieldMaceModel``).

    python bench/screening.py                       # 200 MP-Dielectric structures, 20 quartz frames relaxed
    python bench/screening.py --n 200 --n-relax 20 --rounds 2

Both engines screen the same structures through ``predict.screen`` (the CLI's path: checks,
batching, the CSV table), into a fresh table per round. Rows: response only (Z*, alpha, eps_inf:
the screening table) for the first ``--n`` structures of MP-Dielectric's valid file with the
committed MP-Dielectric CPU model; relaxation (ions, fmax 0.05 eV/A) + response for the first
``--n-relax`` alpha-quartz MD frames with the alpha-quartz CPU model (the MP-Dielectric model
learnt no energies, so relaxing with it is meaningless). float64. Engines alternate within each
round (one process), and the table reports the median over rounds, so drift hits both alike.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from _common import ROOT, append, child_setup, header, parse, peak_rss_gib, run_child

ENGINES = ("ase", "torchsim")


def one(spec: dict) -> dict:
    child_setup(spec["threads"], "tuned")
    import ase.io

    import mf_lightning
    from mf_lightning.analysis.screening import screen
    from mf_lightning.data.root import resolve_file

    models = {"response": mf_lightning.load_model(ROOT / "experiments" / "models" / "mp_dielectric_cpu.pt").double(),
              "relax + response": mf_lightning.load_model(ROOT / "experiments" / "models" / "sio2_md_cpu.pt").double()}
    frames = ase.io.read(resolve_file("mp_dielectric/dielectric-valid.xyz"), index=f":{spec['n']}")
    quartz = ase.io.read(resolve_file("md/SiO2.xyz"), index=f":{spec['n_relax']}")
    rows = {"response": [(f"mp_dielectric@{i}", a) for i, a in enumerate(frames)],
            "relax + response": [(f"SiO2@{i}", a) for i, a in enumerate(quartz)]}
    times = {(row, e): [] for row in rows for e in ENGINES}
    counts = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(spec["rounds"]):
            for row, its in rows.items():
                for engine in ENGINES:
                    out = Path(tmp) / f"{row[:5]}-{engine}-{r}.csv"
                    start = time.perf_counter()
                    c = screen(iter(its), models[row], out, progress=False, engine=engine,
                               relax=row != "response", fmax=0.05, max_atoms=2000)
                    times[(row, engine)].append(time.perf_counter() - start)
                    counts[(row, engine)] = (c["predicted"], c["failed"])
    return {"results": [{"row": row, "engine": e, "n": len(rows[row]), "predicted": counts[(row, e)][0],
                         "failed": counts[(row, e)][1], "seconds": statistics.median(times[(row, e)]),
                         "all_seconds": times[(row, e)]} for row in rows for e in ENGINES],
            "peak_rss_gib": peak_rss_gib()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--n-relax", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--title", default="Screening throughput: ase vs torchsim engine")
    args = parse(parser, one)
    if args is None:
        return
    spec = {"n": args.n, "n_relax": args.n_relax, "rounds": args.rounds, "threads": args.threads}
    res = run_child(__file__, spec, timeout=4 * 3600)
    text = header(args.title, args.threads, "tuned")
    text += ("\nResponse: MP-Dielectric valid structures with mp_dielectric_cpu.pt; relax + response: alpha-quartz "
             "MD frames (72 atoms) with sio2_md_cpu.pt, fmax 0.05 eV/A; float64, "
             f"`predict.screen` per engine, engines alternating, median of {args.rounds} rounds.\n\n")
    if "error" in res:
        append(text + f"failed: {res['error']}\n", args.out)
        return
    text += "| row | engine | structures | predicted / failed | time (s) | structures/s | vs ase |\n|---|---|---|---|---|---|---|\n"
    base = {r["row"]: r["seconds"] for r in res["results"] if r["engine"] == "ase"}
    for r in res["results"]:
        text += (f"| {r['row']} | {r['engine']} | {r['n']} | {r['predicted']} / {r['failed']} | {r['seconds']:.1f} | "
                 f"{r['n'] / r['seconds']:.2f} | {base[r['row']] / r['seconds']:.2f}x |\n")
    text += f"\nPeak RSS {res['peak_rss_gib']:.2f} GiB.\n"
    append(text, args.out)


if __name__ == "__main__":
    main()
