"""Training-step cost: upstream mace-torch vs FieldMACE (coupling none) vs FieldMACE with all labels.

    python bench/train_step.py                         # the headline: BaTiO3, batch 4, float64, 64 ch
    python bench/train_step.py --grid                  # sio2+batio3 x batch 1,4 x float32,64 x 64,128 ch
    python bench/train_step.py --malloc tuned default  # the malloc settings both ways
    python bench/train_step.py --kinds a b c c-e3nn    # + (c) with e3nn's own tensor products

Kinds: (a) upstream mace-torch ``ScaleShiftMACE`` with mace's own forward and an E/F/S loss;
(b) ``FieldMACE`` coupling ``none``, E/F/S loss through our loss and observables;
(c) ``FieldMACE`` ``residual_tp``, E/F/S + P + Z* + alpha loss; c-e3nn: (c) without the
split-backward tensor products (mf_lightning/model/split_backward.py). Same architecture and
frames for all (2 layers, L_max 1, max_ell 3, r_max 5). Each configuration runs in a fresh
subprocess that builds every kind, warms each up (``--warmup`` steps), then times ``--repeats``
interleaved rounds (a step of each kind per round; forward, loss, backward, Adam step) and
reports the medians: on a shared machine the noise then hits all kinds alike, so the ratios are
steadier than the absolute times. Memory: the peak RSS after each kind's warm-up, taken in the
order a, b, c (so (c)'s figure is its own). Appends a table to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import time

from _common import append, child_setup, elements, fmt, header, labelled_batch, parse, peak_rss_gib, records, run_child

KIND_TEXT = {"a": "upstream ScaleShiftMACE, E/F/S", "b": "FieldMACE none, E/F/S",
             "c": "FieldMACE residual_tp, E/F/S+P+Z*+alpha", "c-e3nn": "(c) with e3nn's TorchScript TPs"}


def one(spec: dict) -> dict:
    """All kinds in one process, timed in interleaved rounds (a, b, c, a, b, c, ...) so that a
    slow patch of a shared machine hits every kind alike; the peak RSS after each kind's warm-up
    (in the order given, (a) first) is that kind's memory: exact for the first, and for later
    kinds the maximum so far, which is their own whenever they need more (as (c) does)."""
    malloc = child_setup(spec["threads"], spec["malloc"])
    import torch

    import mf_lightning
    from mf_lightning.data import keys
    from mf_lightning.train.losses import MultiTaskLoss

    dtype = spec["dtype"]
    tdtype = getattr(torch, dtype)
    recs = records(spec["structure"], spec["batch"])
    z = elements(recs)
    efs = {"energy": 1.0, "forces": 100.0, "stress": 1.0}
    steps, batch = {}, None
    for kind in spec["kinds"]:
        form = "none" if kind in ("a", "b") else "residual_tp"
        # (a) must be mace-torch's own code, so its tensor products stay e3nn's TorchScript ones.
        split = kind not in ("a", "c-e3nn")
        model = mf_lightning.build_model(atomic_numbers=z, num_channels=spec["channels"], dtype=dtype, seed=0,
                                         coupling={"form": form, "init": "random", "split_backward": split})
        batch = batch if batch is not None else labelled_batch(recs, z, model.r_max, tdtype)  # same for every kind
        weights = efs if kind in ("a", "b") else {**efs, "polarisation": 100.0, "becs": 100.0, "polarisability": 100.0}
        net = model.backbone if kind == "a" else model
        steps[kind] = make_step(kind, net, batch, MultiTaskLoss(weights), keys)
    out = {kind: {"atoms": sum(len(r.atoms) for r in recs), "malloc": malloc, "times": []} for kind in steps}
    for kind, step in steps.items():
        for _ in range(spec["warmup"]):
            step()
        out[kind]["gib"] = peak_rss_gib()
    for _ in range(spec["repeats"]):
        for kind, step in steps.items():
            t0 = time.perf_counter()
            step()
            out[kind]["times"].append(time.perf_counter() - t0)
    for r in out.values():
        r["s"] = statistics.median(r["times"])
    return out


def make_step(kind, net, batch, loss_fn, keys):
    import torch

    opt = torch.optim.Adam(net.parameters(), lr=1e-4, amsgrad=True)

    def step():
        d = dict(batch)
        if kind == "a":  # mace's own forward and the same Huber E/F/S terms
            out = net(d, training=True, compute_force=True, compute_stress=True)
            loss, _ = loss_fn({keys.ENERGY: out["energy"], keys.FORCES: out["forces"], keys.STRESS: out["stress"]}, d)
        else:
            out = net(d, properties=loss_fn.properties(d), training=True)
            loss, _ = loss_fn(out, d)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--structures", nargs="+", default=["batio3"], choices=["sio2", "batio3"])
    p.add_argument("--batch", nargs="+", type=int, default=[4])
    p.add_argument("--dtype", nargs="+", default=["float64"], choices=["float32", "float64"])
    p.add_argument("--channels", nargs="+", type=int, default=[64])
    p.add_argument("--kinds", nargs="+", default=["a", "b", "c"], choices=list(KIND_TEXT))
    p.add_argument("--malloc", nargs="+", default=["tuned"], choices=["tuned", "default"])
    p.add_argument("--grid", action="store_true", help="every structure x batch 1,4 x float32,64 x 64,128 channels")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--timeout", type=float, default=1800)
    p.add_argument("--title", default="Training step")
    args = parse(p, one)
    if args is None:
        return 0
    if args.grid:
        args.structures, args.batch, args.dtype, args.channels = ["sio2", "batio3"], [1, 4], ["float32", "float64"], [64, 128]
    kinds = args.kinds
    cols = " | ".join(f"({k}) s" for k in kinds) + " | " + " | ".join(f"({k}) GiB" for k in kinds)
    ratios = [k for k in ("b", "c") if k in kinds and "a" in kinds]
    lines = [header(args.title, args.threads, " / ".join(args.malloc)),
             f"`python bench/train_step.py {' '.join(sys.argv[1:])}`. Median of {args.repeats} interleaved rounds after "
             f"{args.warmup} warm-up steps per kind, one process per configuration; peak RSS after each kind's warm-up. "
             + "; ".join(f"({k}) {KIND_TEXT[k]}" for k in kinds) + ".\n",
             f"| structure | atoms | dtype | ch | malloc | {cols} |" + "".join(f" {k}/a |" for k in ratios)
             + (" c/a mem |" if "c" in ratios else ""),
             "|" + "---|" * (5 + 2 * len(kinds) + len(ratios) + ("c" in ratios))]
    for s, b, dt, ch, mal in itertools.product(args.structures, args.batch, args.dtype, args.channels, args.malloc):
        spec = dict(kinds=kinds, structure=s, batch=b, dtype=dt, channels=ch, malloc=mal, threads=args.threads,
                    warmup=args.warmup, repeats=args.repeats)
        res = run_child(__file__, spec, args.timeout)
        others = [k for k in kinds if not k.startswith("c")]
        if "error" in res and others and len(others) < len(kinds):  # most likely (c) ran out of memory
            failure = {"error": res["error"]}
            res = {**run_child(__file__, {**spec, "kinds": others}, args.timeout), **{k: failure for k in kinds if k not in others}}
        res = {k: res.get(k, {"error": res.get("error", "failed")}) for k in kinds}
        print(s, b, dt, ch, mal, {k: r.get("s", r.get("error")) for k, r in res.items()}, flush=True)
        ok = {k: r for k, r in res.items() if "error" not in r}
        atoms = next((r["atoms"] for r in ok.values()), "?")
        t = " | ".join(fmt(ok[k]["s"]) if k in ok else res[k]["error"] for k in kinds)
        m = " | ".join(fmt(ok[k]["gib"]) if k in ok else "-" for k in kinds)
        r = "".join(f" {fmt(ok[k]['s'] / ok['a']['s']) if k in ok and 'a' in ok else '-'} |" for k in ratios)
        if "c" in ratios:
            r += f" {fmt(ok['c']['gib'] / ok['a']['gib']) if 'c' in ok and 'a' in ok else '-'} |"
        lines.append(f"| {s} x{b} | {atoms} | {dt} | {ch} | {mal} | {t} | {m} |{r}")
    append("\n".join(lines) + "\n", args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
