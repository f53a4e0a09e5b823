"""Gamma-point phonons of one structure from a field-aware model: mode-resolved IR and Raman, the
piezoelectric tensors and a phonopy BORN file.

``mf-phonons STRUCTURE --model M.pt [--relax] [--piezo] [--born DIR] --out DIR``

One pass of exact derivatives of F (:mod:`~mf_lightning.analysis.response_tensors`: forces, P, Z*,
alpha, the strain derivatives and d alpha / dR) and one Hessian (memory-bounded,
:func:`~mf_lightning.analysis.dielectric.model_hessian`) give everything:

* ``modes.csv``: every optical mode's wavenumber (cm^-1; negative: unstable), IR intensity
  (e^2/amu), Raman activity (A^4/amu), irrep (phonopy, where available) and an ``unstable`` column
  (:mod:`~mf_lightning.analysis.modes`); ``modes.<format>``: the IR and Raman sticks broadened by
  Gaussians;
* ``piezo.json`` / ``piezo.csv`` (``--piezo``): clamped- and relaxed-ion piezoelectric stress
  tensors in C/m^2, full and Voigt (:mod:`~mf_lightning.analysis.piezo`); an ensemble adds the
  members' spread of their own tensors (``e_*_voigt_std``, rows ``clamped_std``/``relaxed_std``;
  uncalibrated, as ``mf-predict --piezo``'s);
* ``BORN`` in the ``--born`` folder: eps_inf and the symmetry-independent Z* in phonopy's format
  (:mod:`~mf_lightning.analysis.born`);
* ``summary.json``: eps_inf, eps_ion, eps_0, the strongest IR and Raman modes, the piezoelectric
  constants, ``flags`` (README "What the numbers mean": ``unstable_modes``, ``soft_modes``,
  ``not_at_minimum``, ...), ``warnings`` and the units; with ``--relax`` the relaxed structure in
  ``relaxed.extxyz``.

The harmonic quantities describe a minimum of the model's F: relax first (``--relax``; a structure
whose largest force exceeds 0.05 eV/A is flagged ``not_at_minimum``), and unstable modes make
eps_ion and the relaxed-ion tensor empty, never 0. The head must have learned energies and forces
(the Hessian), Z* (IR, BORN, the piezoelectric response) and alpha (Raman, eps_inf); a head that did
not is refused, or with ``--allow-untrained`` computed with the warning in every output.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np

from mf_lightning.analysis.born import SYMPREC

log = logging.getLogger(__name__)

RELAX_STEPS = 500
MODES_NEED = ("energy", "forces", "becs", "polarisability")


def alpha_quartz(a: float = 4.916, c: float = 5.405, x_si: float = 0.4697, o=(0.4135, 0.2669, 0.1191),
                 enantiomorph: bool = False):
    """The ideal 9-atom alpha-quartz cell in P3_221 (No. 154, ASE's hexagonal setting: a along x, a 2-fold
    axis): the textbook coordinates (Si x = 0.4697 at z = 0; O 0.4135 0.2669 0.1191) shifted by 2/3 c onto
    ASE's Wyckoff positions of No. 154 (Si on 3a: x, 0, 2/3), which gives Si-O 1.605 and 1.614 A (given
    unshifted, ASE makes a 12-atom cell with 1.8 A bonds). ``enantiomorph``: its mirror image
    (inverted through the origin, P3_121), whose piezoelectric tensor is exactly the negative."""
    from ase.spacegroup import crystal

    atoms = crystal(["Si", "O"], basis=[(x_si, 0.0, 2 / 3), (o[0], o[1], o[2] + 2 / 3)], spacegroup=154,
                    cellpar=[a, a, c, 90, 90, 120])
    if enantiomorph:
        atoms.positions = -atoms.positions
        atoms.wrap()
    return atoms


def analyse(calc, atoms, relax: bool = False, relax_cell: bool = False, fmax: float = 0.01,
            relax_steps: int = RELAX_STEPS, piezo: bool = False, raman: bool = True,
            max_memory: Optional[float] = None, symprec: float = SYMPREC) -> Dict[str, Any]:
    """Everything of the module docstring for ``atoms`` (copied; relaxed first with ``relax``) with a
    :class:`~mf_lightning.simulation.calculator.MACEFieldCalculator` (its model, head, field, dtype
    and ``allow_untrained``). ``symprec`` (A): the symmetry tolerance of the irreps and the BORN
    file's independent atoms."""
    from mf_lightning.analysis.dielectric import eps_inf_from_alpha, model_hessian, relax_structure
    from mf_lightning.analysis.modes import gamma_modes, irrep_labels, mode_rows
    from mf_lightning.analysis.piezo import check_piezo_learned, piezo_from_derivatives
    from mf_lightning.analysis.response_tensors import enthalpy_derivatives
    from mf_lightning.model.validity import response_flags

    atoms = atoms.copy()
    needed = list(MODES_NEED) + (["stress"] if relax and relax_cell else [])
    calc.require_learned(needed, "the phonon modes (the Hessian; Z* for IR and BORN, alpha for Raman and eps_inf)")
    warnings = list(calc.untrained_warnings)
    if piezo:
        warnings += check_piezo_learned(calc.model, calc.head, relaxed=True, allow_untrained=calc.allow_untrained)
    out: Dict[str, Any] = {"formula": atoms.get_chemical_formula(), "n_atoms": len(atoms), "head": calc.head}
    if relax:
        out["relaxed"] = relax_structure(atoms, calc, fmax=fmax, steps=relax_steps, relax_cell=relax_cell)
        out["structure"] = atoms.copy()
    field = calc.field_now()
    d = enthalpy_derivatives(calc.model, atoms, field=field, head=calc.head, dtype=calc.torch_dtype,
                             internal_strain=piezo, raman=raman)
    H = model_hessian(calc.model, atoms, field=field, head=calc.head, dtype=calc.torch_dtype, max_memory=max_memory,
                      allow_untrained=calc.allow_untrained, log_cost=True)
    masses = atoms.get_masses()
    modes = gamma_modes(H, masses, d["becs"], d["volume"], dalpha_dR=d.get("dalpha_dR"))
    eps_inf = eps_inf_from_alpha(d["polarisability"])
    out.update(rows=mode_rows(modes, irrep_labels(atoms, H, modes["wavenumbers_cm"], symprec=symprec)),
               eps_inf=eps_inf, eps_ion=modes["eps_ion"], eps_0=eps_inf + modes["eps_ion"],
               becs=d["becs"], polarisability=d["polarisability"], polarisation=d["polarisation"],
               max_force=float(np.abs(d["forces"]).max()) if len(atoms) else 0.0, volume=d["volume"],
               unstable_modes_cm=modes["unstable_modes_cm"], soft_polar_modes_cm=modes["soft_polar_modes_cm"],
               atoms=atoms, warnings=warnings, field_V_per_A=field, symprec=symprec)
    if piezo and len(getattr(calc.model, "members", None) or []) > 1:
        # an ensemble: the same mean-F tensors, and the members' spread of their own (N more Hessians)
        from mf_lightning.analysis.piezo import piezo_of

        out["piezo"] = piezo_of(calc.model, atoms, field=field, head=calc.head, dtype=calc.torch_dtype,
                                max_memory=max_memory, allow_untrained=calc.allow_untrained)
    elif piezo:
        out["piezo"] = piezo_from_derivatives(d, H, masses)
    out["flags"] = response_flags(atoms.get_atomic_numbers(), becs=d["becs"], polarisability=d["polarisability"],
                                  training_elements=getattr(calc.model, "training_elements", None),
                                  unstable_modes=modes["unstable_modes_cm"],
                                  soft_modes=modes["soft_polar_modes_cm"], relaxed=out.get("relaxed"),
                                  max_force=out["max_force"], untrained=bool(warnings))
    return out


