"""Finite-field molecular dynamics on ASE: ``mf-md STRUCTURE --model model.pt ...``.

The calculator's forces are -dF/dR at the field of that instant, so the field term is in the
dynamics by construction. The field is a :class:`FieldProtocol` (constant, E0 sin(2 pi t/T) along
an axis, switched on/off at given times) or any function ``f(t_fs) -> (3,) V/A``
(``--field-function module:attr`` on the command line).

Time and the field. ASE's integrators evaluate the forces once per step, at the new positions;
the driver sets the calculator's clock to the time of those positions (t + dt) just before each
step and hands the integrator the forces it already has, so every force is evaluated once and at
the right field.

Log (every ``log_every`` steps) to an extxyz trajectory, one frame appended and flushed at a time
(memory stays bounded however long the run): ``info`` has ``step``, ``time_fs``,
``electric_field`` (V/A), ``polarisation`` (e/A^2: the model's own P = -(1/Omega) dF/dE, as it
comes; it is a smooth single-valued function of R and E, so it is never folded onto a branch:
folding would alias any real change of more than half a quantum between two samples, such as
ferroelectric switching. Branch folding is for Berry-phase reference labels only),
``enthalpy`` (F, eV), ``kinetic_energy``, ``total_energy`` (F + K, the conserved quantity of NVE
at a constant field), ``temperature`` (K), ``volume``, ``stress``
(eV/A^3, Voigt); every ``response_every`` steps also ``polarisability`` (9, e/(V A)) and, with
``becs=True``, the per-atom array ``becs`` (9, e). Momenta are stored, so a run restarts from its
last complete frame (``restart=True``, the default: an existing trajectory is continued; a frame
cut short by a kill is dropped first). ASE reads the per-atom ``forces`` and the ``stress`` of
such a file into ``atoms.calc.results`` (``atoms.get_forces()``), the rest stays in ``info``.
Quantities the head never learned but ``--allow-untrained`` let the calculator compute are named
in every frame's ``untrained`` and in the result's ``untrained`` list.

Failures. A structure that is not 3D-periodic (a slab, a molecule: P and the stress are per cell
volume) and a field function returning anything but 3 finite numbers are input errors, and
non-finite forces on the starting structure a failed run, before anything is written. Dynamics that blow up
(non-finite forces or positions, an atom moving more than ``MAX_STEP_DISPLACEMENT`` in a step or
fast enough to in the next, evolved positions the graph checks refuse) are a
:class:`~mf_lightning.errors.RunFailedError` naming the step and time; the frames before it stay
in the trajectory, and the diverged state is never written (a restart never starts from it).
"""

from __future__ import annotations

import importlib
import logging
import math
import os
import sys
from dataclasses import dataclass
from dataclasses import field as dc_field
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence

import numpy as np
from ase import units

from mf_lightning.errors import ArgumentError, InputError, RunFailedError

log = logging.getLogger(__name__)

AXES = {"x": (1.0, 0.0, 0.0), "y": (0.0, 1.0, 0.0), "z": (0.0, 0.0, 1.0)}
# No atom of a sound trajectory moves this far in one step (1 A/fs is ~4e5 K for hydrogen): a
# larger step means the integration has blown up, whatever the geometry checks still accept.
MAX_STEP_DISPLACEMENT = 1.0  # A


