"""P-E hysteresis loops: dynamic (MD under E0 sin(2 pi t/T)) and quasi-static (relax the ions at
each field value on a grid, up and down).

``mf-hysteresis STRUCTURE --model model.pt --out DIR [--mode dynamic|quasistatic]``

The paper's BaTiO3 protocol (SPEC section 5): a 3x3x3 supercell of tetragonal BaTiO3 (135 atoms;
the shared MD frames are that cell), field along the polar axis, E0 = 36 MV/cm, period 2 ps, 0 K
(here: Langevin dynamics with T = 0, i.e. damped, so the field's work does not heat the
crystal). It reports P_r about +-39 uC/cm^2 and E_c about +-11.4 MV/cm.

Loop quantities (:func:`loop_metrics`), from the polarisation component along the field axis:

* remanent polarisations P_r+ / P_r-: P where the field crosses zero going down / going up;
* coercive fields E_c+ / E_c-: the field where P crosses zero going up / going down;

each linearly interpolated between samples and averaged over all such crossings after the first
``discard`` fraction of the run (the first quarter period starts from the unpoled state).
Written: ``loop.csv`` (t, E, P), ``loop.json`` (the metrics, uC/cm^2 and MV/cm; ``warnings``: what
the head never learned but ``--allow-untrained`` let it compute; ``protocol``; a quasi-static
loop's ``E_c_uncertainty_MV_per_cm``: half its grid's field step, E_c is found no finer) and
``loop.<format>`` (png, pdf or svg; the title names E0 and the period or the grid). Settings that
cannot give a loop (no cycles, fewer than 2 points, a zero field) are refused before any work
(:func:`check_loop`); a run that blows up is a :class:`~mf_lightning.errors.RunFailedError`.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np

from mf_lightning.errors import ArgumentError, RunFailedError
from mf_lightning.files import dumps_json
from mf_lightning.simulation.md import (
    FieldProtocol,
    axis_vector,
    check_periodic,
    read_log,
    run_md,
    untrained_warnings,
)
from mf_lightning.units import E_PER_A2_TO_UC_PER_CM2

log = logging.getLogger(__name__)
V_PER_A_TO_MV_PER_CM = 100.0


def _crossings(x: np.ndarray, y: np.ndarray):
    """Where ``x`` changes sign: (interpolated y there, +1 if x goes up / -1 if down)."""
    out = []
    for i in range(len(x) - 1):
        a, b = x[i], x[i + 1]
        if a == 0 and i > 0:
            continue  # counted as the end of the previous interval
        if (a < 0 <= b and b != 0) or (a > 0 >= b and b != 0) or (a != 0 and b == 0):
            f = a / (a - b)
            out.append((y[i] + f * (y[i + 1] - y[i]), 1 if b > a else -1))
    return out


def _monotone_runs(E: np.ndarray):
    """(start, end, direction) of the runs where the field only goes up (+1) or down (-1); a run's
    end is the next one's start (the turning point)."""
    step = np.sign(np.diff(E))
    for k in range(1, len(step)):  # a flat step continues the current run
        if step[k] == 0:
            step[k] = step[k - 1]
    runs, start = [], 0
    for k in range(1, len(step) + 1):
        if k == len(step) or step[k] != step[start]:
            if step[start] != 0:
                runs.append((start, k, int(step[start])))
            start = k
    return runs


def loop_metrics(E: np.ndarray, P: np.ndarray, discard: float = 0.25) -> Dict[str, float]:
    """P_r+-, E_c+- of a loop sampled in time order (E and P in any consistent units).

    Per half cycle (a run of the field going down, or up): P_r+ (P_r-) is P where the falling
    (rising) field crosses zero; E_c- (E_c+) is the field of the *last* downward (upward) zero
    crossing of P in that run, counted only if P ends the run switched. A transient dip of P
    through zero that recovers, or a crossing on the other half cycle, is never averaged in
    (it once turned crossings at -27.1 and +18.6 MV/cm into an "E_c-" of -4.2). Each metric is
    the mean over the half cycles after the first ``discard`` fraction of the samples."""
    E, P = np.asarray(E, dtype=float), np.asarray(P, dtype=float)
    start = int(discard * len(E))
    E, P = E[start:], P[start:]
    found = {"P_r+": [], "P_r-": [], "E_c+": [], "E_c-": []}
    for i0, i1, direction in _monotone_runs(E):
        e, p = E[i0:i1 + 1], P[i0:i1 + 1]
        found["P_r+" if direction < 0 else "P_r-"] += [v for v, _ in _crossings(e, p)]
        switches = [v for v, d in _crossings(p, e) if d == direction]
        if switches and np.sign(p[-1]) == direction:
            found["E_c+" if direction > 0 else "E_c-"].append(switches[-1])

    def mean(v):
        return float(np.mean(v)) if v else float("nan")

    return {"P_r_plus": mean(found["P_r+"]), "P_r_minus": mean(found["P_r-"]), "E_c_plus": mean(found["E_c+"]),
            "E_c_minus": mean(found["E_c-"]), "n_crossings": {k: len(v) for k, v in found.items()},
            "per_half_cycle": found}


