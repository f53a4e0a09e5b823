"""The GPU check (issue 19): physics on the device, training- and MD-step cost with e3nn and with
cuEquivariance, and two minutes of training, written as markdown to ``OUT/gpu_check.md``.

    bench/gpu_check.sh [OUT]                    # on the GPU machine: prepares, runs, reports
    python bench/gpu_check.py --out DIR         # the same without the preparation
    python bench/gpu_check.py --out DIR --quick # toy sizes (what a machine without CUDA runs)

Sections (each one a table; a failing section is reported and the others still run):

1. Physics on the device: the observable tests (acoustic sum rule, symmetric alpha, O(3)
   covariance, translation/permutation invariance, float32 against float64) and the
   cuEquivariance tests, run by pytest with ``MF_TEST_DEVICE`` set to the device; then, at 128
   channels on BaTiO3, the float32 error of Z* and alpha against float64 on the same weights,
   with TF32 matmuls off (``highest``) and on (``high``) where CUDA has them.
2. Training step: (a) mace's own ScaleShiftMACE with E/F/S, (b) FieldMACE coupling ``none``
   with E/F/S, (c) FieldMACE ``residual_tp`` with E/F/S + P + Z* + alpha; each on e3nn and on
   cuEquivariance, at ``--channels`` (128) on BaTiO3 x4 and on an MP-Dielectric batch of 8.
   The loss is the mean square of every output it trains on (the derivatives and the double
   backward a labelled step builds, whatever labels a file has). Median of interleaved rounds
   after warm-up; peak device memory per kind (CUDA only). The field coupling stays an e3nn
   tensor product on either backend: the time of its own forward calls over the model call
   (which holds the derivative passes) is timed with module hooks, a lower bound on its share
   (the derivative passes through it are not split out; a profile would).
3. MD step through ``MACEFieldCalculator``: forces; forces + P; forces + P + Z* + alpha, on
   e3nn and cuEquivariance (BaTiO3 frame 0, a small random displacement per step).
4. Two minutes of ``experiment=sio2_md_cpu`` on the device: validation RMSE against minutes.

Targets on a GPU (ratios within one run): (c)/(a) <= 2.5x with cuEquivariance; (b)/(a) <= 1.05x;
float32 Z* within 1e-4 e of float64.
"""

from __future__ import annotations

import argparse
import copy
import csv
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _common import ROOT, cpu_name, elements, labelled_batch, records

from mf_lightning.utils import markdown_table  # after _common: it puts the checkout on sys.path

SECTION_TESTS = ("tests/unit/model/test_observables.py", "tests/unit/model/test_cueq.py")
PHYSICS_K = "acoustic or covariance or translation or float32_and_float64 or cueq"


def device_name(device: str) -> str:
    import torch

    if device == "cuda":
        return f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}, CUDA {torch.version.cuda}"
    return f"{cpu_name()} ({os.cpu_count()} cores), torch {torch.__version__}, no CUDA"


def sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