# ---------------------------------------------------------------------- field protocols
@dataclass
class FieldProtocol:
    """E(t) in V/A: ``kind`` "constant" (E0 along ``direction``) or "sine" (E0 sin(2 pi t / period
    + phase)); zero before ``t_on_fs`` and from ``t_off_fs`` on (if given)."""

    kind: str = "constant"
    E0: float = 0.0
    direction: Sequence[float] = (0.0, 0.0, 1.0)
    period_fs: Optional[float] = None
    phase: float = 0.0
    t_on_fs: Optional[float] = None
    t_off_fs: Optional[float] = None
    _unit: np.ndarray = dc_field(init=False, repr=False)

    def __post_init__(self):
        if self.kind not in ("constant", "sine"):
            raise ArgumentError(f"field kind {self.kind!r}: constant | sine")
        d = np.asarray(self.direction, dtype=float).reshape(3)
        norm = np.linalg.norm(d)
        if not np.isfinite(norm) or norm == 0:
            raise ArgumentError(f"field direction must be a non-zero 3-vector, got {self.direction!r}")
        self._unit = d / norm
        if self.kind == "sine" and not (self.period_fs and self.period_fs > 0):
            raise ArgumentError("a sine field needs period_fs > 0")

    def __call__(self, t_fs: float) -> np.ndarray:
        if (self.t_on_fs is not None and t_fs < self.t_on_fs) or (self.t_off_fs is not None and t_fs >= self.t_off_fs):
            return np.zeros(3)
        amplitude = self.E0
        if self.kind == "sine":
            amplitude = self.E0 * math.sin(2 * math.pi * t_fs / self.period_fs + self.phase)
        return amplitude * self._unit


def axis_vector(axis) -> np.ndarray:
    """A unit 3-vector from "x" | "y" | "z", a string "ex,ey,ez", or 3 numbers."""
    given = axis
    try:
        if isinstance(axis, str):
            axis = AXES[axis] if axis in AXES else [float(x) for x in axis.split(",")]
        d = np.asarray(axis, dtype=float).reshape(3)
    except (TypeError, ValueError) as exc:
        raise ArgumentError(f"axis must be x, y, z or a non-zero 3-vector 'ex,ey,ez', got {given!r}") from exc
    norm = np.linalg.norm(d)
    if not np.isfinite(norm) or norm == 0:
        raise ArgumentError(f"axis must be x, y, z or a non-zero 3-vector, got {axis!r}")
    return d / norm


class FieldFunction:
    """A user's field function ``f(t_fs)``, checked at every call: anything but 3 finite numbers
    (V/A) is an :class:`~mf_lightning.errors.ArgumentError` naming the function and the time."""

    def __init__(self, function: Callable[[float], Sequence[float]], name: str):
        self.function, self.name = function, name

    def __call__(self, t_fs: float) -> np.ndarray:
        value = self.function(t_fs)
        try:
            field = np.asarray(value, dtype=float).reshape(-1)
        except (TypeError, ValueError):
            field = None
        if field is None or field.shape != (3,) or not np.all(np.isfinite(field)):
            shown = " ".join(repr(value).split())
            raise ArgumentError(f"field function {self.name} returned {shown[:200]} at t = {t_fs:g} fs: it must "
                                "return 3 finite numbers (V/A)")
        return field


def import_function(spec: str) -> FieldFunction:
    """``"package.module:name"`` -> the callable, checked at every call (:class:`FieldFunction`).
    A module that does not import or a name it lacks is an argument error."""
    module, _, name = spec.partition(":")
    if not module or not name:
        raise ArgumentError(f"field function {spec!r}: give it as module:function")
    try:
        mod = importlib.import_module(module)
    except ImportError as exc:
        raise ArgumentError(f"field function {spec}: cannot import module {module!r} ({exc}); is it on "
                            "PYTHONPATH?") from exc
    function = getattr(mod, name, None)
    if not callable(function):
        raise ArgumentError(f"field function {spec}: module {module!r} has no function {name!r}")
    return FieldFunction(function, spec)


def check_periodic(atoms, source: str = "the structure") -> None:
    """MD and loops need a 3D-periodic cell: P (logged every frame, the field's partner in the
    enthalpy) and the stress are per cell volume, undefined for a slab or a molecule."""
    pbc = [bool(p) for p in atoms.get_pbc()]
    if all(pbc) and abs(float(atoms.get_volume())) > 1e-9:
        return
    where = ", ".join("xyz"[k] for k in range(3) if pbc[k])
    shape = f"periodic along {where} only" if where else "not periodic"
    raise InputError(f"{source}: {shape} (pbc {' '.join('T' if p else 'F' for p in pbc)}): finite-field MD needs a "
                     "3D-periodic cell, and so do P-E loops (P, the field's partner in the enthalpy, and the stress "
                     "are per cell volume); give a slab a periodic box with vacuum (pbc T T T)")