def _finite(x) -> bool:
    try:
        return bool(np.isfinite(float(x)))
    except (TypeError, ValueError):
        return False


def check_loop(mode: str, E0: float, period_fs: Optional[float] = None, cycles: float = 2.0,
               timestep_fs: float = 2.0, n_points: int = 11, fmax: float = 0.01,
               discard: Optional[float] = None) -> None:
    """Loop settings that cannot give a loop are argument errors, before a model is loaded."""
    problems = []
    if not (_finite(E0) and E0 != 0):
        problems.append(f"the field amplitude E0 must be finite and non-zero (got {E0} V/A)")
    if mode == "dynamic":
        if not (_finite(cycles) and cycles > 0):
            problems.append(f"cycles must be > 0 (got {cycles})")
        if not (_finite(period_fs) and period_fs > 0):
            problems.append(f"the period must be > 0 fs (got {period_fs})")
        if (not problems and _finite(timestep_fs) and timestep_fs > 0
                and round(cycles * period_fs / timestep_fs) < 1):
            problems.append(f"cycles x period ({cycles * period_fs:g} fs) is shorter than one time step "
                            f"({timestep_fs:g} fs)")
    elif mode == "quasistatic":
        if not (isinstance(n_points, (int, np.integer)) and n_points >= 2):
            problems.append(f"points must be >= 2 (field values per quarter cycle, 0 and E0 included; got {n_points})")
        if not (_finite(fmax) and fmax > 0):
            problems.append(f"fmax must be > 0 eV/A (got {fmax})")
    else:
        problems.append(f"mode {mode!r}: dynamic | quasistatic")
    if discard is not None and not (_finite(discard) and 0 <= discard < 1):
        problems.append(f"discard must be a fraction in [0, 1) (got {discard})")
    if problems:
        raise ArgumentError("; ".join(problems))


def dynamic_loop(atoms, calc, out_dir, E0: float, period_fs: float, cycles: float = 2.0, axis="z",
                 timestep_fs: float = 2.0, temperature_K: float = 0.0, friction_per_fs: float = 0.01,
                 log_every: int = 5, seed: int = 0, progress: bool = True) -> Dict[str, np.ndarray]:
    """MD under E0 sin(2 pi t / period) (E0 in V/A) along ``axis``; returns t (fs), E and P along
    it, and ``warnings`` (what the head never learned but was allowed to compute)."""
    check_loop("dynamic", E0, period_fs, cycles, timestep_fs)
    out_dir = Path(out_dir)
    unit = axis_vector(axis)
    steps = int(round(cycles * period_fs / timestep_fs))
    field = FieldProtocol(kind="sine", E0=E0, direction=unit, period_fs=period_fs)
    traj = out_dir / "trajectory.xyz"
    run_md(atoms, calc, traj, steps=steps, timestep_fs=timestep_fs, ensemble="nvt", temperature_K=temperature_K,
           friction_per_fs=friction_per_fs, field=field, log_every=log_every, seed=seed, progress=progress,
           init_temperature_K=temperature_K)
    logged = read_log(traj, keys=("time_fs", "electric_field", "polarisation"))
    return {"t_fs": logged["time_fs"], "E": logged["electric_field"] @ unit, "P": logged["polarisation"] @ unit,
            "warnings": untrained_warnings(calc)}


