"""Where the time of Z*/alpha goes: phase timings and a ``torch.profiler`` operator table.

    python bench/profile_response.py [--structure batio3 --batch 4 --channels 64]

Phases of one step, timed separately (median of 3 after a warm-up), for inference (no graph
kept through the results) and training (create_graph, then the parameter backward):
forward F(R, E); the joint first backward (forces, stress, P); the three mixed second backward
passes (row i of Z* and alpha together); and, in training, the loss backward to the weights.
The plain E/F/S step of the same model is the reference. Then the 15 most expensive operators
of one training step with all labels. Appends both to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

from _common import RESULTS, append, child_setup, elements, header, labelled_batch, records


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--structure", default="batio3", choices=["sio2", "batio3"])
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--channels", type=int, default=64)
    p.add_argument("--dtype", default="float64")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=str(RESULTS))
    args = p.parse_args()
    malloc = child_setup(args.threads, "tuned")
    import torch
    from mace.modules.utils import prepare_graph
    from torch.profiler import ProfilerActivity, profile

    import mf_lightning
    from mf_lightning.data import keys

    recs = records(args.structure, args.batch)
    z = elements(recs)
    model = mf_lightning.build_model(atomic_numbers=z, num_channels=args.channels, dtype=args.dtype,
                                     coupling={"form": "residual_tp", "init": "random"}, seed=0)
    tdtype = getattr(torch, args.dtype)
    batch = labelled_batch(recs, z, model.r_max, tdtype)

    def phases(training: bool, response: bool) -> dict:
        d = dict(batch)
        field = torch.zeros(args.batch, 3, dtype=tdtype, requires_grad=True)
        t = [time.perf_counter()]
        ctx = prepare_graph(d, compute_displacement=True)
        energy = model._enthalpy(d, ctx, field)
        t.append(time.perf_counter())
        wrt = [ctx.positions, ctx.displacement] + ([field] if response else [])
        first = torch.autograd.grad([energy.sum()], wrt, create_graph=training or response)
        t.append(time.perf_counter())
        rows = []
        if response:
            for i in range(3):
                rows += torch.autograd.grad([first[2][:, i].sum()], [ctx.positions, field], create_graph=training,
                                            retain_graph=training or i < 2)
        t.append(time.perf_counter())
        if training:
            loss = sum((g ** 2).sum() for g in list(first) + rows)
            loss.backward()
        t.append(time.perf_counter())
        return {"forward": t[1] - t[0], "first backward": t[2] - t[1], "3 second backwards": t[3] - t[2],
                "loss backward": t[4] - t[3]}

    lines = [header(f"Profile of Z*/alpha ({args.structure} x{args.batch}, {args.dtype}, {args.channels} channels)",
                     args.threads, malloc),
             f"`python bench/profile_response.py {' '.join(sys.argv[1:])}`: seconds per phase, median of 3 after a "
             "warm-up; the last column is the whole step relative to the same model's E/F/S step.\n",
             "| step | forward | first backward | 3 second backwards | loss backward | total | / E/F/S |",
             "|---|---|---|---|---|---|---|"]
    ref = {}
    for name, training, response in [("inference E/F/S", False, False), ("inference E/F/S+P+Z*+alpha", False, True),
                                     ("training E/F/S", True, False), ("training E/F/S+P+Z*+alpha", True, True)]:
        phases(training, response)
        runs = [phases(training, response) for _ in range(3)]
        med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        total = sum(med.values())
        ref.setdefault(training, total)
        lines.append(f"| {name} | " + " | ".join(f"{med[k]:.2f}" for k in med) + f" | {total:.2f} | {total / ref[training]:.2f} |")
        print(lines[-1], flush=True)

    loss_props = (keys.ENERGY, keys.FORCES, keys.STRESS, keys.POLARISATION, keys.BECS, keys.POLARISABILITY)

    def train_step():
        out = model(dict(batch), properties=loss_props, training=True)
        sum((out[k] ** 2).sum() for k in loss_props).backward()

    train_step()
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        train_step()
    table = prof.key_averages(group_by_input_shape=True).table(sort_by="self_cpu_time_total", row_limit=15,
                                                                 max_name_column_width=28, max_shapes_column_width=60)
    lines += ["", "Top operators of one training step with all labels (self CPU time, grouped by input shape; "
              "the profiler itself adds overhead):", "", "```", table.strip(), "```"]
    append("\n".join(lines) + "\n", args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
