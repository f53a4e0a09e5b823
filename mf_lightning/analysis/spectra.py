"""IR and Raman spectra and the dielectric function from a finite-field MD trajectory.

``mf-spectra TRAJ --out DIR`` (TRAJ as written by :mod:`mf_lightning.simulation.md`).

* IR: autocorrelation of the cell dipole current dM/dt (M = Omega P, e A; P is the model's own,
  smooth and never folded), summed over Cartesian components; Raman: autocorrelation of the
  fluctuation of alpha (all components; isotropic trace/3 and anisotropic traceless parts).
* Warnings (``summary.json`` and stderr) when the numbers cannot be trusted: resolution coarser
  than the broadening, a trajectory shorter than 10 ps, a driven run (a field changing in time:
  the fluctuation results do not apply and eps_0 is NaN), negative IR or loss-function values.
* Each autocorrelation (unbiased estimator, FFT) is multiplied by the decaying half of a Hann
  window (1 at lag 0, 0 at the longest lag), cosine-transformed, and broadened with a Gaussian of
  ``sigma`` cm^-1 (default 20). Frequencies are wavenumbers, cm^-1; the resolution is
  1 / (c T_traj).
* eps_inf = I + <alpha>/eps0; eps_0 = eps_inf + Omega Cov[P] / (eps0 kB T) (tensor; the
  diagonal is SPEC section 6's "per direction"), with <Omega> and the thermostat's T.
* eps(omega) = eps_inf + chi(omega) with the classical fluctuation-dissipation theorem for each
  diagonal direction, chi(omega) = Omega/(eps0 kB T) [C(0) + i omega int_0^inf C(t) e^{i omega t} dt],
  C(t) = <dP(0) dP(t)> (windowed as above): chi(0) is the static ionic part and chi(inf) = 0.
  The energy-loss function is -Im[1/eps(omega)].
* Peaks: local maxima of the broadened spectra with a prominence of at least 5 % of the largest,
  strongest first.

Outputs: ``spectra.csv`` (wavenumber, IR, Raman, Raman iso/aniso, Re/Im eps and loss per
direction), ``summary.json`` (eps_inf, eps_0 tensors, parallel/perpendicular to ``axis``, peak
lists, resolution, the field protocol read from the logged field) and ``spectra.<format>`` (png,
pdf or svg: IR, Raman, Re eps, Im eps and loss; for a driven run IR and Raman only, the drive
frequency 1/T dashed on the IR panel; the title names the field: E0 and direction, or zero field).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
from ase import units

from mf_lightning.errors import ArgumentError, InputError
from mf_lightning.files import dumps_json
from mf_lightning.units import EPS0_E_PER_V_A

C_CM_PER_FS = units._c * 100 * 1e-15  # speed of light, cm/fs
AXIS_INDEX = {"x": 0, "y": 1, "z": 2}
MV_PER_CM_PER_V_PER_A = 100.0


# ---------------------------------------------------------------------- building blocks
def autocorrelation(x: np.ndarray, subtract_mean: bool = True) -> np.ndarray:
    """Unbiased autocorrelation of a (n,) or (n, d) series along time, per component: (n, d)."""
    x = np.asarray(x, dtype=float)
    if x.ndim == 1:
        x = x[:, None]
    if subtract_mean:
        x = x - x.mean(0)
    n = len(x)
    size = 1 << (2 * n - 1).bit_length()
    f = np.fft.rfft(x, n=size, axis=0)
    acf = np.fft.irfft(f * np.conj(f), n=size, axis=0)[:n]
    return acf / (n - np.arange(n))[:, None]


def hann_decay(n: int) -> np.ndarray:
    """The decaying half of a Hann window: 1 at lag 0, 0 at lag n (exclusive)."""
    return np.cos(0.5 * np.pi * np.arange(n) / n) ** 2


def gaussian_broaden(y: np.ndarray, d_cm: float, sigma_cm: float, parity: int = 1) -> np.ndarray:
    """Convolve (along axis 0, a grid starting at 0 cm^-1 with spacing ``d_cm``) with a unit-area
    Gaussian of ``sigma_cm``. The function is continued to negative wavenumbers as even
    (``parity=1``: spectra, Re eps) or odd (``parity=-1``: Im eps), so the lowest frequencies are
    not pulled towards zero by the edge. FFT convolution: O(N log N), so an 800 ps trajectory's
    grid (millions of points, hundreds of kernel points) takes well under a second."""
    from scipy.signal import fftconvolve

    if sigma_cm <= 0:
        return y
    y = np.asarray(y)
    squeeze = y.ndim == 1
    y2 = y[:, None] if squeeze else y.reshape(len(y), -1)
    half = min(int(math.ceil(4 * sigma_cm / d_cm)), len(y2) - 1)
    k = np.exp(-0.5 * (np.arange(-half, half + 1) * d_cm / sigma_cm) ** 2)
    k /= k.sum()
    n = len(y2)
    mirror = parity * y2[1:half + 1][::-1]
    tail = np.repeat(y2[-1:], half, axis=0)  # beyond the grid: held at the last value
    ext = np.concatenate([mirror, y2, tail])
    out = fftconvolve(ext, k[:, None], mode="same", axes=0)[len(mirror):len(mirror) + n]
    return out[:, 0] if squeeze else out.reshape(y.shape)


def _one_sided(values: np.ndarray, dt_fs: float, pad: int):
    """int_0^T f(t) e^{i omega t} dt (trapezoid) on an FFT grid: (wavenumbers cm^-1, (m, d))."""
    n = len(values)
    size = pad * (1 << (n - 1).bit_length())
    # e^{+i omega t} is the inverse FFT's sign; ifft divides by size
    integral = np.fft.ifft(values, n=size, axis=0) * size * dt_fs - 0.5 * dt_fs * values[0]
    m = size // 2 + 1
    return np.arange(m) / (size * dt_fs) / C_CM_PER_FS, integral[:m]


def one_sided_transform(acf: np.ndarray, dt_fs: float, pad: int = 4):
    """int_0^T w(t) C(t) e^{i omega t} dt with the decaying Hann window w (per column)."""
    acf = np.asarray(acf, dtype=float)
    if acf.ndim == 1:
        acf = acf[:, None]
    return _one_sided(acf * hann_decay(len(acf))[:, None], dt_fs, pad)


def power_spectrum(acf: np.ndarray, dt_fs: float, sigma_cm: float = 20.0, pad: int = 4):
    """Cosine transform 2 Re int_0^T w C cos(omega t) dt, summed over components, broadened."""
    wn, integral = one_sided_transform(acf, dt_fs, pad)
    spec = 2 * integral.real.sum(axis=1)
    return wn, gaussian_broaden(spec, wn[1] - wn[0], sigma_cm)


def find_peaks(wn: np.ndarray, spectrum: np.ndarray, min_cm: float = 50.0, max_cm: Optional[float] = None,
               prominence: float = 0.05, n_max: int = 10) -> List[Dict[str, float]]:
    from scipy.signal import find_peaks as _find

    mask = (wn >= min_cm) & (wn <= (max_cm if max_cm is not None else wn[-1]))
    w, s = wn[mask], spectrum[mask]
    if s.size == 0 or np.max(s) <= 0:
        return []
    idx, props = _find(s, prominence=prominence * np.max(s))
    order = np.argsort(-s[idx])[:n_max]
    return [{"wavenumber_cm": float(w[idx[i]]), "relative_intensity": float(s[idx[i]] / np.max(s))} for i in order]


# ---------------------------------------------------------------------- dielectric constants
def eps_inf_from_alpha_series(alpha: np.ndarray) -> np.ndarray:
    """I + <alpha>/eps0 from (n, 3, 3) or (n, 9) alpha (e/(V A))."""
    from mf_lightning.analysis.dielectric import eps_inf_from_alpha

    return eps_inf_from_alpha(np.asarray(alpha, dtype=float).reshape(-1, 3, 3).mean(0))


def eps_ionic_from_fluctuations(p: np.ndarray, volume: float, temperature_K: float) -> np.ndarray:
    """Omega Cov[P] / (eps0 kB T) (3, 3), dimensionless: P (n, 3) in e/A^2 on one branch, Omega A^3."""
    p = np.asarray(p, dtype=float)
    cov = np.cov(p.T, bias=False)
    return volume * cov / (EPS0_E_PER_V_A * units.kB * temperature_K)


def dielectric_function(p: np.ndarray, dt_fs: float, volume: float, temperature_K: float,
                        eps_inf: np.ndarray, sigma_cm: float = 20.0, pad: int = 4):
    """eps(omega) per diagonal direction (wavenumbers, complex (m, 3)), classical FDT."""
    acf = autocorrelation(p)  # (n, 3)
    # C(0) + i omega int C e^{i omega t} = -int dC/dt e^{i omega t} (by parts): the same quantity,
    # but its discrete form keeps chi(omega) -> 0 far above the lines (the first form leaves an
    # O((omega dt)^2) remainder of C(0) there) and chi(0) = C(0) exactly in the continuum limit.
    decay = np.gradient(acf * hann_decay(len(acf))[:, None], dt_fs, axis=0)
    wn, integral = _one_sided(decay, dt_fs, pad)
    chi = -volume / (EPS0_E_PER_V_A * units.kB * temperature_K) * integral
    d = wn[1] - wn[0]
    chi = gaussian_broaden(chi.real, d, sigma_cm) + 1j * gaussian_broaden(chi.imag, d, sigma_cm, parity=-1)
    return wn, np.diag(eps_inf)[None, :] + chi


def par_perp(tensor: np.ndarray, axis: int) -> Dict[str, float]:
    d = np.diag(np.asarray(tensor))
    others = [i for i in range(3) if i != axis]
    return {"parallel": float(d[axis]), "perpendicular": float(np.mean(d[others]))}


# ---------------------------------------------------------------------- analysis of a trajectory
def analyse(times_fs: np.ndarray, p: np.ndarray, volume: np.ndarray, temperature_K: float,
            alpha: Optional[np.ndarray] = None, alpha_times_fs: Optional[np.ndarray] = None,
            sigma_cm: float = 20.0, axis: int = 2, max_cm: float = 2000.0,
            field: Optional[np.ndarray] = None) -> Dict[str, Any]:
    """Spectra and dielectric constants of one trajectory. ``field`` (n, 3; V/A), if given, tells
    a driven run (a field changing in time) from an equilibrium one. ``result["warnings"]`` lists
    what makes the numbers unreliable: resolution coarser than the broadening, a trajectory too
    short, a driven run (the fluctuation-dissipation results eps_0, eps(omega) and the loss function
    do not apply: eps_0 is then NaN), negative IR intensities or a negative loss function."""
    times_fs = np.asarray(times_fs, dtype=float)
    dts = np.diff(times_fs)
    if len(times_fs) < 8 or not np.allclose(dts, dts[0], rtol=1e-6):
        raise InputError(f"spectra need at least 8 P samples evenly spaced in time (got {len(times_fs)}): "
                         "give a trajectory written by mf-md")
    dt = float(dts[0])
    omega_mean = float(np.mean(volume))
    dipole = np.asarray(p, dtype=float) * np.asarray(volume, dtype=float).reshape(-1, 1)  # e A
    current = np.gradient(dipole, dt, axis=0)
    wn, ir = power_spectrum(autocorrelation(current, subtract_mean=False), dt, sigma_cm)
    out: Dict[str, Any] = {"dt_fs": dt, "duration_fs": float(times_fs[-1] - times_fs[0]), "n_samples": len(times_fs),
                           "resolution_cm": float(1.0 / ((times_fs[-1] - times_fs[0]) * C_CM_PER_FS)),
                           "temperature_K": temperature_K, "volume_A3": omega_mean, "sigma_cm": sigma_cm}
    keep = wn <= max_cm
    out["wavenumber"], out["ir"] = wn[keep], ir[keep]
    out["ir_peaks"] = find_peaks(wn[keep], ir[keep])
    eps_ion = eps_ionic_from_fluctuations(p, omega_mean, temperature_K)
    out["eps_ionic_fluct"] = eps_ion
    if alpha is not None and len(alpha) >= 8:
        alpha = np.asarray(alpha, dtype=float).reshape(-1, 3, 3)
        at = np.asarray(alpha_times_fs, dtype=float)
        adt = np.diff(at)
        if not np.allclose(adt, adt[0], rtol=1e-6):
            raise InputError("alpha samples must be evenly spaced in time")
        eps_inf = eps_inf_from_alpha_series(alpha)
        trace = np.trace(alpha, axis1=1, axis2=2) / 3
        aniso = alpha - trace[:, None, None] * np.eye(3)
        awn, raman = power_spectrum(autocorrelation(alpha.reshape(-1, 9)), float(adt[0]), sigma_cm)
        _, iso = power_spectrum(autocorrelation(trace), float(adt[0]), sigma_cm)
        _, ani = power_spectrum(autocorrelation(aniso.reshape(-1, 9)), float(adt[0]), sigma_cm)
        out["raman"] = np.interp(out["wavenumber"], awn, raman, right=np.nan)
        out["raman_isotropic"] = np.interp(out["wavenumber"], awn, iso, right=np.nan)
        out["raman_anisotropic"] = np.interp(out["wavenumber"], awn, ani, right=np.nan)
        out["raman_peaks"] = find_peaks(out["wavenumber"], np.nan_to_num(out["raman"]))
    else:
        eps_inf = np.eye(3)
        out["note"] = "no alpha in the trajectory (log it with --response-every): eps_inf taken as 1"
    warnings = []
    out["field_protocol"] = field_protocol(times_fs, field)
    driven = out["driven"] = out["field_protocol"]["kind"] == "driven"
    if driven:
        warnings.append("driven run (the field changes in time): eps_0 from fluctuations, eps(omega) and the "
                        "loss function assume equilibrium and do not apply; eps_0 is reported as NaN")
        eps_ion = np.full((3, 3), np.nan)
    out["eps_inf"], out["eps_0"] = eps_inf, eps_inf + eps_ion
    out["eps_inf_par_perp"], out["eps_0_par_perp"] = par_perp(eps_inf, axis), par_perp(eps_inf + eps_ion, axis)
    ewn, eps = dielectric_function(p, dt, omega_mean, temperature_K, eps_inf, sigma_cm)
    out["eps_omega"] = np.stack([np.interp(out["wavenumber"], ewn, eps[:, j].real) +
                                 1j * np.interp(out["wavenumber"], ewn, eps[:, j].imag) for j in range(3)], axis=1)
    length = describe_length(out["duration_fs"])
    if sigma_cm > 0 and out["resolution_cm"] > sigma_cm:
        warnings.append(f"the trajectory ({length}) resolves only {out['resolution_cm']:.0f} cm^-1, coarser than "
                        f"the broadening sigma {sigma_cm:g} cm^-1: run at least "
                        f"{describe_length(1.0 / (sigma_cm * C_CM_PER_FS))} for resolved lines")
    if out["duration_fs"] < MIN_DURATION_FS:
        warnings.append(f"the trajectory is short ({length}, {len(times_fs)} samples): spectra and fluctuation "
                        f"averages need tens of ps (the paper: 200 ps)")
    ir_max = float(np.max(np.abs(out["ir"]))) if out["ir"].size else 0.0
    if ir_max > 0 and float(np.min(out["ir"])) < -NEGATIVE_TOL * ir_max:
        warnings.append(f"negative IR intensities (down to {np.min(out['ir']) / ir_max:.0%} of the maximum): "
                        f"windowing artefacts of a short or non-stationary trajectory")
    loss = -np.imag(1.0 / out["eps_omega"])
    if np.max(np.abs(loss)) > 0 and float(np.min(loss)) < -NEGATIVE_TOL * float(np.max(np.abs(loss))):
        warnings.append("negative energy-loss function: the fluctuation estimate of eps(omega) is not converged")
    out["warnings"] = warnings
    return out


# below these the spectra CLI warns (see analyse)
MIN_DURATION_FS = 10_000.0
NEGATIVE_TOL = 0.01


def describe_length(fs: float) -> str:
    """A trajectory length as a person reads it: 50 fs, 1.5 ps, 200 ps."""
    return f"{fs:.0f} fs" if fs < 1000 else f"{fs / 1000:.3g} ps"


def check_settings(temperature_K: Optional[float] = None, skip_fs: float = 0.0, sigma_cm: float = 20.0,
                   max_cm: float = 2000.0) -> None:
    """Settings that cannot give a spectrum are argument errors, before the trajectory is read."""
    problems = []
    if temperature_K is not None and not (np.isfinite(temperature_K) and temperature_K > 0):
        problems.append(f"the temperature must be > 0 K (got {temperature_K}): eps_0 and eps(omega) divide by kB T")
    if not (np.isfinite(skip_fs) and skip_fs >= 0):
        problems.append(f"the skipped equilibration must be >= 0 fs (got {skip_fs})")
    if not (np.isfinite(sigma_cm) and sigma_cm >= 0):
        problems.append(f"the broadening sigma must be >= 0 cm^-1 (got {sigma_cm})")
    if not (np.isfinite(max_cm) and max_cm > 0):
        problems.append(f"the largest wavenumber must be > 0 cm^-1 (got {max_cm})")
    if problems:
        raise ArgumentError("; ".join(problems))


# what a trajectory of mf_lightning.simulation.md logs in every frame, and spectra need
def _direction_text(unit: np.ndarray) -> str:
    for name, i in AXIS_INDEX.items():
        if abs(unit[i]) > 1 - 1e-9:
            return ("-" if unit[i] < 0 else "") + name
    return "[" + ", ".join(f"{c:.2g}" for c in unit) + "]"


def field_protocol(times_fs, field) -> Dict[str, Any]:
    """The field protocol of a run read from its logged field E(t) (n, 3; V/A): ``kind`` zero,
    constant or driven (changing in time), the amplitude ``E0_MV_per_cm`` (largest |E|), its
    ``direction``, for a driven run the ``period_fs`` from the zero crossings of E along that
    direction (None with fewer than two) and ``drive_cm`` = 1/(c T); ``label`` for a figure's title."""
    if field is None or len(field) == 0:
        return {"kind": "unknown", "label": "field not logged", "E0_MV_per_cm": None, "direction": None}
    E = np.asarray(field, dtype=float).reshape(-1, 3)
    magnitude = np.linalg.norm(E, axis=1)
    if not float(magnitude.max()) > 1e-12:
        return {"kind": "zero", "label": "zero field", "E0_MV_per_cm": 0.0, "direction": None}
    k = int(np.argmax(magnitude))
    unit = E[k] / magnitude[k]
    E0 = float(magnitude[k]) * MV_PER_CM_PER_V_PER_A
    where = _direction_text(unit)
    out: Dict[str, Any] = {"E0_MV_per_cm": E0, "direction": unit.tolist()}
    if len(E) < 2 or not float(np.ptp(E, axis=0).max()) > 1e-12:
        return {**out, "kind": "constant", "label": f"constant field E = {E0:.3g} MV/cm along {where}"}
    t = np.asarray(times_fs, dtype=float)
    along = E @ unit
    crossings = [t[i] + (t[i + 1] - t[i]) * along[i] / (along[i] - along[i + 1])
                 for i in range(len(along) - 1) if along[i] * along[i + 1] < 0 or (along[i + 1] == 0 != along[i])]
    period = 2.0 * float(np.mean(np.diff(crossings))) if len(crossings) >= 2 else None
    out.update(kind="driven", period_fs=period, drive_cm=1.0 / (period * C_CM_PER_FS) if period else None)
    out["label"] = (f"driven field E0 = {E0:.3g} MV/cm along {where}"
                    + (f", period {period:.4g} fs" if period else ""))
    return out


