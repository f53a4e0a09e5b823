"""Self-distillation replay: label structures with the source model's own E, F, S.

For users without the source model's training data (e.g. MPtrj for a MACE foundation model):
the source model's zero-field predictions on any structures become the replay labels that keep
the fine-tuned model close to it. Writes extxyz with ``REF_energy``, ``REF_forces``,
``REF_stress`` (Voigt 6) in ``info``/``arrays`` (never in a calculator, where loaders would not
look), matching ``conf/data/replay.yaml``.

``mf-distill --model MACE.model --allow-pickle STRUCTURES... --out replay.xyz``
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Optional

import numpy as np

from mf_lightning.model.field_mace import FieldMACE
from mf_lightning.simulation.calculator import MACEFieldCalculator


def distill(model: FieldMACE, structures: Iterable, out, every: int = 1,
            errors: Optional[Path] = None, head: Optional[str] = None) -> int:
    """Label ``structures`` (ASE Atoms, or (id, Atoms or the error reading it) items) with
    ``model`` at zero field; returns the count written. A structure that cannot be labelled
    (unreadable, overlapping atoms, a non-finite label) is skipped and listed in ``errors``
    (default ``<out>.errors.csv``), as the screening CLI does; the file is written atomically."""
    import ase.io

    from mf_lightning.files import TableWriter, atomic_open

    calc = MACEFieldCalculator(model, head=head)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    errors = Path(errors) if errors else out.with_name(out.stem + ".errors.csv")
    error_writer = TableWriter(errors, ["id", "error"], fresh=True)
    n = 0
    try:
        with atomic_open(out, "w") as fh:
            for i, item in enumerate(structures):
                if i % every:
                    continue
                ident, atoms = item if isinstance(item, tuple) else (f"structure {i}", item)
                try:
                    if isinstance(atoms, Exception):
                        raise atoms
                    labelled = _label(calc, atoms, ident)
                except Exception as exc:  # noqa: BLE001 - one bad structure never stops the rest
                    error_writer.write([{"id": ident, "error": " ".join(f"{type(exc).__name__}: {exc}".split())}])
                    continue
                ase.io.write(fh, labelled, format="extxyz")
                n += 1
    finally:
        error_writer.close()
    return n


def _label(calc, atoms, ident: str):
    from mf_lightning.data.graphs import check_geometry

    check_geometry(atoms, ident)
    atoms = atoms.copy()
    atoms.calc = calc
    energy = atoms.get_potential_energy()
    forces = atoms.get_forces()
    stress = atoms.get_stress() if all(atoms.pbc) else None
    values = [np.asarray(energy), np.asarray(forces)] + ([np.asarray(stress)] if stress is not None else [])
    if not all(np.all(np.isfinite(v)) for v in values):
        raise ValueError(f"{ident}: the model's labels are not finite")
    labelled = atoms.copy()  # no calculator: labels go to info/arrays
    labelled.info = {k: v for k, v in atoms.info.items() if not k.startswith("REF_")}
    labelled.info["REF_energy"] = float(energy)
    if stress is not None:
        labelled.info["REF_stress"] = np.asarray(stress)
    labelled.arrays["REF_forces"] = np.asarray(forces)
    return labelled
