"""What every bench script shares: one configuration per fresh subprocess (so peak RSS and the
allocator state are its own), the machine header, and appending a section to bench/RESULTS.md."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "RESULTS.md"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def peak_rss_gib() -> float:
    """Peak resident memory of this process (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def child_setup(threads: int, malloc: str) -> str:
    """In a measured subprocess: the malloc setting under test, then torch threads."""
    os.environ["MF_MALLOC_TUNING"] = "1" if malloc == "tuned" else "0"
    from mf_lightning.runtime import configure_process

    return configure_process(threads)


def run_child(script: str, spec: dict, timeout: Optional[float] = None) -> dict:
    """Run ``script --_one '<json spec>'`` and return the JSON it prints last; a failure becomes
    ``{"error": ...}`` (a kill by signal 9 is how an out-of-memory ends here)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    env["PYTHONWARNINGS"] = "ignore"
    cmd = [sys.executable, script, "--_one", json.dumps(spec)]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timeout after {timeout:.0f} s"}
    if out.returncode:
        if out.returncode in (-9, 137):
            return {"error": "killed (out of memory)"}
        tail = out.stderr.strip().splitlines()[-1:] or ["?"]
        return {"error": f"exit {out.returncode}: {tail[0][:120]}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def header(title: str, threads: int, malloc: str) -> str:
    import torch

    return (f"\n## {title} ({datetime.date.today()}, {cpu_name()}, {os.cpu_count()} cores, "
            f"torch {torch.__version__}, {threads} torch threads, malloc: {malloc})\n")


def append(text: str, out: Path = RESULTS) -> None:
    print(text)
    out = Path(out)
    if not out.exists():
        out.write_text("# Benchmarks (bench/)\n\nEach section is appended by a bench script run; see the script's docstring.\n")
    with open(out, "a") as fh:
        fh.write(text if text.endswith("\n") else text + "\n")


def fmt(value, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


FILES = {"sio2": "md/SiO2.xyz", "batio3": "md/BaTiO3.xyz", "mp_dielectric": "mp_dielectric/dielectric-valid.xyz"}


def records(structure: str, n: int):
    """The first ``n`` labelled frames of a shared MD file (conf/data/<structure>.yaml's labels)."""
    from omegaconf import OmegaConf

    from mf_lightning.data.reader import read_records
    from mf_lightning.data.root import resolve_file

    labels = OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "data" / f"{structure}.yaml").labels)
    return read_records(resolve_file(FILES[structure]), labels)[:n]


def elements(recs) -> list:
    return sorted({int(z) for r in recs for z in r.atoms.get_atomic_numbers()})


def parse(parser, one, threads: int = 2):
    """Add the options every script shares and parse. In a measured subprocess (``--_one``) run
    ``one(spec)``, print its JSON and return None; otherwise return the arguments."""
    parser.add_argument("--threads", type=int, default=threads)
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--_one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._one:
        print(json.dumps(one(json.loads(args._one))))
        return None
    return args


def labelled_batch(recs, z, r_max: float, dtype):
    """The frames as one mace-torch batch dict with their labels (what the training loop sees)."""
    from mace.tools.torch_geometric.batch import Batch

    from mf_lightning.data.dataset import record_to_graph
    from mf_lightning.train.metrics import batch_to_dict

    return batch_to_dict(Batch.from_data_list([record_to_graph(r, z, r_max, ["Default"], "Default") for r in recs]), dtype)