# ---------------------------------------------------------------------- trajectory file
def complete_frames_end(path: Path) -> tuple[int, int]:
    """(number of complete extxyz frames, byte offset just after the last complete one)."""
    frames, offset, end = 0, 0, 0
    with open(path, "rb") as fh:
        while True:
            header = fh.readline()
            if not header:
                break
            try:
                n = int(header.strip())
            except ValueError:
                break
            lines = [fh.readline() for _ in range(n + 1)]
            if len(lines) != n + 1 or not all(line.endswith(b"\n") for line in lines):
                break
            offset += len(header) + sum(len(line) for line in lines)
            frames += 1
            end = offset
    return frames, end


def is_md_trajectory(path: Path) -> bool:
    """Whether ``path`` starts like a trajectory this driver wrote (an atom count, then a comment
    line with its ``step`` and ``time_fs``): only such a file is ever truncated or continued."""
    try:
        with open(path, "rb") as fh:
            count, comment = fh.readline(), fh.readline(4096)
    except OSError:
        return False
    return count.strip().isdigit() and b"step=" in comment and b"time_fs=" in comment


def check_output(out: Path, inputs: Sequence = ()) -> None:
    """Refuse an ``--out`` that is one of the inputs or an existing file of another kind (a model,
    a structure, a table): the driver truncates and appends to its own trajectories only."""
    out = Path(out)
    if out.is_dir():
        raise InputError(f"--out {out} is a folder: give a trajectory file (e.g. {out / 'trajectory.xyz'})")
    for given in inputs:
        if given is not None and Path(given).exists() and out.exists() and out.resolve() == Path(given).resolve():
            raise InputError(f"--out {out} is also an input: choose another output file")
    if out.exists() and out.stat().st_size > 0 and not is_md_trajectory(out):
        raise InputError(f"--out {out} exists and is not an mf-lightning MD trajectory: refusing to overwrite it")


def check_dynamics(steps: int, timestep_fs: float, temperature_K: float, friction_per_fs: float,
                   log_every: int, response_every: Optional[int]) -> None:
    """Non-physical or meaningless MD settings are input errors, before anything runs."""
    problems = []
    if not (isinstance(steps, (int, np.integer)) and steps >= 0):
        problems.append(f"steps must be >= 0 (got {steps})")
    if not (np.isfinite(timestep_fs) and timestep_fs > 0):
        problems.append(f"the time step must be > 0 fs (got {timestep_fs})")
    elif timestep_fs > 10:
        log.warning("time step %g fs: far above the usual 0.5-2 fs; the dynamics may blow up", timestep_fs)
    if not (np.isfinite(temperature_K) and temperature_K >= 0):
        problems.append(f"the temperature must be >= 0 K (got {temperature_K})")
    if not (np.isfinite(friction_per_fs) and friction_per_fs >= 0):
        problems.append(f"the friction must be >= 0 per fs (got {friction_per_fs})")
    if not log_every >= 1:
        problems.append(f"log_every must be >= 1 (got {log_every})")
    if response_every is not None and not response_every >= 1:
        problems.append(f"response_every must be >= 1 (got {response_every})")
    if problems:
        raise InputError("; ".join(problems))


# every frame says in what units it is (ASE reads positions in A, momenta in its own units)
FRAME_UNITS = ("positions:A forces:eV/A enthalpy:eV kinetic_energy:eV total_energy:eV time_fs:fs "
               "electric_field:V/A polarisation:e/A^2 stress:eV/A^3 polarisability:e/(V*A) becs:e "
               "temperature:K volume:A^3")


