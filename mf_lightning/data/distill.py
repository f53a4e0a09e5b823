"""Self-distillation replay: label structures with the source model's own E, F, S.

For users without the source model's training data (e.g. MPtrj for a MACE foundation model):
the source model's zero-field predictions on any structures become the replay labels that keep
the fine-tuned model close to it. Writes extxyz with ``REF_energy``, ``REF_forces``,
``REF_stress`` (Voigt 6) in ``info``/``arrays`` (never in a calculator, where loaders would not
look), matching ``conf/data/replay.yaml``.

``python -m mf_lightning.data.distill --model MACE.model --allow-pickle STRUCTURES... --out replay.xyz``
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np

from mf_lightning.calculator import MACEFieldCalculator
from mf_lightning.model.field_mace import FieldMACE


def distill(model: FieldMACE, structures: Iterable, out, every: int = 1) -> int:
    """Label ``structures`` (ASE Atoms) with ``model`` at zero field; returns the count written."""
    import ase.io

    calc = MACEFieldCalculator(model)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    n = 0
    with open(tmp, "w") as fh:
        for i, atoms in enumerate(structures):
            if i % every:
                continue
            atoms = atoms.copy()
            atoms.calc = calc
            energy = atoms.get_potential_energy()
            forces = atoms.get_forces()
            stress = atoms.get_stress() if all(atoms.pbc) else None
            labelled = atoms.copy()  # no calculator: labels go to info/arrays
            labelled.info = {k: v for k, v in atoms.info.items() if not k.startswith("REF_")}
            labelled.info["REF_energy"] = float(energy)
            if stress is not None:
                labelled.info["REF_stress"] = np.asarray(stress)
            labelled.arrays["REF_forces"] = np.asarray(forces)
            ase.io.write(fh, labelled, format="extxyz")
            n += 1
    tmp.replace(out)
    return n


def main(argv: Optional[Sequence[str]] = None) -> int:
    import ase.io

    p = argparse.ArgumentParser(prog="python -m mf_lightning.data.distill", description=__doc__.split("\n\n")[0])
    p.add_argument("structures", nargs="+")
    p.add_argument("--model", required=True, help="mace .model file, or an mf-lightning model file")
    p.add_argument("--allow-pickle", action="store_true", help="allow unpickling a mace .model file (runs its code)")
    p.add_argument("--out", required=True)
    p.add_argument("--every", type=int, default=1, help="keep every N-th structure")
    args = p.parse_args(argv)
    from mf_lightning.model.io import load_model, ModelFileError

    try:
        model = load_model(args.model)
    except ModelFileError:
        model = FieldMACE.from_mace(args.model, allow_pickle=args.allow_pickle, form="none")
    frames = (a for f in args.structures for a in ase.io.iread(f, index=":"))
    n = distill(model, frames, args.out, args.every)
    print(f"wrote {n} structures labelled by {args.model} to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
