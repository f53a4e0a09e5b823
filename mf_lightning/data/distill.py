"""Self-distillation replay: label structures with the source model's own E, F, S.

For users without the source model's training data (e.g. MPtrj for a MACE foundation model):
the source model's zero-field predictions on any structures become the replay labels that keep
the fine-tuned model close to it. Writes extxyz with ``REF_energy``, ``REF_forces``,
``REF_stress`` (Voigt 6) in ``info``/``arrays`` (never in a calculator, where loaders would not
look), matching ``conf/data/replay.yaml``.

``python -m mf_lightning.data.distill --model MACE.model --allow-pickle STRUCTURES... --out replay.xyz``
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np

from mf_lightning.calculator import MACEFieldCalculator
from mf_lightning.cli.runner import cli_main
from mf_lightning.cli.runner import parser as cli_parser
from mf_lightning.errors import EXIT_OK, EXIT_PARTIAL, InputError
from mf_lightning.model.field_mace import FieldMACE


def distill(model: FieldMACE, structures: Iterable, out, every: int = 1,
            errors: Optional[Path] = None, head: Optional[str] = None) -> int:
    """Label ``structures`` (ASE Atoms, or (id, Atoms or the error reading it) items) with
    ``model`` at zero field; returns the count written. A structure that cannot be labelled
    (unreadable, overlapping atoms, a non-finite label) is skipped and listed in ``errors``
    (default ``<out>.errors.csv``), as the screening CLI does; the file is written atomically."""
    import ase.io

    from mf_lightning.predict import TableWriter
    from mf_lightning.utils import atomic_open

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


PROG = "python -m mf_lightning.data.distill"


@cli_main(PROG)
def main(argv: Optional[Sequence[str]] = None) -> int:
    p = cli_parser(PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("structures", nargs="+")
    p.add_argument("--model", required=True,
                   help="mace .model file, a foundation-model name (mace-mp-0:medium) or URL, "
                   "or an mf-lightning model file")
    p.add_argument("--allow-pickle", action="store_true", help="allow unpickling a mace .model file (runs its code)")
    p.add_argument("--out", required=True)
    p.add_argument("--every", type=int, default=1, help="keep every N-th structure")
    args = p.parse_args(argv)
    from mf_lightning.model.io import ModelFileError, load_model

    try:
        model = load_model(args.model)
    except ModelFileError:
        model = FieldMACE.from_mace(args.model, allow_pickle=args.allow_pickle, form="none")
    from mf_lightning.predict import expand_inputs, iter_structures

    out = Path(args.out)
    if any(out.resolve() == p for p in expand_inputs(args.structures)):
        raise InputError(f"--out {out} is also an input: choose another output file")
    errors = out.with_name(out.stem + ".errors.csv")
    n = distill(model, iter_structures(args.structures), out, args.every, errors=errors)
    failed = sum(1 for _ in open(errors)) - 1 if errors.exists() else 0
    print(f"wrote {n} structures labelled by {args.model} to {out}"
          + (f"; {failed} skipped (see {errors})" if failed else ""))
    return EXIT_PARTIAL if failed else EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