def _fingerprint(calc) -> str:
    """The checksum of the calculator's model (empty for a calculator without one)."""
    model = getattr(calc, "model", None)
    if model is None or not hasattr(model, "backbone_config"):
        return ""
    cached = getattr(calc, "_mf_model_sha256", None)
    if cached is None:
        from mf_lightning.model.io import model_checksum

        cached = model_checksum(model)
        calc._mf_model_sha256 = cached
    return cached


def last_frame(path: Path):
    """The last complete frame of a trajectory (a partial frame after it is removed), or None."""
    import ase.io

    if not path.exists() or path.stat().st_size == 0:
        return None
    frames, end = complete_frames_end(path)
    if end < path.stat().st_size:
        log.warning("%s: dropping an incomplete last frame (interrupted write)", path)
        with open(path, "r+b") as fh:
            fh.truncate(end)
    if frames == 0:
        return None
    return ase.io.read(str(path), index=-1, format="extxyz")


# ---------------------------------------------------------------------- driver
def make_dynamics(atoms, ensemble: str, timestep_fs: float, temperature_K: float, friction_per_fs: float,
                  seed: int):
    if ensemble == "nve":
        from ase.md.verlet import VelocityVerlet

        return VelocityVerlet(atoms, timestep=timestep_fs * units.fs)
    if ensemble == "nvt":
        from ase.md.langevin import Langevin

        return Langevin(atoms, timestep=timestep_fs * units.fs, temperature_K=temperature_K,
                        friction=friction_per_fs / units.fs, rng=np.random.default_rng(seed),
                        fixcm=False)  # ASE's fixcm=True is deprecated (biased sampling); P ignores the drift
    raise ArgumentError(f"ensemble {ensemble!r}: nvt (Langevin) | nve")


def _frame(atoms, calc, step: int, t_fs: float, with_response: bool, becs: bool, settings: str = ""):
    from ase import Atoms

    res = calc.results
    require = getattr(calc, "require_learned", None)  # MACEFieldCalculator's trust check
    if require is not None:  # logged beside the forces, read from the same results
        require(["energy"], "MD's logged enthalpy")
    learned = calc.model.learned_quantities(calc.head) if hasattr(calc, "model") else None
    frame = Atoms(atoms.get_chemical_symbols(), positions=atoms.get_positions(), cell=atoms.get_cell(),
                  pbc=atoms.get_pbc())
    frame.set_momenta(atoms.get_momenta())
    frame.arrays["forces"] = np.asarray(res["forces"]).copy()
    kinetic = float(atoms.get_kinetic_energy())
    info = {
        "step": step, "time_fs": t_fs, "electric_field": calc.field_now().copy(),
        "enthalpy": float(res["energy"]), "kinetic_energy": kinetic, "total_energy": float(res["energy"]) + kinetic,
        "temperature": float(atoms.get_temperature()), "volume": float(atoms.get_volume()),
    }
    # P(t) and the stress are logged where the head learned them (a run under a field was refused
    # above unless it learned P): never a column of meaningless numbers
    if "polarisation" in res and (learned is None or "polarisation" in learned or
                                  (getattr(calc, "allow_untrained", False) and require is not None)):
        if learned is not None and "polarisation" not in learned:
            require(["polarisation"], "MD's logged P(t)")  # records the allowed override
        info["polarisation"] = np.asarray(res["polarisation"]).copy()
    if "stress" in res and (learned is None or "stress" in learned):
        info["stress"] = np.asarray(res["stress"]).copy()
    if with_response:
        info["polarisability"] = calc.get_polarisability(atoms).reshape(9).copy()
        if becs:
            frame.arrays["becs"] = calc.get_becs(atoms).reshape(len(atoms), 9).copy()
    info["units"] = FRAME_UNITS
    if settings:
        info["md_settings"] = settings
    fingerprint = _fingerprint(calc)
    if fingerprint:  # which model wrote the frame: a restart with another one is refused
        info["model_sha256"] = fingerprint
    untrained = untrained_warnings(calc)
    if untrained:  # every frame: a restart, or a reader of any one frame, sees it
        info["untrained"] = "; ".join(untrained)
    frame.info.update(info)
    return frame


