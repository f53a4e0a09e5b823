"""What ``mf-predict --ionic`` prints for ten ordinary crystals with known dielectric constants
(issue 26): the cross-chemistry model (learned Z* and alpha only, so its eps_ion is refused and
shown only with ``--allow-untrained``) and the models that learned energies and forces (quartz;
BaTiO3, also used on rutile), relaxed first.

    python experiments/trust_crystals/run.py [--out trust_crystals/]   # writes into the current folder

Writes the structures, each tool's table and ``summary.md`` (the table in experiments/README.md).
Reference values: experiment (eps_inf, eps_0) and DFPT/experiment (Z*), rounded, from the
standard compilations (see the table's notes).
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

MODELS = Path(__file__).resolve().parents[1] / "models"

# name: (builder, eps_inf, eps_0, Z* of the first element)
REFERENCE = {
    "MgO": (2.96, 9.8, 1.96), "NaCl": (2.34, 5.9, 1.10), "LiF": (1.93, 9.0, 1.03), "CaF2": (2.04, 6.8, 2.38),
    "Si": (11.9, 11.9, 0.0), "GaAs": (10.9, 12.9, 2.07), "ZnO": (3.7, 8.5, 2.1),
    "TiO2 (rutile)": (7.4, 114.0, 7.0), "SiO2 (alpha-quartz)": (2.36, 4.5, 3.3), "BaTiO3 (cubic)": (5.6, None, 2.7),
}


def crystals():
    from ase.build import bulk
    from ase.spacegroup import crystal

    return {
        "MgO": bulk("MgO", "rocksalt", a=4.21),
        "NaCl": bulk("NaCl", "rocksalt", a=5.64),
        "LiF": bulk("LiF", "rocksalt", a=4.03),
        "CaF2": bulk("CaF2", "fluorite", a=5.46),
        "Si": bulk("Si", "diamond", a=5.43),
        "GaAs": bulk("GaAs", "zincblende", a=5.65),
        "ZnO": bulk("ZnO", "wurtzite", a=3.25, c=5.21, u=0.382),
        "TiO2 (rutile)": crystal(["Ti", "O"], basis=[(0, 0, 0), (0.3049, 0.3049, 0)], spacegroup=136,
                                 cellpar=[4.594, 4.594, 2.959, 90, 90, 90]),
        # P3_221, Si on 3a (x, 0, 2/3), O on 6c: 9 atoms, every Si-O 1.61 A, O-O above 2.5 A
        "SiO2 (alpha-quartz)": crystal(["Si", "O"], basis=[(0.4697, 0, 2 / 3), (0.4135, 0.2669, 2 / 3 + 0.1191)],
                                       spacegroup=154, cellpar=[4.916, 4.916, 5.405, 90, 90, 120]),
        "BaTiO3 (cubic)": crystal(["Ba", "Ti", "O"], basis=[(0, 0, 0), (0.5, 0.5, 0.5), (0.5, 0.5, 0)],
                                  spacegroup=221, cellpar=[4.00, 4.00, 4.00, 90, 90, 90]),
    }


def predict(files, model, out, *extra):
    cmd = [sys.executable, "-m", "mf_lightning.cli.predict", *map(str, files), "--model", str(model), "--out", str(out),
           "--ionic", "--no-progress", *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    rows = {Path(r["id"]).stem: r for r in csv.DictReader(open(out))} if out.exists() else {}
    return proc.returncode, proc.stderr.strip().splitlines(), rows


def cell(row, key, digits=2):
    if not row or not row.get(key):
        return "-"
    return f"{float(row[key]):.{digits}f}"


def z_first(row):
    if not row:
        return "-"
    becs = np.array(json.loads(row["becs"])).reshape(-1, 3, 3)
    return f"{np.trace(becs[0]) / 3:.2f}"


def main() -> int:
    import ase.io

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="trust_crystals", help="output folder (created in the current one)")
    args = parser.parse_args()
    out = Path(args.out)
    (out / "structures").mkdir(parents=True, exist_ok=True)
    files = {}
    for name, atoms in crystals().items():
        stem = name.split()[0]
        files[stem] = out / "structures" / f"{stem}.cif"
        ase.io.write(files[stem], atoms)
    cross = MODELS / "mp_dielectric_cpu.pt"
    rc_refused, err_refused, _ = predict(files.values(), cross, out / "cross_refused.csv")
    rc, _, cross_rows = predict(files.values(), cross, out / "cross_allow_untrained.csv", "--allow-untrained")
    ef = {}
    for model, names in (("sio2_md_cpu", ["SiO2"]), ("batio3_md_cpu", ["BaTiO3", "TiO2"])):
        _, _, rows = predict([files[n] for n in names], MODELS / f"{model}.pt", out / f"{model}.csv", "--relax")
        ef.update({n: (model, rows.get(n)) for n in names})
    lines = [f"`mf-predict --ionic` with `mp_dielectric_cpu.pt` (no `--allow-untrained`): exit {rc_refused}, "
             f"`{err_refused[-1] if err_refused else ''}`", "",
             "| crystal | ref eps_inf | ref eps_0 | ref Z*(1st) | cross: eps_inf | Z*(1st) | eps_0 (untrained) "
             "| flags | E/F model (relaxed) | eps_inf | eps_0 | flags |", "|" + "---|" * 12]
    for name in REFERENCE:
        stem = name.split()[0]
        e_inf, e_0, z = REFERENCE[name]
        row = cross_rows.get(stem)
        model, ef_row = ef.get(stem, ("-", None))
        lines.append(" | ".join([f"| {name}", f"{e_inf:g}", "-" if e_0 is None else f"{e_0:g}", f"{z:g}",
                                 cell(row, "eps_poly"), z_first(row), cell(row, "eps_0_poly"),
                                 (row or {}).get("flags", "-") or "-", model, cell(ef_row, "eps_poly"),
                                 cell(ef_row, "eps_0_poly"), ((ef_row or {}).get("flags", "-") or "-") + " |"]))
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