def _piezo_csv(piezo: Dict[str, Any], path: Path) -> Path:
    import csv

    from mf_lightning.analysis.piezo import VOIGT_LABELS
    from mf_lightning.files import atomic_open

    with atomic_open(path, "w") as fh:
        w = csv.writer(fh)
        w.writerow(["tensor", "i"] + [f"e_{v}_C_per_m2" for v in VOIGT_LABELS])
        for name in ("e_clamped", "e_relaxed", "e_ion", "e_clamped_improper", "e_clamped_std", "e_relaxed_std"):
            key = name.replace("_std", "_voigt_std") if name.endswith("_std") else name + "_voigt"
            if key in piezo:  # _std: an ensemble's spread over its members' own tensors (uncalibrated)
                for i, row in enumerate(piezo[key]):
                    w.writerow([name[2:], "xyz"[i]] + ["" if not np.isfinite(v) else f"{v:.6g}" for v in row])
    return path


def summary(result: Dict[str, Any], n_strongest: int = 3, sigma_cm: Optional[float] = None) -> Dict[str, Any]:
    """The JSON-able record of :func:`analyse` written as ``summary.json``: the strongest IR and
    Raman modes (degenerate ones merged) and the peaks of the spectra broadened by ``sigma_cm``."""
    from mf_lightning.analysis import modes, piezo

    rows = result["rows"]
    out = {k: result[k] for k in ("formula", "n_atoms", "head", "eps_inf", "eps_ion", "eps_0", "polarisation",
                                  "max_force", "volume", "unstable_modes_cm", "soft_polar_modes_cm", "flags",
                                  "field_V_per_A", "symprec")}
    out["warnings"] = list(result["warnings"])
    out["relaxed"] = result.get("relaxed")
    out["strongest_ir"] = modes.strongest(rows, "ir_intensity_e2_per_amu", n_strongest)
    out["strongest_raman"] = modes.strongest(rows, "raman_activity_A4_per_amu", n_strongest)
    sigma_cm = sigma_cm or modes.SIGMA_CM
    out["spectrum_sigma_cm"] = sigma_cm
    out["ir_peaks"] = modes.spectrum_peaks(rows, "ir_intensity_e2_per_amu", sigma_cm)
    out["raman_peaks"] = modes.spectrum_peaks(rows, "raman_activity_A4_per_amu", sigma_cm)
    if "piezo" in result:
        out["piezo"] = {k: v for k, v in result["piezo"].items() if k.endswith("_voigt")}
    out["units"] = {**modes.UNITS, **piezo.UNITS, "eps_inf": "relative", "eps_ion": "relative",
                    "polarisability": "e/(V A)", "field_V_per_A": "V/A"}
    return out