def quasi_static_loop(atoms, calc, E_max: float, n_points: int = 21, axis="z", fmax: float = 0.01,
                      max_steps: int = 300, cycles: int = 1) -> Dict[str, np.ndarray]:
    """Relax the ions at each field on the grid 0 -> E_max -> -E_max -> E_max (``cycles`` times),
    each relaxation starting from the previous structure; returns E and P along the axis, and
    ``warnings`` (what the head never learned but was allowed to compute)."""
    from mf_lightning.analysis.dielectric import relax_structure
    from mf_lightning.data.graphs import GeometryError

    check_loop("quasistatic", E_max, n_points=n_points, fmax=fmax)
    if not (isinstance(cycles, (int, np.integer)) and cycles >= 1):
        raise ArgumentError(f"a quasi-static loop needs cycles >= 1 (got {cycles})")
    check_periodic(atoms)
    unit = axis_vector(axis)
    quarter = np.linspace(0, E_max, n_points)
    grid = list(quarter)
    for _ in range(cycles):
        down, up = np.linspace(E_max, -E_max, 2 * n_points - 1)[1:], np.linspace(-E_max, E_max, 2 * n_points - 1)[1:]
        grid += list(down) + list(up)
    atoms = atoms.copy()
    calc.set_field(grid[0] * unit)
    calc.get_forces(atoms)  # the structure's own problems (and an untrained head) stop here
    E_out, P_out, converged = [], [], []
    for k, e in enumerate(grid):
        calc.set_field(e * unit)
        try:
            converged.append(relax_structure(atoms, calc, fmax=fmax, steps=max_steps))
        except GeometryError as exc:  # the relaxed positions, not the input's: the relaxation blew up
            raise RunFailedError(f"the relaxation at field step {k} (E = {e:g} V/A) diverged: "
                                 f"{str(exc).split(': ', 1)[-1]}; try a smaller field amplitude") from exc
        p = calc.get_polarisation(atoms)  # the model's own P: single-valued, never folded
        E_out.append(e)
        P_out.append(float(p @ unit))
    return {"E": np.array(E_out), "P": np.array(P_out), "converged": np.array(converged),
            "grid_step": float(quarter[1] - quarter[0]), "warnings": untrained_warnings(calc)}


# SPEC section 5: the paper's BaTiO3 loop (0 K, E0 = 36 MV/cm, period 2 ps)
PAPER_BATIO3 = {"P_r": 39.0, "E_c": 11.4}


def paper_reference(atoms) -> Optional[Dict[str, float]]:
    """The paper's loop values where they apply (BaTiO3), else None: never printed for another material."""
    from mf_lightning.data.reader import reduced_formula

    return dict(PAPER_BATIO3) if reduced_formula(atoms) == "BaTiO3" else None


def loop_protocol(mode: str, E0: float, axis="z", period_fs: Optional[float] = None,
                  n_points: Optional[int] = None) -> Dict[str, Any]:
    """A loop's field protocol (E0 in V/A): recorded in loop.json and named in the figure's title."""
    E0_mv = abs(float(E0)) * V_PER_A_TO_MV_PER_CM
    out: Dict[str, Any] = {"mode": mode, "E0_MV_per_cm": E0_mv, "axis": axis}
    if mode == "dynamic":
        out["period_fs"] = period_fs
        out["label"] = f"dynamic, E0 = {E0_mv:.3g} MV/cm along {axis}, period {period_fs:.4g} fs"
    else:
        out["grid_step_MV_per_cm"] = E0_mv / (n_points - 1) if n_points and n_points > 1 else None
        step = out["grid_step_MV_per_cm"]
        out["label"] = f"quasi-static, E0 = {E0_mv:.3g} MV/cm along {axis}" + (
            f", field step {step:.2g} MV/cm" if step else "")
    return out


def with_uncertainty(value: float, error: Optional[float], unit: str = "") -> str:
    """``value +- error unit`` with the error to one significant digit (two if it starts with 1)
    and the value to the same decimal place: 21.3, 9.0 -> "21 +- 9"."""
    unit = f" {unit}" if unit else ""
    if not np.isfinite(value):
        return f"n/a{unit}"
    if error is None or not np.isfinite(error) or error <= 0:
        return f"{value:.3g}{unit}"
    exponent = int(np.floor(np.log10(error)))
    places = (2 if int(error / 10 ** exponent) == 1 else 1) - 1 - exponent
    if places < 0:  # round to tens, hundreds, ...
        value, error, places = round(value, places), round(error, places), 0
    return f"{value:.{places}f} +- {error:.{places}f}{unit}"