def untrained_warnings(calc) -> list:
    """What the calculator computed that its head never learned (``--allow-untrained``)."""
    return list(getattr(calc, "untrained_warnings", None) or [])


def divergence(atoms, forces, before: np.ndarray, timestep_fs: float) -> Optional[str]:
    """Why the state after a step shows the integration blew up, or None: non-finite forces,
    positions, velocities or energy, an atom that moved more than ``MAX_STEP_DISPLACEMENT`` in
    the step, or one whose velocity would take it that far in the next."""
    if not np.all(np.isfinite(forces)):
        return "non-finite forces"
    energy = (getattr(atoms.calc, "results", None) or {}).get("energy", 0.0)
    if not np.isfinite(energy):
        return "a non-finite energy"
    pos = atoms.get_positions()
    if not np.all(np.isfinite(pos)) or not np.all(np.isfinite(atoms.get_momenta())):
        return "non-finite positions or velocities"
    moved = np.linalg.norm(pos - before, axis=1)
    k = int(np.argmax(moved))
    if moved[k] > MAX_STEP_DISPLACEMENT:
        return f"atom {k} moved {moved[k]:.3g} A in one step (more than {MAX_STEP_DISPLACEMENT:g} A)"
    speed = np.linalg.norm(atoms.get_velocities(), axis=1) * units.fs  # A/fs
    k = int(np.argmax(speed))
    if speed[k] * timestep_fs > MAX_STEP_DISPLACEMENT:
        return (f"atom {k} moves at {speed[k]:.3g} A/fs ({speed[k] * timestep_fs:.3g} A per step, temperature "
                f"{atoms.get_temperature():.3g} K)")
    return None


def diverged(step: int, t_fs: float, reason: str, timestep_fs: float, field, out: Path,
             last_written: Optional[int]) -> RunFailedError:
    kept = (f"{out} keeps the frames up to step {last_written}" if last_written is not None
            else f"no frame was written to {out}")
    advice = f"a smaller time step (now {timestep_fs:g} fs)" + (" or a weaker field" if field is not None else "")
    return RunFailedError(f"the dynamics diverged at step {step} (t = {t_fs:g} fs): {reason}; {kept}; try {advice}")