TRAJECTORY_KEYS = ("time_fs", "polarisation", "volume")


def analyse_trajectory(path, temperature_K: Optional[float] = None, skip_fs: float = 0.0, **kwargs) -> Dict[str, Any]:
    """:func:`analyse` of a trajectory written by :mod:`mf_lightning.simulation.md`. Anything
    else (a folder, a plain structure file, an extxyz without the logged ``time_fs``,
    ``polarisation`` and ``volume`` of every frame) is an :class:`InputError` saying so."""
    from mf_lightning.simulation.md import check_input_file, read_log

    check_settings(temperature_K, skip_fs, kwargs.get("sigma_cm", 20.0), kwargs.get("max_cm", 2000.0))
    check_input_file(path, "trajectory file")
    logged = read_log(path, keys=("time_fs", "polarisation", "volume", "temperature", "polarisability",
                                  "electric_field"))
    frames = len(logged["time_fs"])
    missing = [k for k in TRAJECTORY_KEYS if len(logged[k]) == 0]
    if missing:
        raise InputError(f"{path}: not an MD trajectory of mf-md (no frame has {', '.join(missing)}): spectra need "
                         "the trajectory mf-md --out writes")
    t = logged["polarisation_time_fs"]
    for k in ("polarisation", "volume"):
        if len(logged[k]) != frames:
            raise InputError(f"{path}: {frames - len(logged[k])} of the {frames} frames lack {k}: not a complete "
                             "trajectory of mf-md")
    keep = t >= t[0] + skip_fs
    a_t = logged["polarisability_time_fs"]
    a_keep = a_t >= t[0] + skip_fs
    if temperature_K is None:
        if len(logged["temperature"]) != frames:
            raise InputError(f"{path}: the frames do not all log a temperature: give --temperature")
        temperature_K = float(np.mean(logged["temperature"][keep])) if keep.any() else float("nan")
        if keep.any() and not temperature_K > 0:
            raise InputError(f"{path}: the logged temperature is {temperature_K:g} K (a 0 K run has no "
                             "fluctuations to analyse): give --temperature")
    result = analyse(t[keep], logged["polarisation"][keep], logged["volume"][keep], temperature_K,
                     alpha=logged["polarisability"][a_keep] if a_keep.any() else None,
                     alpha_times_fs=a_t[a_keep], field=logged["electric_field"][keep]
                     if len(logged["electric_field"]) == len(t) else None, **kwargs)
    untrained = untrained_note(path)
    if untrained:  # mf-md --allow-untrained wrote it into every frame: the spectra inherit it
        result["warnings"].insert(0, f"the trajectory was run with --allow-untrained ({untrained}): spectra "
                                     "from quantities the model never learned are meaningless")
    return result