# ---------------------------------------------------------------------- 1. physics
def physics_tests(device: str, out: Path) -> str:
    env = {**os.environ, "MF_TEST_DEVICE": device, "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *SECTION_TESTS, "-k", PHYSICS_K]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    (out / "physics_tests.log").write_text(proc.stdout + proc.stderr)
    last = (proc.stdout.strip().splitlines() or ["(no output)"])[-1]
    return markdown_table(["tests", "device", "result", "s"],
                 [[f"{' '.join(SECTION_TESTS)} -k '{PHYSICS_K}'", device, last, f"{time.perf_counter() - t0:.0f}"]])


def float32_error(device: str, channels: int) -> str:
    import torch

    import mf_lightning
    from mf_lightning.data import keys

    recs = records("batio3", 1)
    z = elements(recs)
    ref_model = mf_lightning.build_model(atomic_numbers=z, num_channels=channels, dtype="float64", seed=0,
                                         coupling={"form": "residual_tp", "init": "random"}).to(device)
    props = (keys.ENERGY, keys.BECS, keys.POLARISABILITY)
    batch64 = {k: (v.to(device) if torch.is_tensor(v) else v)
               for k, v in labelled_batch(recs, z, ref_model.r_max, torch.float64).items()}
    batch64[keys.ELECTRIC_FIELD] = torch.tensor([[0.01, -0.02, 0.03]], dtype=torch.float64, device=device)
    ref = {k: v.detach() for k, v in ref_model(batch64, properties=props).items()}
    model32 = copy.deepcopy(ref_model).to(torch.float32)
    batch32 = {k: (v.to(torch.float32) if torch.is_tensor(v) and v.is_floating_point() else v) for k, v in batch64.items()}
    rows = []
    for precision in (["highest", "high"] if device == "cuda" else ["highest"]):
        torch.set_float32_matmul_precision(precision)
        out = model32(batch32, properties=props)
        dz = float((out[keys.BECS].double() - ref[keys.BECS]).abs().max())
        da = float((out[keys.POLARISABILITY].double() - ref[keys.POLARISABILITY]).abs().max())
        rows.append([precision + (" (TF32)" if precision == "high" else ""), f"{dz:.2e}",
                     "yes" if dz <= 1e-4 else "no", f"{da / float(ref[keys.POLARISABILITY].abs().max()):.2e}"])
    torch.set_float32_matmul_precision("highest")
    return markdown_table(["float32 matmuls", "max |Z*32 - Z*64| (e)", "<= 1e-4 e", "max |alpha32 - alpha64| / max |alpha|"],
                 rows)


# ---------------------------------------------------------------------- 2. training step
KIND_TEXT = {"a": "mace ScaleShiftMACE, E/F/S", "b": "FieldMACE none, E/F/S", "c": "FieldMACE residual_tp, all labels"}
EFS = ("energy", "forces", "stress")
ALL = EFS + ("polarisation", "becs", "polarisability")


def build(kind: str, z, channels: int, backend: str, device: str):
    import mf_lightning
    from mf_lightning.model.backbone import convert_backbone

    form = "none" if kind in ("a", "b") else "residual_tp"
    model = mf_lightning.build_model(atomic_numbers=z, num_channels=channels, dtype="float64", seed=0,
                                     coupling={"form": form, "init": "random", "split_backward": kind != "a"})
    model = model.to(device)
    if kind == "a":
        net = model.backbone
        return convert_backbone(net, cueq=True) if backend == "cueq" else net
    return model.use_cueq(backend == "cueq")


def step_fn(kind: str, net, batch):
    import torch

    opt = torch.optim.Adam(net.parameters(), lr=1e-4)

    def step():
        d = dict(batch)
        if kind == "a":
            out = net(d, training=True, compute_force=True, compute_stress=True)
            outputs = [out[q] for q in EFS]
        else:
            props = EFS if kind == "b" else ALL
            out = net(d, properties=props, training=True)
            outputs = [out[q] for q in props]
        loss = sum((o ** 2).mean() for o in outputs)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step.net = net
    return step


def coupling_share(step, device: str) -> str:
    """The share of the model's forward time spent in its field couplings, over one step."""
    net = step.net
    spent = {"coupling": 0.0, "model": 0.0}
    started = {}

    def pre(name):
        def hook(module, args, kwargs=None):
            sync(device)
            started[name] = time.perf_counter()
        return hook

    def post(name):
        def hook(module, args, output, kwargs=None):
            sync(device)
            spent[name] += time.perf_counter() - started[name]
        return hook

    handles = [net.register_forward_pre_hook(pre("model")), net.register_forward_hook(post("model"))]
    for coupling in net.couplings.values():
        handles += [coupling.register_forward_pre_hook(pre("coupling")), coupling.register_forward_hook(post("coupling"))]
    try:
        step()
    finally:
        for h in handles:
            h.remove()
    return f"{spent['coupling'] / spent['model']:.0%}" if spent["model"] else "-"


def training_steps(device: str, channels: int, quick: bool) -> str:
    import torch

    sets = [("BaTiO3", "batio3", 1 if quick else 4), ("MP-Dielectric", "mp_dielectric", 2 if quick else 8)]
    backends = ["e3nn", "cueq"]
    warmup, rounds = (1, 2) if quick else (3, 10)
    rows = []
    for label, name, n in sets:
        recs = records(name, n)
        z = elements(recs)
        batch = None
        steps, memory = {}, {}
        for kind in KIND_TEXT:
            for backend in backends:
                try:
                    net = build(kind, z, channels, backend, device)
                except Exception as exc:  # noqa: BLE001 - reported in the table (cuEquivariance missing, OOM)
                    steps[(kind, backend)] = f"{type(exc).__name__}: {str(exc)[:60]}"
                    continue
                batch = batch if batch is not None else {
                    k: (v.to(device) if torch.is_tensor(v) else v)
                    for k, v in labelled_batch(recs, z, float(net.r_max), torch.float64).items()}
                step = step_fn(kind, net, batch)
                if device == "cuda":
                    torch.cuda.reset_peak_memory_stats()
                for _ in range(warmup):
                    step()
                sync(device)
                memory[(kind, backend)] = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None
                steps[(kind, backend)] = step
        times = {k: [] for k, v in steps.items() if callable(v)}
        for _ in range(rounds):  # interleaved: a slow patch of the machine hits every kind alike
            for key in times:
                t0 = time.perf_counter()
                steps[key]()
                sync(device)
                times[key].append(time.perf_counter() - t0)
        median = {k: statistics.median(v) for k, v in times.items()}
        atoms = sum(len(r.atoms) for r in recs)
        for backend in backends:
            cells = []
            for kind in KIND_TEXT:
                key = (kind, backend)
                cells.append(f"{median[key] * 1e3:.1f}" if key in median else str(steps.get(key, "-")))
            mem = [f"{memory[(k, backend)]:.2f}" if memory.get((k, backend)) is not None else "-" for k in KIND_TEXT]
            ratio = [f"{median[(k, backend)] / median[('a', backend)]:.2f}"
                     if (k, backend) in median and ("a", backend) in median else "-" for k in ("b", "c")]
            share = coupling_share(steps[("c", backend)], device) if callable(steps.get(("c", backend))) else "-"
            rows.append([f"{label} x{n}", atoms, backend, *cells, *mem, *ratio, share])
    header = (["batch", "atoms", "backend"] + [f"({k}) ms" for k in KIND_TEXT] + [f"({k}) GiB" for k in KIND_TEXT]
              + ["b/a", "c/a", "(c): coupling forward / model call"])
    legend = "; ".join(f"({k}) {t}" for k, t in KIND_TEXT.items())
    return (f"float64, {channels} channels, median of {rounds} interleaved rounds after {warmup} warm-up steps; "
            f"{legend}.\n\n" + markdown_table(header, rows))


# ---------------------------------------------------------------------- 3. MD step
def md_steps(device: str, channels: int, quick: bool) -> str:
    import numpy as np

    import mf_lightning
    from mf_lightning.simulation.calculator import MACEFieldCalculator

    atoms = records("batio3", 1)[0].atoms
    z = elements(records("batio3", 1))
    n_steps = 3 if quick else 20
    rows = []
    for backend in ("e3nn", "cueq"):
        try:
            model = mf_lightning.build_model(atomic_numbers=z, num_channels=channels, dtype="float64", seed=0,
                                             coupling={"form": "residual_tp", "init": "random"}).to(device)
            model.use_cueq(backend == "cueq")
        except Exception as exc:  # noqa: BLE001 - reported in the table
            rows.append([backend, f"{type(exc).__name__}: {str(exc)[:60]}", "-", "-"])
            continue
        cells = []
        for what in ("F", "F+P", "F+P+Z*+alpha"):
            calc = MACEFieldCalculator(model, electric_field=(0.0, 0.0, 0.01), compute_polarisation=what != "F")
            a = atoms.copy()
            a.calc = calc
            rng = np.random.default_rng(0)
            times = []
            for i in range(n_steps + 2):
                a.positions += rng.normal(scale=1e-3, size=a.positions.shape)
                t0 = time.perf_counter()
                a.get_forces()
                if what != "F":
                    calc.get_polarisation(a)
                if what == "F+P+Z*+alpha":
                    calc.get_becs(a)
                    calc.get_polarisability(a)
                sync(device)
                if i >= 2:
                    times.append(time.perf_counter() - t0)
            cells.append(f"{statistics.median(times) * 1e3:.1f}")
        rows.append([backend, *cells])
    return (f"BaTiO3 frame 0 ({len(atoms)} atoms), float64, {channels} channels, median of {n_steps} steps.\n\n"
            + markdown_table(["backend", "F ms", "F+P ms", "F+P+Z*+alpha ms"], rows))


# ---------------------------------------------------------------------- 4. training
def short_training(device: str, out: Path, quick: bool) -> str:
    run_dir = out / "train"
    minutes = 0.25 if quick else 2.0
    overrides = ["experiment=sio2_md_cpu", f"trainer={'gpu' if device == 'cuda' else 'default'}",
                 f"trainer.max_time=00:00:{int(minutes * 60) // 60:02d}:{int(minutes * 60) % 60:02d}",
                 "trainer.enable_progress_bar=false", f"hydra.run.dir={run_dir}", "logger=csv"]
    if quick:
        overrides += ["+trainer.limit_train_batches=4", "+trainer.limit_val_batches=2", "+trainer.limit_test_batches=2"]
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "PROJECT_ROOT": str(ROOT)}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "train.py", *overrides], cwd=ROOT, env=env, capture_output=True, text=True)
    (out / "train.log").write_text(proc.stdout[-20000:] + proc.stderr[-20000:])
    if proc.returncode:
        return f"`train.py {' '.join(overrides)}` failed (exit {proc.returncode}; see train.log)."
    rows = []
    with open(run_dir / "csv" / "metrics.csv") as fh:
        for r in csv.DictReader(fh):
            if r.get("val/loss") and r.get("time/elapsed_s"):
                rows.append([f"{float(r['time/elapsed_s']) / 60:.2f}", r["epoch"],
                             *(f"{float(r[k]):.4g}" if r.get(k) else "-" for k in
                               ("val/sio2/forces_rmse", "val/sio2/becs_diag_rmse", "val/sio2/polarisability_diag_rmse"))])
    return (f"`python train.py {' '.join(overrides)}` ({time.perf_counter() - t0:.0f} s with start-up).\n\n"
            + markdown_table(["minutes", "epoch", "val F RMSE (eV/A)", "val Z* diag RMSE (e)", "val alpha diag RMSE (e/(V A))"],
                    rows))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="folder for gpu_check.md, gpu_check.json and the logs")
    p.add_argument("--channels", type=int, default=128)
    p.add_argument("--quick", action="store_true", help="toy sizes (implied without CUDA)")
    p.add_argument("--sections", nargs="+", default=["physics", "train_step", "md_step", "training"])
    args = p.parse_args()
    import torch

    import mf_lightning  # noqa: F401  (mace before e3nn)
    from mf_lightning.model.backbone import cueq_available

    device = "cuda" if torch.cuda.is_available() else "cpu"
    quick = args.quick or device == "cpu"
    channels = 16 if quick else args.channels
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(min(os.cpu_count() or 1, 8))
    sections = {"physics": ("Physics on the device", lambda: physics_tests(device, out) + "\n\n"
                            + float32_error(device, channels)),
                "train_step": ("Training step", lambda: training_steps(device, channels, quick)),
                "md_step": ("MD step", lambda: md_steps(device, channels, quick)),
                "training": ("Two minutes of training" if not quick else "Training (CPU fallback: 15 s)",
                             lambda: short_training(device, out, quick))}
    text = [f"## GPU check ({datetime.date.today()}, {device_name(device)}, {platform.python_version()}, "
            f"cuEquivariance: {'yes' if cueq_available() else 'no'}{', toy sizes' if quick else ''})\n",
            "`bench/gpu_check.sh` (bench/gpu_check.py). " + ("No CUDA here: the CPU fallback at toy sizes; the GPU rows "
                                                           "are pending a GPU.\n" if device == "cpu" else "\n")]
    timings = {}
    for name in args.sections:
        title, fn = sections[name]
        t0 = time.perf_counter()
        try:
            body = fn()
        except Exception as exc:  # noqa: BLE001 - one failing section must not lose the others
            body = f"failed: {type(exc).__name__}: {exc}"
        timings[name] = time.perf_counter() - t0
        text.append(f"### {title} ({timings[name]:.0f} s)\n\n{body}\n")
        print(text[-1], flush=True)
        (out / "gpu_check.md").write_text("\n".join(text))  # after every section: a kill keeps what is done
    (out / "gpu_check.json").write_text(json.dumps({"device": device_name(device), "quick": quick,
                                                    "seconds": timings}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