def run_md(atoms, calc, out, steps: int, timestep_fs: float = 1.0, ensemble: str = "nvt",
           temperature_K: float = 300.0, friction_per_fs: float = 0.01, field=None, log_every: int = 10,
           response_every: Optional[int] = None, becs: bool = False, seed: int = 0, restart: bool = True,
           init_temperature_K: Optional[float] = None, progress: bool = True) -> Dict[str, Any]:
    """Run ``steps`` MD steps in total (a restart continues up to the same total); see the module
    docstring. ``response_every`` (a multiple of ``log_every``): also log alpha (and Z*).
    ``init_temperature_K``: Maxwell-Boltzmann velocities for a fresh start (default: the
    thermostat's temperature for NVT, keep the structure's momenta for NVE)."""
    import ase.io

    from mf_lightning.data.graphs import GeometryError

    out = Path(out)
    check_dynamics(steps, timestep_fs, temperature_K, friction_per_fs, log_every, response_every)
    check_output(out)
    check_periodic(atoms)
    if response_every is not None and response_every % log_every:
        raise ArgumentError(f"response_every ({response_every}) must be a multiple of log_every ({log_every})")
    out.parent.mkdir(parents=True, exist_ok=True)
    if field is not None:
        if callable(field) and not isinstance(field, (FieldProtocol, FieldFunction)):
            field = FieldFunction(field, getattr(field, "__name__", repr(field)))
        calc.set_field(field)
    atoms = atoms.copy()
    # what a continued run must share with the one that wrote the trajectory (the field is checked
    # against the logged one at the restart time)
    settings = (f"ensemble={ensemble} dt_fs={float(timestep_fs):g} T_K={float(temperature_K):g} "
                f"friction_per_fs={float(friction_per_fs):g} seed={int(seed)}")
    start = last_frame(out) if restart else None
    fingerprint = _fingerprint(calc)
    if start is not None:
        written_by = start.info.get("model_sha256")
        if fingerprint and written_by and written_by != fingerprint:
            raise InputError(f"{out}: written by another model (sha256 {written_by[:12]}..., this one "
                             f"{fingerprint[:12]}...): continuing it would mix two models' dynamics; use another "
                             "--out, or --no-restart to start it again")
        step0, t0 = int(start.info["step"]), float(start.info["time_fs"])
        written_with = start.info.get("md_settings")
        if written_with and written_with != settings:
            raise InputError(f"{out}: written with other settings ({written_with}; now {settings}): continuing "
                             "it would splice two runs; use another --out, or --no-restart to start it again")
        saved_time, calc.time = calc.time, t0
        now, logged = calc.field_now(), np.asarray(start.info.get("electric_field", np.zeros(3)), float)
        calc.time = saved_time
        if not np.allclose(now, logged, rtol=1e-6, atol=1e-9):
            raise InputError(f"{out}: its last frame (t = {t0:g} fs) was run at the field {logged.tolist()} V/A, this "
                             f"run's field there is {now.tolist()} V/A: continuing it would splice two field "
                             "protocols; use another --out, or --no-restart to start it again")
        atoms.set_cell(start.get_cell())
        atoms.set_positions(start.get_positions())
        atoms.set_momenta(start.get_momenta())
        log.info("%s: restarting from step %d (t = %.1f fs)", out, step0, t0)
    else:
        step0, t0 = 0, 0.0
        t_init = init_temperature_K
        if t_init is None:
            t_init = temperature_K if ensemble == "nvt" else None
        if t_init is not None:
            from ase.md import velocitydistribution as vd

            # ASE >= 3.29 names it thermalize_momenta; older versions MaxwellBoltzmannDistribution
            thermalize = getattr(vd, "thermalize_momenta", None) or vd.MaxwellBoltzmannDistribution
            thermalize(atoms, temperature_K=t_init, rng=np.random.default_rng(seed))
            vd.Stationary(atoms)
    atoms.calc = calc
    # the thermostat's noise depends on (seed, step of the start), so a restart is reproducible
    dyn = make_dynamics(atoms, ensemble, timestep_fs, temperature_K, friction_per_fs, seed + step0)
    calc.time = t0
    forces = atoms.get_forces()  # the structure's own problems (and an untrained head) stop here, before any write
    if not np.all(np.isfinite(forces)):
        raise RunFailedError(f"the model's forces on the {'restart frame' if start is not None else 'structure'} are "
                             "not finite: nothing was written")
    require = getattr(calc, "require_learned", None)  # MACEFieldCalculator's trust check, before any byte
    if require is not None:  # of an old trajectory is removed or a new one begun
        require(["energy", "forces"], "MD (its forces and enthalpy)")
        if field is not None:  # under a field the forces include Z*.E: the head must know the response
            require(["polarisation"], "MD under a field (its forces include the field's)")
        if response_every is not None:
            require(["polarisability"] + (["becs"] if becs else []), "MD's logged response (--response-every)")
    if not restart and out.exists():
        out.unlink()
    fh = open(out, "a")
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=steps, initial=step0, unit="step", desc="MD", file=sys.stderr)
    last_written = step0 if start is not None else None
    try:
        if step0 == 0:
            ase.io.write(fh, _frame(atoms, calc, 0, 0.0, response_every is not None, becs, settings), format="extxyz")
            fh.flush()
            last_written = 0
        step, t = step0, t0
        while step < steps:
            calc.time = t + timestep_fs  # the time of the positions the step is about to reach
            before = atoms.get_positions()
            try:
                forces = dyn.step(forces)
            except GeometryError as exc:  # the evolved positions, not the input: the dynamics blew up
                reason = str(exc).split(": ", 1)[-1]
                raise diverged(step + 1, t + timestep_fs, reason, timestep_fs, field, out, last_written) from exc
            dyn.nsteps += 1
            step += 1
            t += timestep_fs
            problem = divergence(atoms, forces, before, timestep_fs)
            if problem:  # checked every step, before the frame is written: a restart never starts from it
                raise diverged(step, t, problem, timestep_fs, field, out, last_written)
            if bar is not None:
                bar.update(1)
            if step % log_every == 0 or step == steps:
                with_resp = response_every is not None and step % response_every == 0
                ase.io.write(fh, _frame(atoms, calc, step, t, with_resp, becs, settings), format="extxyz")
                fh.flush()
                os.fsync(fh.fileno())
                last_written = step
    finally:
        fh.close()
        if bar is not None:
            bar.close()
    result = {"trajectory": str(out), "steps": steps, "started_at": step0, "timestep_fs": timestep_fs}
    untrained = untrained_warnings(calc)
    if untrained:
        result["untrained"] = untrained
    return result


