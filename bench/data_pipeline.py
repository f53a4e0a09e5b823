"""Cost of the data pipeline per epoch: graph building without and with the graph cache.

    python bench/data_pipeline.py [--data sio2 batio3 mp_dielectric ferroelectric]

For each data config (conf/data/<name>.yaml, read from ../shared/data): ``setup()`` with an empty
cache (read the extxyz, convert units, audit labels, build neighbour lists, write the cache), the
same with the cache filled (load only), and one pass over the training loader (collating
batches), in one process per config. Appends a table to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time

from _common import ROOT, append, child_setup, fmt, header, parse, run_child


def setup_once(name: str, cache: str, out: str):
    from hydra import compose, initialize_config_dir

    from mf_lightning.train.pipeline import make_datamodule

    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=[f"data={name}", f"paths.cache_dir={cache}", f"paths.output_dir={out}"])
    dm = make_datamodule(cfg)
    t0 = time.perf_counter()
    dm.setup()
    return dm, time.perf_counter() - t0


def one(spec: dict) -> dict:
    child_setup(spec["threads"], "tuned")
    with tempfile.TemporaryDirectory() as cache, tempfile.TemporaryDirectory() as out:
        _, cold = setup_once(spec["data"], cache, out)
        dm, warm = setup_once(spec["data"], cache, out)
        loader = dm.train_dataloader()
        t0 = time.perf_counter()
        n_batches = sum(1 for _ in loader)
        epoch = time.perf_counter() - t0
    n = sum(len(ds) for src in dm.sources.values() for ds in src.datasets.values())
    return {"structures": n, "cold": cold, "warm": warm, "epoch": epoch, "batches": n_batches}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", nargs="+", default=["sio2", "batio3", "mp_dielectric", "ferroelectric"])
    args = parse(p, one, threads=1)
    if args is None:
        return 0
    lines = [header("Data pipeline", args.threads, "tuned"),
             f"`python bench/data_pipeline.py {' '.join(sys.argv[1:])}`: seconds for `setup()` without the graph "
             "cache (read, convert, audit, neighbour lists, write cache) and with it (load), and for one pass "
             "over the training loader (collation).\n",
             "| data | structures | setup, no cache s | setup, cached s | speed-up | ms/structure (no cache) | train epoch (collate) s | batches |",
             "|---|---|---|---|---|---|---|---|"]
    for name in args.data:
        r = run_child(__file__, dict(data=name, threads=args.threads))
        print(name, r, flush=True)
        if "error" in r:
            lines.append(f"| {name} | {r['error']} |  |  |  |  |  |  |")
            continue
        lines.append(f"| {name} | {r['structures']} | {fmt(r['cold'])} | {fmt(r['warm'])} | {fmt(r['cold'] / r['warm'], '.0f')}x | "
                     f"{fmt(1e3 * r['cold'] / r['structures'], '.1f')} | {fmt(r['epoch'])} | {r['batches']} |")
    append("\n".join(lines) + "\n", args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