def write_outputs(result: Dict[str, Any], out_dir, fmt: str = "png", dpi: Optional[float] = None,
                  born_dir=None, sigma_cm: Optional[float] = None, meta: Optional[Dict[str, Any]] = None
                  ) -> Dict[str, Path]:
    """The files of the module docstring; returns {what: path}. ``meta`` (model, options) goes into
    summary.json and piezo.json."""
    import matplotlib.pyplot as plt

    from mf_lightning.analysis import modes
    from mf_lightning.analysis.born import SYMMETRY_WARN, write_born
    from mf_lightning.files import atomic_write_text, dumps_json
    from mf_lightning.train.plots import FIGURE_DPI, save_figure

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    meta = dict(meta or {})
    paths = {"modes": modes.write_mode_table(result["rows"], out_dir / "modes.csv")}
    title = f"{result['formula']}: Gamma-point modes" + (" (unstable modes present)" if result["unstable_modes_cm"]
                                                         else "")
    fig = modes.mode_figure(result["rows"], sigma_cm=sigma_cm or modes.SIGMA_CM, title=title)
    try:
        paths["figure"] = save_figure(fig, out_dir / "modes", fmt, FIGURE_DPI if dpi is None else dpi)
    finally:
        plt.close(fig)
    record = summary(result, sigma_cm=sigma_cm)
    if "piezo" in result:
        piezo = {k: v for k, v in result["piezo"].items()}
        piezo.update(flags=result["flags"], warnings=result["warnings"], units=record["units"], **meta)
        atomic_write_text(out_dir / "piezo.json", dumps_json(piezo))
        paths["piezo"] = out_dir / "piezo.json"
        paths["piezo_csv"] = _piezo_csv(result["piezo"], out_dir / "piezo.csv")
    if born_dir is not None:
        born = write_born(Path(born_dir) / "BORN", result["atoms"], result["becs"], result["eps_inf"],
                          symprec=result["symprec"])
        if born["max_change"] > SYMMETRY_WARN:
            record["warnings"].append(f"BORN: symmetrising Z* changed a component by {born['max_change']:.2g} e: "
                                      f"the structure is not symmetric to symprec {result['symprec']:g} A, or the "
                                      "model breaks its symmetry")
            log.warning("%s", record["warnings"][-1])
        record["born"] = {"path": str(born["path"]), "independent_atoms": (born["independent"] + 1).tolist(),
                          "symmetrisation_max_change_e": born["max_change"]}
        paths["born"] = born["path"]
    if "structure" in result:
        import ase.io

        ase.io.write(out_dir / "relaxed.extxyz", result["structure"], format="extxyz")
        paths["relaxed"] = out_dir / "relaxed.extxyz"
    atomic_write_text(out_dir / "summary.json", dumps_json({**record, **meta}))
    paths["summary"] = out_dir / "summary.json"
    return paths