def read_log(path, keys: Sequence[str] = ("time_fs", "electric_field", "polarisation", "total_energy",
                                          "temperature", "volume")) -> Dict[str, np.ndarray]:
    """Per-frame ``info`` values of a trajectory as arrays (frames lacking a key are skipped for it,
    e.g. ``polarisability`` logged every ``response_every`` steps: see ``<key>_time_fs``)."""
    from mf_lightning.data.reader import iter_frames

    values: Dict[str, list] = {k: [] for k in keys}
    times: Dict[str, list] = {k: [] for k in keys}
    for _, atoms in iter_frames(path):
        for k in keys:
            if k in atoms.info:
                values[k].append(np.asarray(atoms.info[k], dtype=float))
                times[k].append(float(atoms.info["time_fs"]))
    out = {k: np.array(v) for k, v in values.items()}
    out.update({f"{k}_time_fs": np.array(times[k]) for k in keys})
    return out


def check_input_file(path, kind: str) -> None:
    """``path`` must be a readable regular file: a missing one is "no such <kind>", a folder or a
    device is named as such, and any other failure keeps the OS's own reason (a symbolic link
    loop, a name too long, a path through a file, no permission), one line by the CLIs."""
    from mf_lightning.files import check_readable_file

    check_readable_file(path, kind)


def load_structure(path: str, frame: int = 0, supercell: Optional[Sequence[int]] = None, periodic: bool = False):
    """Frame ``frame`` of any file ASE reads; unreadable files and missing frames are input errors.
    ``periodic``: a structure that is not 3D-periodic is one too (:func:`check_periodic`)."""
    import ase.io

    from mf_lightning.data.graphs import check_geometry

    check_input_file(path, "structure file")
    try:
        atoms = ase.io.read(path, index=frame)
    except (StopIteration, IndexError) as exc:
        raise InputError(f"{path}: no frame {frame} (the file has fewer)") from exc
    except Exception as exc:  # noqa: BLE001 - ASE raises many types for malformed files
        reason = " ".join(str(exc).split())
        raise InputError(f"{path}: cannot read a structure ({type(exc).__name__}: {reason})") from exc
    atoms.calc = None
    from mf_lightning.data.structures import check_occupancy

    try:  # a CIF's partial occupancies: ASE put one full atom on each such site
        check_occupancy(atoms, f"{path}: frame {frame}")
    except ValueError as exc:
        raise InputError(str(exc)) from exc
    check_geometry(atoms, f"{path}: frame {frame}")
    if periodic:
        check_periodic(atoms, f"{path}: frame {frame}")
    if supercell:
        atoms = atoms.repeat(tuple(int(x) for x in supercell))
    return atoms