def untrained_note(path) -> str:
    """The ``untrained`` notes mf-md writes into every frame of a run with ``--allow-untrained``,
    over all frames (a continued run may have allowed more; empty for a run on what was learned)."""
    import ase.io

    notes = []
    try:
        for frame in ase.io.iread(path, index=":", format="extxyz"):
            note = str(frame.info.get("untrained", "") or "")
            if note and note not in notes:
                notes.append(note)
    except Exception:  # noqa: BLE001 - read_log above has already parsed the file
        pass
    return "; ".join(notes)


# ---------------------------------------------------------------------- outputs
def _normalised(y):
    y = np.nan_to_num(np.asarray(y, dtype=float))
    m = np.max(np.abs(y))
    return y / m if m > 0 else y


def spectra_figure(result: Dict[str, Any], axis: int = 2):
    """The figure of :func:`write_outputs`: (figure, panel names). IR and Raman always; Re eps and
    absorption/loss only for an equilibrium run (a driven run's fluctuation results do not apply),
    whose IR panel marks the drive frequency 1/T instead (dashed, not a phonon peak). The title
    names the field protocol, the length, temperature, broadening and resolution."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    wn = result["wavenumber"]
    protocol = result.get("field_protocol") or {"label": "field not logged", "kind": "unknown"}
    driven = protocol.get("kind") == "driven"
    panels = ["ir", "raman"] if driven else ["ir", "raman", "re_eps", "absorption_loss"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8)) if driven else plt.subplots(2, 2, figsize=(10, 7))
    axes = np.asarray(axes).reshape(-1)
    x_label = "wavenumber (cm$^{-1}$)"
    a = axes[0]
    a.plot(wn, _normalised(result["ir"]), "k", label="IR")
    for pk in result["ir_peaks"][:3]:
        a.axvline(pk["wavenumber_cm"], color="C3", lw=0.6, ls=":")
        a.text(pk["wavenumber_cm"], 1.02, f"{pk['wavenumber_cm']:.0f}", fontsize=7, ha="center", color="C3")
    drive = protocol.get("drive_cm")
    if driven and drive and len(wn) and drive <= float(np.max(wn)):
        a.axvline(drive, color="C2", lw=1.0, ls="--", label=f"drive 1/T = {drive:.3g} cm$^{{-1}}$")
    a.set(title="IR (dM/dt autocorrelation)", xlabel=x_label, ylabel="intensity (arb. units, normalised)")
    a.legend(fontsize=7)
    a = axes[1]
    if "raman" in result:
        a.plot(wn, _normalised(result["raman"]), "k", label="total")
        a.plot(wn, _normalised(result["raman_isotropic"]) * 0.8, "C0", lw=0.8, label="isotropic")
        a.plot(wn, _normalised(result["raman_anisotropic"]) * 0.8, "C1", lw=0.8, label="anisotropic")
        a.legend(fontsize=7)
    else:
        a.text(0.5, 0.5, "no alpha logged", ha="center", transform=a.transAxes)
    a.set(title="Raman ($\\alpha$ autocorrelation)", xlabel=x_label, ylabel="intensity (arb. units, normalised)")
    if not driven:
        eps = result["eps_omega"]
        loss = -np.imag(1.0 / eps)
        others = [i for i in range(3) if i != axis]
        name = "xyz"[axis]
        a = axes[2]
        par = eps[:, axis].real
        perp = eps[:, others].real.mean(1)
        a.plot(wn, par, "C0", label=f"parallel ({name})")
        a.plot(wn, perp, "C1", label="perpendicular")
        a.axhline(0, color="k", lw=0.5)
        lim = np.nanpercentile(np.abs(np.concatenate([par, perp])), 98)
        a.set(title="Re $\\epsilon(\\omega)$", xlabel=x_label, ylabel="Re $\\epsilon$ (relative permittivity)")
        if np.isfinite(lim) and lim > 0:
            a.set_ylim(-lim, lim)
        a.legend(fontsize=7)
        a = axes[3]
        a.plot(wn, eps[:, axis].imag, "C0", label="Im $\\epsilon$ parallel")
        a.plot(wn, eps[:, others].imag.mean(1), "C1", label="Im $\\epsilon$ perpendicular")
        a.plot(wn, loss[:, axis], "C0--", lw=0.8, label="-Im $1/\\epsilon$ parallel")
        a.plot(wn, loss[:, others].mean(1), "C1--", lw=0.8, label="-Im $1/\\epsilon$ perpendicular")
        a.set(title="absorption and energy loss", xlabel=x_label, ylabel="Im $\\epsilon$, -Im $1/\\epsilon$ (relative)")
        a.legend(fontsize=7)
    fig.suptitle(f"{protocol['label']}: {describe_length(result['duration_fs'])} at {result['temperature_K']:.0f} K, "
                 f"sigma {result['sigma_cm']:.0f} cm$^{{-1}}$, resolution {result['resolution_cm']:.0f} cm$^{{-1}}$"
                 + ("\n(driven run: eps($\\omega$) and the loss function do not apply and are not drawn)"
                    if driven else ""), fontsize=9)
    fig.tight_layout()
    return fig, panels


def write_outputs(result: Dict[str, Any], out_dir, axis: int = 2, fmt: str = "png",
                  dpi: Optional[float] = None) -> Dict[str, Path]:
    """spectra.csv, summary.json (with the figure's ``panels``) and spectra.<fmt> (png, pdf or svg)."""
    import matplotlib.pyplot as plt

    from mf_lightning.train.plots import FIGURE_DPI, save_figure

    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ArgumentError(f"{out_dir}: exists and is a file, not a folder: give an output folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    fig, panels = spectra_figure(result, axis)
    wn = result["wavenumber"]
    eps = result["eps_omega"]
    loss = -np.imag(1.0 / eps)
    cols = {"wavenumber_cm": wn, "ir": result["ir"]}
    for k in ("raman", "raman_isotropic", "raman_anisotropic"):
        if k in result:
            cols[k] = result[k]
    for j, c in enumerate("xyz"):
        cols[f"re_eps_{c}{c}"], cols[f"im_eps_{c}{c}"] = eps[:, j].real, eps[:, j].imag
        cols[f"loss_{c}{c}"] = loss[:, j]
    header = ",".join(cols)
    np.savetxt(out_dir / "spectra.csv", np.column_stack(list(cols.values())), delimiter=",", header=header,
               comments="", fmt="%.6g")
    summary = {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in result.items()
               if k not in ("wavenumber", "ir", "raman", "raman_isotropic", "raman_anisotropic", "eps_omega")}
    summary["figure"] = {"format": fmt, "panels": panels}
    (out_dir / "summary.json").write_text(dumps_json(summary))
    try:
        figure = save_figure(fig, out_dir / "spectra", fmt, FIGURE_DPI if dpi is None else dpi)
    finally:
        plt.close(fig)
    return {"csv": out_dir / "spectra.csv", "summary": out_dir / "summary.json", "figure": figure}