def write_loop(loop: Dict[str, np.ndarray], out_dir, discard: float, title: str = "",
               reference: Optional[Dict[str, float]] = None, protocol: Optional[Dict[str, Any]] = None,
               fmt: str = "png", dpi: Optional[float] = None) -> Dict[str, Any]:
    """loop.csv (time in fs for a dynamic loop, the field step's index for a quasi-static one),
    loop.json (metrics, the ``protocol``, plus ``reference`` values, e.g. the paper's, if given) and
    loop.<fmt>. A quasi-static loop's E_c carries its grid's uncertainty, half the field step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mf_lightning.train.plots import FIGURE_DPI, save_figure

    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ArgumentError(f"{out_dir}: exists and is a file, not a folder: give an output folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    E_mv = np.asarray(loop["E"]) * V_PER_A_TO_MV_PER_CM
    P_uc = np.asarray(loop["P"]) * E_PER_A2_TO_UC_PER_CM2
    metrics = loop_metrics(E_mv, P_uc, discard=discard)
    metrics["units"] = {"P": "uC/cm^2", "E": "MV/cm"}
    if reference:
        metrics["paper"] = reference
    if protocol:
        metrics["protocol"] = protocol
    error = None
    if loop.get("grid_step") is not None:  # quasi-static: a crossing is located between two grid fields
        error = 0.5 * abs(float(loop["grid_step"])) * V_PER_A_TO_MV_PER_CM
        metrics["E_c_uncertainty_MV_per_cm"] = error
        metrics["E_c_text"] = {k: "E_c" + k[3:].replace("_plus", "+").replace("_minus", "-") + " = "
                               + with_uncertainty(metrics[k], error, "MV/cm") for k in ("E_c_plus", "E_c_minus")}
    if "converged" in loop:
        metrics["relaxations_not_converged"] = int((~np.asarray(loop["converged"])).sum())
    if loop.get("warnings"):  # quantities the head never learned, computed by --allow-untrained
        metrics["warnings"] = list(loop["warnings"])
    with open(out_dir / "loop.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        timed = "t_fs" in loop
        w.writerow(["t_fs" if timed else "field_step", "E_MV_per_cm", "P_uC_per_cm2"])
        t = loop["t_fs"] if timed else np.arange(len(E_mv))
        w.writerows(zip(np.asarray(t).tolist(), E_mv.tolist(), P_uc.tolist()))
    fig, ax = plt.subplots(figsize=(5, 4))
    start = int(discard * len(E_mv))
    ax.plot(E_mv[: start + 1], P_uc[: start + 1], color="0.7", lw=1, label="initial")
    ax.plot(E_mv[start:], P_uc[start:], "C0", lw=1.2, label="loop")
    for key, marker, sign in (("P_r_plus", "^", "+"), ("P_r_minus", "v", "-")):
        if np.isfinite(metrics[key]):
            ax.plot(0, metrics[key], marker, color="C3", label=f"$P_r^{sign}$ = {metrics[key]:.1f} $\\mu$C/cm$^2$")
    for key, marker, sign in (("E_c_plus", ">", "+"), ("E_c_minus", "<", "-")):
        if np.isfinite(metrics[key]):
            text = with_uncertainty(metrics[key], error, "MV/cm").replace("+-", "$\\pm$")
            ax.errorbar(metrics[key], 0, xerr=error, fmt=marker, color="C2", capsize=3,
                        label=f"$E_c^{sign}$ = {text}")
    ax.axhline(0, color="k", lw=0.4)
    ax.axvline(0, color="k", lw=0.4)
    full_title = ": ".join(t for t in (title, protocol["label"] if protocol else "") if t)
    ax.set(xlabel="E (MV/cm)", ylabel="P ($\\mu$C/cm$^2$)")
    ax.set_title(full_title, fontsize=8)
    ax.legend(fontsize=7)
    fig.tight_layout()
    try:
        metrics["figure"] = str(save_figure(fig, out_dir / "loop", fmt, FIGURE_DPI if dpi is None else dpi))
    finally:
        plt.close(fig)
    (out_dir / "loop.json").write_text(dumps_json(metrics))
    return metrics
