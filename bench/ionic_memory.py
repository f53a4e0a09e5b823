"""Peak memory and time of ``mf-predict --ionic`` (issue 26, item 3): alpha-quartz with the shipped
quartz model, the file's 72-atom cell and its 2x2x1 supercell (288 atoms), each in its own
process (its own peak RSS, from the kernel's rusage of that child), default settings.

    python bench/ionic_memory.py        # appends a section to bench/RESULTS.md
"""

from __future__ import annotations

import csv
import os
import sys
import tempfile
import time
from pathlib import Path

from _common import ROOT, append, header

from mf_lightning.utils import markdown_table

MODEL = ROOT / "experiments" / "models" / "sio2_md_cpu.pt"
THREADS = 1


def run(structure: Path, tmp: Path, extra=()):
    """One ``mf-predict --ionic`` in a child process: (exit code, seconds, peak RSS GiB, stderr, row)."""
    import subprocess

    out = tmp / f"{structure.stem}.csv"
    cmd = [sys.executable, "-m", "mf_lightning.cli.predict", str(structure), "--model", str(MODEL), "--out", str(out),
           "--ionic", "--no-progress", *extra]
    env = {**os.environ, "OMP_NUM_THREADS": str(THREADS), "PYTHONWARNINGS": "ignore"}
    err_path = tmp / f"{structure.stem}.err"
    start = time.time()
    with open(err_path, "w") as err, open(os.devnull, "w") as devnull:
        proc = subprocess.Popen(cmd, env=env, stdout=devnull, stderr=err, cwd=ROOT)
        _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.time() - start
    rows = list(csv.DictReader(open(out))) if out.exists() else []
    return os.waitstatus_to_exitcode(status), seconds, usage.ru_maxrss / 2 ** 20, err_path.read_text(), rows


def main() -> int:
    import ase.io

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        quartz = ase.io.read(ROOT.parent / "shared" / "data" / "md" / "SiO2.xyz", 0)
        for reps in ((1, 1, 1), (2, 2, 1)):
            path = tmp / f"quartz{len(quartz) * reps[0] * reps[1] * reps[2]}.xyz"
            ase.io.write(path, quartz.repeat(reps))
            rc, seconds, peak, err, rows = run(path, tmp)
            cost = next((line.split("about ", 1)[1] for line in err.splitlines() if "Hessian of" in line), "-")
            flags = rows[0]["flags"] if rows else (err.strip().splitlines() or ["-"])[-1][:80]
            results.append([len(quartz) * reps[0] * reps[1] * reps[2], f"{peak:.2f}", f"{seconds:.0f}", cost,
                            flags or "-", rc])
            print(results[-1], flush=True)
    append(header("eps_ion in bounded memory: mf-predict --ionic", THREADS, "tuned") + "\n" + markdown_table(
        ["atoms", "peak RSS (GiB)", "time per structure (s)", "predicted Hessian cost (log)", "flags", "exit"],
        results) + "\n\nalpha-quartz (the file's first frame, and 2x2x1 of it) with "
        "experiments/models/sio2_md_cpu.pt, default --max-memory, one process per row (peak RSS of that "
        "process: model, response and Hessian). Before the Hessian was built in row chunks, all 3N rows went "
        "through one batched backward pass: the 72-atom cell was killed by the kernel at 21 GB.\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
