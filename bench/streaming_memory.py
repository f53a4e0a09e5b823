"""Memory stays bounded on long inputs: the screening CLI on 10,000 synthetic structures and the
MD driver over many logged steps, with peak RSS sampled as they run.

    python bench/streaming_memory.py [--n 10000] [--md-steps 2000]

Writes a markdown table to bench/RESULTS.md (appends a section): peak RSS after 10 %, 50 % and
100 % of the work. Bounded memory means the three numbers stay flat (no growth with the input).
"""

from __future__ import annotations

import argparse
import datetime
import platform
import resource
import sys
import threading
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def rss_mib() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Sampler(threading.Thread):
    def __init__(self):
        super().__init__(daemon=True)
        self.peak, self.stop = 0.0, False

    def run(self):
        while not self.stop:
            self.peak = max(self.peak, rss_mib())
            time.sleep(0.05)


def synthetic_structures(n: int, seed: int = 0):
    """n rattled alpha-quartz-like cells (9 atoms) with ids; a generator: nothing is held."""
    from ase import Atoms

    rng = np.random.default_rng(seed)
    base = np.array([[0.47, 0.0, 0.0], [0.0, 0.47, 0.67], [0.53, 0.53, 0.33]])
    for i in range(n):
        frac = np.concatenate([base, base + [0.0, 0.0, 0.1], base + [0.2, 0.3, 0.5]]) % 1.0
        atoms = Atoms("Si3O6", scaled_positions=frac, cell=np.diag([4.9, 4.9, 5.4]) @ (np.eye(3) + 0.01 * rng.normal(size=(3, 3))),
                      pbc=True)
        atoms.rattle(0.05, seed=i)
        yield f"synthetic-{i:05d}", atoms


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=10_000)
    p.add_argument("--md-steps", type=int, default=2000)
    p.add_argument("--out", default=str(HERE / "RESULTS.md"))
    args = p.parse_args(argv)

    import tempfile

    import torch

    torch.set_num_threads(1)
    sys.path.insert(0, str(HERE.parent))
    from mf_lightning.analysis.screening import screen
    from mf_lightning.simulation.calculator import MACEFieldCalculator
    from mf_lightning.simulation.md import run_md
    from tests.helpers import tiny_model  # a small random model: memory, not accuracy, is measured

    model = tiny_model([8, 14])
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        sampler = Sampler()
        sampler.start()
        marks = {}

        def items():
            for k, item in enumerate(synthetic_structures(args.n)):
                if k in (args.n // 10, args.n // 2):
                    marks[k] = sampler.peak
                yield item

        t0 = time.time()
        counts = screen(items(), model, Path(tmp) / "table.csv", max_atoms=600, progress=False)
        marks[args.n] = sampler.peak
        rows.append(["screening (predict.screen)", f"{args.n} structures x 9 atoms", f"{time.time() - t0:.0f} s",
                     *(f"{marks[k]:.0f}" for k in sorted(marks))])
        assert counts["predicted"] == args.n, counts

        atoms = next(synthetic_structures(1))[1].repeat((2, 2, 2))
        calc = MACEFieldCalculator(model)
        md_marks = []
        t0 = time.time()
        for part in (0.1, 0.5, 1.0):
            run_md(atoms, calc, Path(tmp) / "md.xyz", steps=int(part * args.md_steps), log_every=1, progress=False)
            md_marks.append(sampler.peak)
        rows.append(["MD (md.run_md, log every step)", f"{args.md_steps} steps x {len(atoms)} atoms",
                     f"{time.time() - t0:.0f} s", *(f"{m:.0f}" for m in md_marks)])
        sampler.stop = True

    header = "| workload | size | wall | peak RSS at 10 % (MiB) | at 50 % | at 100 % |\n|---|---|---|---|---|---|\n"
    text = (f"\n## Streaming memory ({datetime.date.today()}, {platform.machine()}, "
            f"{torch.get_num_threads()} torch thread, torch {torch.__version__})\n\n"
            "`python bench/streaming_memory.py`: peak resident memory while the screening CLI streams 10,000 "
            "structures into its CSV and while the MD driver logs every step. Flat columns = bounded memory.\n\n"
            + header + "\n".join("| " + " | ".join(r) + " |" for r in rows) + "\n")
    with open(args.out, "a") as fh:
        fh.write(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
