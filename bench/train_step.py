"""Training-step cost: upstream mace-torch vs FieldMACE (coupling none) vs FieldMACE with all labels.

    python bench/train_step.py                          # the headline: BaTiO3, batch 4, float64, 64 ch
    python bench/train_step.py --structures sio2 batio3 --batch 1 4 --dtype float32 float64 --channels 64 128

(a) upstream ``ScaleShiftMACE``, E/F/S loss (mace's own forward, ``training=True``);
(b) ``FieldMACE`` with coupling ``none``, E/F/S loss through our loss and observables;
(c) ``FieldMACE`` (``residual_tp``), E/F/S + P + Z* + alpha loss.
Each configuration runs in a fresh subprocess (so peak RSS is its own): ``--warmup`` steps, then
the median of ``--repeats`` timed steps (forward, loss, backward, optimiser step). Appends a
markdown table to bench/RESULTS.md with the machine, torch version and date.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FILES = {"sio2": "md/SiO2.xyz", "batio3": "md/BaTiO3.xyz"}


def one(kind: str, structure: str, batch: int, dtype: str, channels: int, warmup: int, repeats: int) -> dict:
    import torch

    sys.path.insert(0, str(ROOT))
    import mf_lightning
    from mf_lightning.data import keys
    from mf_lightning.data.dataset import record_to_graph
    from mf_lightning.data.reader import read_records
    from mf_lightning.data.root import resolve_file
    from mf_lightning.losses import MultiTaskLoss
    from mf_lightning.module import batch_to_dict
    from mace.tools.torch_geometric.batch import Batch

    from omegaconf import OmegaConf

    labels = OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "data" / f"{structure}.yaml").labels)
    tdtype = getattr(torch, dtype)
    path = resolve_file(FILES[structure])
    records = read_records(path, labels)[:batch]
    z = sorted({int(x) for r in records for x in r.atoms.get_atomic_numbers()})
    torch.manual_seed(0)
    form = "none" if kind in ("a", "b") else "residual_tp"
    model = mf_lightning.build_model(atomic_numbers=z, num_channels=channels, dtype=dtype,
                                     coupling={"form": form, "init": "random"}, seed=0)
    graphs = [record_to_graph(r, z, model.r_max, ["Default"], "Default") for r in records]
    batch_d = batch_to_dict(Batch.from_data_list(graphs), tdtype)
    efs = {"energy": 1.0, "forces": 100.0, "stress": 1.0}
    if kind == "a":
        net = model.backbone  # the upstream module itself, with mace's own forward
        loss_fn = None
    else:
        net = model
        weights = dict(efs) if kind == "b" else {**efs, "polarisation": 100.0, "becs": 100.0, "polarisability": 100.0}
        loss_fn = MultiTaskLoss(weights)
    opt = torch.optim.Adam(net.parameters(), lr=1e-4, amsgrad=True)

    def step():
        d = dict(batch_d)
        if kind == "a":
            out = net(d, training=True, compute_force=True, compute_stress=True)
            n = (d[keys.PTR][1:] - d[keys.PTR][:-1]).to(tdtype)
            loss = (((out["energy"] - d["ref_energy"]) / n) ** 2).mean() + 100 * ((out["forces"] - d["ref_forces"]) ** 2).mean() \
                + ((out["stress"] - d["ref_stress"]) ** 2).mean()
        else:
            out = net(d, properties=loss_fn.properties(d), training=True)
            loss, _ = loss_fn(out, d)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return {"median_s": statistics.median(times), "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
            "atoms": sum(len(r.atoms) for r in records)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--structures", nargs="+", default=["batio3"], choices=sorted(FILES))
    p.add_argument("--batch", nargs="+", type=int, default=[4])
    p.add_argument("--dtype", nargs="+", default=["float64"])
    p.add_argument("--channels", nargs="+", type=int, default=[64])
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=str(ROOT / "bench" / "RESULTS.md"))
    p.add_argument("--_one", nargs=7, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args._one:
        kind, s, b, dt, ch, w, r = args._one
        import torch

        torch.set_num_threads(args.threads)
        print(json.dumps(one(kind, s, int(b), dt, int(ch), int(w), int(r))))
        return 0
    import torch

    rows = []
    for s in args.structures:
        for b in args.batch:
            for dt in args.dtype:
                for ch in args.channels:
                    res = {}
                    for kind in ("a", "b", "c"):
                        cmd = [sys.executable, __file__, "--threads", str(args.threads), "--_one", kind, s, str(b), dt,
                               str(ch), str(args.warmup), str(args.repeats)]
                        out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
                        if out.returncode:
                            raise SystemExit(out.stderr[-3000:])
                        res[kind] = json.loads(out.stdout.strip().splitlines()[-1])
                        print(s, b, dt, ch, kind, res[kind], flush=True)
                    rows.append((s, b, dt, ch, res))
    malloc = "MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=64GiB" if os.environ.get("MALLOC_MMAP_MAX_") == "0" else "glibc defaults"
    lines = [f"\n## Training step ({datetime.date.today()}, {platform.processor() or platform.machine()}, "
             f"{os.cpu_count()} cores, torch {torch.__version__}, {args.threads} threads, malloc: {malloc})\n",
             "Median of %d steps after %d warm-up; peak RSS of the whole process. (a) upstream ScaleShiftMACE E/F/S, "
             "(b) FieldMACE coupling none E/F/S, (c) FieldMACE residual_tp E/F/S+P+Z*+alpha.\n" % (args.repeats, args.warmup),
             "| structure | atoms | dtype | channels | (a) s | (b) s | (c) s | b/a | c/a | (a) GiB | (c) GiB | c/a mem |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for s, b, dt, ch, r in rows:
        a, bb, c = r["a"], r["b"], r["c"]
        lines.append(f"| {s} x{b} | {a['atoms']} | {dt} | {ch} | {a['median_s']:.2f} | {bb['median_s']:.2f} | "
                     f"{c['median_s']:.2f} | {bb['median_s'] / a['median_s']:.2f} | {c['median_s'] / a['median_s']:.2f} | "
                     f"{a['peak_rss_gib']:.2f} | {c['peak_rss_gib']:.2f} | {c['peak_rss_gib'] / a['peak_rss_gib']:.2f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    out = Path(args.out)
    if not out.exists():
        out.write_text("# Benchmarks (bench/)\n\nEach section is appended by a bench script run; see the script's docstring.\n")
    with open(out, "a") as fh:
        fh.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
