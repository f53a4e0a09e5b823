"""alpha-quartz at the harmonic level with the shipped quartz model: piezoelectric tensors, Gamma modes
with IR and Raman intensities, and a phonopy BORN file (issue 31).

    python experiments/quartz_modes/run.py [--model M.pt] [--out quartz_modes/]   # writes into the current folder

The ideal 9-atom cell (P3_221, a = 4.916, c = 5.405 A; :func:`mf_lightning.analysis.phonons.alpha_quartz`)
is relaxed twice: the ions at the experimental cell, and the ions with the cell (the model's own
minimum); on each, ``mf-phonons``' analysis (:func:`mf_lightning.analysis.phonons.analyse`) gives the
clamped- and relaxed-ion piezoelectric tensors, the modes and the BORN file. Independent checks:
e_11 and e_14 by finite differences of the model's P with the ions relaxed in strained cells, and
the relaxed-ion elastic constant c_14 (finite differences of the stress), whose sign with e_11's
fixes the sign e_14 must have in any frame: the measured magnitudes (d_11 = 2.31, d_14 = 0.727 pC/N,
c_11 - c_12 = 79.8, c_44 = 58.0, c_14 = 17.9 GPa) and e = d c give sign(e_14) = sign(e_11 c_14),
whatever the standard's axes and the crystal's handedness (the quoted e_11 = 0.171, e_14 = -0.0406
C/m^2 come with c_14 < 0). Writes ``<out>/experimental_cell/`` and ``<out>/model_cell/`` (modes.csv,
modes.png, piezo.json/csv, BORN, summary.json, relaxed.extxyz) and ``<out>/comparison.md``: the
constants against experiment and the strongest IR modes against the MD spectra (this repository's
``sio2_spectra`` run and the paper's). About a minute on a CPU.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from ase.units import GPa

from mf_lightning.analysis.phonons import alpha_quartz, analyse, summary, write_outputs
from mf_lightning.analysis.piezo import finite_difference_piezo, strain_derivative
from mf_lightning.simulation.calculator import MACEFieldCalculator
from mf_lightning.utils import markdown_table

MODEL = Path(__file__).resolve().parents[1] / "models" / "sio2_md_cpu.pt"
# experiment: e in C/m^2 as quoted with e_11 > 0 (their frame has c_14 < 0), |c_14| in GPa
EXPERIMENT = {"e_11": 0.171, "e_14": -0.0406, "c_14": 17.9}
# the strongest IR peaks of MD at 300 K: the paper (SPEC section 5) and this repository's 2 ps run of
# experiments/sio2_spectra/run.py with the same model (experiments/README.md; no summary file is committed)
PAPER_MD_IR = [1036, 428, 759]
THIS_REPO_MD_IR = [1030, 452]
CELLS = {"experimental_cell": False, "model_cell": True}  # folder: relax the cell too


def fmt(value, digits=3):
    return "-" if value is None or not np.isfinite(value) else f"{value:.{digits}f}"


def one_cell(calc, out: Path, relax_cell: bool, fmax: float, model: str):
    result = analyse(calc, alpha_quartz(), relax=True, relax_cell=relax_cell, fmax=fmax, piezo=True)
    write_outputs(result, out, born_dir=out, meta={"model": model, "relax_cell": relax_cell})
    atoms = result["atoms"]
    fd = finite_difference_piezo(calc, atoms, pairs=[(0, 0), (1, 2)])
    c14 = strain_derivative(calc, atoms, calc.get_stress, pairs=[(1, 2)])[(1, 2)][0] / GPa  # d sigma_xx / d gamma_yz
    return result, summary(result), fd, c14


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=str(MODEL), help="the quartz model (default: experiments/models/sio2_md_cpu.pt)")
    p.add_argument("--out", default="quartz_modes", help="output folder (default: ./quartz_modes)")
    p.add_argument("--fmax", type=float, default=1e-4, help="relaxation threshold (eV/A)")
    p.add_argument("--md-summary", default=None,
                   help="summary.json of an experiments/sio2_spectra run to compare with (default: the numbers "
                        "of experiments/README.md)")
    args = p.parse_args(argv)
    out = Path(args.out)
    calc = MACEFieldCalculator(args.model)
    md_ir = THIS_REPO_MD_IR
    if args.md_summary:
        md_ir = [round(pk["wavenumber_cm"]) for pk in json.loads(Path(args.md_summary).read_text())["ir_peaks"][:3]]

    piezo_rows, mode_rows, notes = [], [], []
    for name, relax_cell in CELLS.items():
        result, record, fd, c14 = one_cell(calc, out / name, relax_cell, args.fmax, args.model)
        cell = result["atoms"].cell.cellpar()
        where = f"{name.replace('_', ' ')} (a {cell[0]:.3f}, c {cell[2]:.3f} A)"
        e_cl, e_rel = result["piezo"]["e_clamped_voigt"], result["piezo"]["e_relaxed_voigt"]
        sign = "+" if e_rel[0, 0] * e_rel[0, 3] * c14 > 0 else "-"
        piezo_rows.append([where, f"{fmt(e_cl[0, 0], 4)} / {fmt(e_cl[0, 3], 4)}",
                           f"{fmt(e_rel[0, 0], 4)} / {fmt(e_rel[0, 3], 4)}",
                           f"{fmt(fd[(0, 0)][0], 4)} / {fmt(fd[(1, 2)][0], 4)}", fmt(c14, 1), sign,
                           f"{e_rel[0, 0] / EXPERIMENT['e_11']:.2f}"])
        strongest = ", ".join(f"{m['wavenumber_cm']:.0f} ({m['irrep'] or '-'}, {m['ir_intensity_e2_per_amu']:.2f})"
                              for m in record["strongest_ir"])
        peaks = ", ".join(str(round(pk["wavenumber_cm"])) for pk in record["ir_peaks"][:3])
        raman = ", ".join(f"{m['wavenumber_cm']:.0f} ({m['irrep'] or '-'})" for m in record["strongest_raman"])
        mode_rows.append([where, strongest, peaks, raman,
                          " / ".join(fmt(v) for v in result["eps_inf"].diagonal()[[0, 2]]),
                          " / ".join(fmt(v) for v in result["eps_0"].diagonal()[[0, 2]])])
        notes.append(f"{name}: largest force {result['max_force']:.1e} eV/A, flags {';'.join(result['flags']) or '-'}")
    text = (f"## alpha-quartz at the harmonic level, {args.model}\n\n"
            + markdown_table(["relaxed at", "clamped e_11 / e_14", "relaxed e_11 / e_14",
                              "relaxed, finite differences", "c_14 (GPa)", "sign(e_11 e_14 c_14)",
                              "e_11 / experiment"], piezo_rows)
            + f"\n\nExperiment (C/m^2): e_11 = {EXPERIMENT['e_11']}, e_14 = {EXPERIMENT['e_14']} (with c_14 = "
              f"-{EXPERIMENT['c_14']} GPa in that frame): sign(e_11 e_14 c_14) = +, in any frame and for either "
              "hand. e_11 alone changes sign with the sense of +x; the mirror image (P3_121) has exactly -e.\n\n"
            + markdown_table(["relaxed at", "strongest IR, cm^-1 (irrep, e^2/amu; pairs merged)",
                              "IR peaks, sigma 20 cm^-1", "strongest Raman", "eps_inf perp / par",
                              "eps_0 perp / par"], mode_rows)
            + f"\n\nMD at 300 K, IR peaks: this repository {', '.join(map(str, md_ir))} cm^-1, paper "
              f"{', '.join(map(str, PAPER_MD_IR))} cm^-1.\n\n" + "\n".join(f"- {n}" for n in notes) + "\n")
    (out / "comparison.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
