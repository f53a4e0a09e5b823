"""Mode-resolved harmonic IR and Raman spectra at the Gamma point, from one model's exact derivatives.

For a structure at a minimum of F (relax first), the modes are those of eps_ion
(:func:`~mf_lightning.analysis.dielectric.optical_modes`: the mass-weighted Hessian with the three
translations projected out, 3N-3 modes, eigenvectors e_m orthonormal). Along normal coordinate
Q_m (sqrt(amu) A) the atoms move by e_m,k / sqrt(M_k), so:

* IR intensity I_m = sum_i |Zm_i|^2 with the mode charges Zm_i = sum_ka Z*_{k,ia} e_m,ka / sqrt(M_k)
  (e^2/amu; the oscillator strength of eps_ion is Zm_i Zm_j / (eps0 Omega omega_m^2));
* Raman activity S_m = 45 a_m^2 + 7 g_m^2 (A^4/amu, the usual unit), the orientation-averaged
  invariant of the polarisability derivative alpha'_m = d alpha_cell / d Q_m: a_m = tr(alpha'_m)/3,
  g_m^2 = [(a'xx - a'yy)^2 + (a'yy - a'zz)^2 + (a'zz - a'xx)^2 + 6 (a'xy^2 + a'yz^2 + a'xz^2)] / 2, with
  the cell's polarisability as a volume, alpha_cell = Omega alpha / (4 pi eps0) (A^3). alpha' is exact:
  d alpha / dR by one more backward pass per component of alpha through the Z*/alpha graph
  (:func:`~mf_lightning.analysis.response_tensors.enthalpy_derivatives` with ``raman=True``), then
  projected on every mode; no finite differences.

Wavenumbers are in cm^-1, negative for unstable (imaginary) modes, which are flagged (``unstable``
column): a spectrum of a structure that is not at a minimum of F describes nothing measurable.
Symmetry labels (Mulliken irreps at Gamma) come from phonopy where it is installed (the
``phonons`` extra) and the cell is primitive; otherwise the column is empty. The spectra drawn are
the sticks broadened by Gaussians of ``sigma`` (standard deviation, 20 cm^-1 as the MD spectra of
:mod:`~mf_lightning.analysis.spectra`).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

from mf_lightning.analysis.dielectric import UNSTABLE_TOL, ionic_dielectric
from mf_lightning.units import EPS0_E_PER_V_A

SIGMA_CM = 20.0
# e A^2/V -> A^3: the cell's polarisability as a volume (Gaussian-units polarisability)
POLARISABILITY_VOLUME = 1.0 / (4 * math.pi * EPS0_E_PER_V_A)
TABLE_COLUMNS = ("mode", "wavenumber_cm", "ir_intensity_e2_per_amu", "raman_activity_A4_per_amu", "irrep",
                 "unstable")
UNITS = {"wavenumber_cm": "cm^-1 (negative: imaginary, unstable)", "ir_intensity_e2_per_amu": "e^2/amu",
         "raman_activity_A4_per_amu": "A^4/amu (45 a^2 + 7 g^2 of d alpha_cell/dQ, alpha_cell in A^3)",
         "irrep": "Mulliken label at Gamma (phonopy), empty where not available"}
THZ_TO_CM = 33.35641  # phonopy's frequencies (THz) -> cm^-1


def raman_activity(dalpha_dQ: np.ndarray) -> np.ndarray:
    """45 a^2 + 7 g^2 of each (3, 3) derivative in ``dalpha_dQ`` (..., 3, 3), in its units squared."""
    t = np.asarray(dalpha_dQ, dtype=float)
    t = 0.5 * (t + np.swapaxes(t, -1, -2))
    xx, yy, zz = t[..., 0, 0], t[..., 1, 1], t[..., 2, 2]
    a = (xx + yy + zz) / 3.0
    g2 = 0.5 * ((xx - yy) ** 2 + (yy - zz) ** 2 + (zz - xx) ** 2
                + 6.0 * (t[..., 0, 1] ** 2 + t[..., 1, 2] ** 2 + t[..., 0, 2] ** 2))
    return 45.0 * a ** 2 + 7.0 * g2


def gamma_modes(hessian: np.ndarray, masses: np.ndarray, becs: np.ndarray, volume: float,
                dalpha_dR: Optional[np.ndarray] = None, unstable_tol: float = UNSTABLE_TOL) -> Dict[str, Any]:
    """The modes of ``hessian`` (eV/A^2) with their IR intensities and (given ``dalpha_dR``, e/(V A^2),
    (3, 3, N, 3)) Raman activities; also eps_ion and the unstable / soft polar modes, as
    :func:`~mf_lightning.analysis.dielectric.ionic_dielectric` gives them."""
    masses = np.asarray(masses, dtype=float)
    ion = ionic_dielectric(hessian, becs, masses, volume, unstable_tol=unstable_tol)
    out = {"wavenumbers_cm": ion["wavenumbers_cm"], "omega2": ion["omega2"],
           "ir_intensity": (ion["mode_charges"] ** 2).sum(1), "mode_charges": ion["mode_charges"],
           "unstable": ion["omega2"] < -unstable_tol, "eps_ion": ion["eps_ion"],
           "unstable_modes_cm": ion["unstable_modes_cm"], "soft_polar_modes_cm": ion["soft_polar_modes_cm"],
           "modes": ion["modes"]}
    if dalpha_dR is not None:
        displacement = ion["modes"] / np.sqrt(masses)[None, :, None]
        dalpha_dQ = np.einsum("ijka,mka->mij", np.asarray(dalpha_dR, dtype=float), displacement)
        dalpha_dQ = dalpha_dQ * float(volume) * POLARISABILITY_VOLUME  # A^3 per (sqrt(amu) A)
        out["dalpha_dQ"] = dalpha_dQ
        out["raman_activity"] = raman_activity(dalpha_dQ)
    return out


def irrep_labels(atoms, hessian: np.ndarray, wavenumbers_cm: np.ndarray, symprec: float = 1e-3,
                 tolerance_cm: float = 0.5) -> List[str]:
    """Mulliken labels of the optical modes (in the order of ``wavenumbers_cm``, ascending as
    :func:`gamma_modes` gives them) from phonopy's irreps at Gamma of the same Hessian; empty
    strings where phonopy is missing, the cell is not primitive, or its modes cannot be matched
    to ours (frequencies within ``tolerance_cm``)."""
    wavenumbers_cm = np.asarray(wavenumbers_cm, dtype=float)
    empty = [""] * len(wavenumbers_cm)
    if not len(wavenumbers_cm):  # one atom per cell: no optical mode to label
        return empty
    try:
        from phonopy import Phonopy
        from phonopy.structure.atoms import PhonopyAtoms
    except ImportError:
        return empty
    n = len(atoms)
    try:
        ph = Phonopy(PhonopyAtoms(symbols=atoms.get_chemical_symbols(), cell=atoms.cell.array,
                                  scaled_positions=atoms.get_scaled_positions(), masses=atoms.get_masses()),
                     supercell_matrix=np.eye(3, dtype=int), symprec=symprec)
        ph.force_constants = np.asarray(hessian, dtype=float).reshape(n, 3, n, 3).transpose(0, 2, 1, 3).copy()
        run = getattr(ph, "run_irreps", None) or ph.set_irreps
        irreps = run([0, 0, 0], degeneracy_tolerance=tolerance_cm / THZ_TO_CM / 4)
    except (RuntimeError, ValueError, AssertionError):  # e.g. phonopy's "Non-primitive cell is used"
        return empty
    names = getattr(irreps, "_ir_labels", None)
    if not names:
        return empty
    band_label = {}
    for name, bands in zip(names, irreps.band_indices):
        for b in bands:
            band_label[b] = name or ""
    freqs = np.asarray(irreps.frequencies, dtype=float) * THZ_TO_CM
    optical = np.sort(np.argsort(np.abs(freqs))[3:])  # without the three acoustic modes, in phonopy's order
    if len(optical) != len(wavenumbers_cm) or np.abs(freqs[optical] - wavenumbers_cm).max() > tolerance_cm:
        return empty
    return [band_label.get(int(b), "") for b in optical]


def broadened(wavenumbers_cm: np.ndarray, weights: np.ndarray, grid: np.ndarray, sigma_cm: float = SIGMA_CM):
    """Sticks at ``wavenumbers_cm`` with ``weights`` as unit-area Gaussians of ``sigma_cm`` on ``grid``."""
    x = (np.asarray(grid, dtype=float)[:, None] - np.asarray(wavenumbers_cm, dtype=float)[None, :]) / sigma_cm
    g = np.exp(-0.5 * x ** 2) / (sigma_cm * math.sqrt(2 * math.pi))
    return g @ np.nan_to_num(np.asarray(weights, dtype=float))


def mode_rows(result: Dict[str, Any], labels: Optional[List[str]] = None) -> List[Dict[str, Any]]:
    """One row per optical mode (:data:`TABLE_COLUMNS`)."""
    n = len(result["wavenumbers_cm"])
    labels = labels or [""] * n
    raman = result.get("raman_activity", np.full(n, np.nan))
    return [{"mode": m + 1, "wavenumber_cm": float(result["wavenumbers_cm"][m]),
             "ir_intensity_e2_per_amu": float(result["ir_intensity"][m]),
             "raman_activity_A4_per_amu": float(raman[m]), "irrep": labels[m],
             "unstable": bool(result["unstable"][m])} for m in range(n)]


def write_mode_table(rows: List[Dict[str, Any]], path) -> Path:
    """The mode table as CSV (NaN Raman activities, where alpha was not differentiated, left empty)."""
    from mf_lightning.files import atomic_open

    path = Path(path)
    with atomic_open(path, "w") as fh:
        w = csv.DictWriter(fh, fieldnames=list(TABLE_COLUMNS))
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if isinstance(v, float) and not math.isfinite(v) else
                            f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    return path


def multiplets(rows: List[Dict[str, Any]], tolerance_cm: float = 0.5) -> List[Dict[str, Any]]:
    """Degenerate modes (wavenumbers within ``tolerance_cm`` of the previous one) as one entry:
    their mean wavenumber, summed intensities and activities, irrep and mode numbers."""
    groups: List[List[Dict[str, Any]]] = []
    for r in rows:
        if groups and abs(r["wavenumber_cm"] - groups[-1][-1]["wavenumber_cm"]) <= tolerance_cm:
            groups[-1].append(r)
        else:
            groups.append([r])
    return [{"modes": [r["mode"] for r in g], "wavenumber_cm": float(np.mean([r["wavenumber_cm"] for r in g])),
             "ir_intensity_e2_per_amu": float(sum(r["ir_intensity_e2_per_amu"] for r in g)),
             "raman_activity_A4_per_amu": float(sum(r["raman_activity_A4_per_amu"] for r in g)),
             "irrep": g[0]["irrep"], "unstable": any(r["unstable"] for r in g)} for g in groups]


def strongest(rows: List[Dict[str, Any]], key: str = "ir_intensity_e2_per_amu", n: int = 2) -> List[Dict[str, Any]]:
    """The ``n`` stable :func:`multiplets` with the largest ``key``, strongest first."""
    stable = [r for r in multiplets(rows) if not r["unstable"] and math.isfinite(r[key])]
    return sorted(stable, key=lambda r: -r[key])[:n]


def _spectrum_grid(rows: List[Dict[str, Any]], sigma_cm: float, max_cm: Optional[float] = None) -> np.ndarray:
    wn = [r["wavenumber_cm"] for r in rows]
    top = max_cm or (max(max(wn, default=0.0), 100.0) * 1.1 + 3 * sigma_cm)
    return np.linspace(0.0, top, 2000)


def spectrum(rows: List[Dict[str, Any]], key: str, sigma_cm: float = SIGMA_CM, grid: Optional[np.ndarray] = None):
    """(grid, the stable modes' ``key`` as Gaussians of ``sigma_cm``): the harmonic IR or Raman spectrum."""
    grid = _spectrum_grid(rows, sigma_cm) if grid is None else grid
    stable = [r for r in rows if not r["unstable"]]
    return grid, broadened([r["wavenumber_cm"] for r in stable], [r[key] for r in stable], grid, sigma_cm)


def spectrum_peaks(rows: List[Dict[str, Any]], key: str = "ir_intensity_e2_per_amu", sigma_cm: float = SIGMA_CM,
                   n: int = 5) -> List[Dict[str, float]]:
    """Peaks of :func:`spectrum` (strongest first; :func:`mf_lightning.analysis.spectra.find_peaks`):
    what the MD spectra's peak lists compare with, degenerate and nearby modes merged as a measured
    band merges them."""
    from mf_lightning.analysis.spectra import find_peaks

    grid, y = spectrum(rows, key, sigma_cm)
    return find_peaks(grid, y, n_max=n)


def mode_figure(rows: List[Dict[str, Any]], sigma_cm: float = SIGMA_CM, title: str = "",
                max_cm: Optional[float] = None):
    """IR and Raman panels: the stable modes' sticks (normalised to the strongest) and their
    Gaussian broadening (normalised to its peak); unstable modes are left out and counted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = _spectrum_grid(rows, sigma_cm, max_cm)
    stable = [r for r in rows if not r["unstable"]]
    wn = np.array([r["wavenumber_cm"] for r in stable])
    fig, axes = plt.subplots(2, 1, figsize=(7, 5.5), sharex=True)
    for ax, key, name in zip(axes, ("ir_intensity_e2_per_amu", "raman_activity_A4_per_amu"), ("IR", "Raman")):
        y = np.nan_to_num(np.array([r[key] for r in stable]))
        _, smooth = spectrum(rows, key, sigma_cm, grid)
        ax.plot(grid, smooth / (smooth.max() if smooth.size and smooth.max() > 0 else 1.0), "k", lw=1.0,
                label=f"Gaussian sigma {sigma_cm:g} cm$^{{-1}}$")
        ax.vlines(wn, 0, y / (y.max() if y.size and y.max() > 0 else 1.0), color="C0", lw=1.2, label="modes")
        if len(stable) < len(rows):
            ax.text(0.01, 0.92, f"{len(rows) - len(stable)} unstable mode(s) left out", transform=ax.transAxes,
                    fontsize=8, color="C3")
        if not np.any(y):
            ax.text(0.5, 0.5, f"no {name} activity", ha="center", transform=ax.transAxes)
        unit = "e$^2$/amu" if name == "IR" else "$\\AA^4$/amu"
        ax.set(ylabel=f"{name} (normalised; sticks in {unit})", ylim=(0, 1.1))
        ax.legend(fontsize=7, loc="upper right")
    axes[1].set(xlabel="wavenumber (cm$^{-1}$)", xlim=(0, grid[-1]))
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig
