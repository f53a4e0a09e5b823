"""Re-export the shipped models in the current model-file format (issue 26, item 5).

The four ``experiments/models/*.pt`` were written before model files recorded what each head
learned (``head_quantities``), their training composition (``training_elements``) and the
whole-record checksum. This script reads each file, records

* ``head_quantities`` from the file's own loss scales (a task without labels got exactly 1.0:
  :func:`mf_lightning.train.losses.label_scales`), checked against the quantities its preset's
  data config labels;
* ``training_elements``: per element, the training structures that contain it, from the preset's
  own training split (the same data config and seed as the run that trained it);

and writes the file again with :func:`mf_lightning.model.io.save_model` (weights unchanged,
bit for bit: the script checks). Run from the checkout: ``python experiments/models/reexport.py``.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch

import mf_lightning  # noqa: F401  (mace before e3nn)
from mf_lightning.model.io import load_model, save_model

HERE = Path(__file__).resolve().parent
CONF = HERE.parents[1] / "mf_lightning" / "conf"
PRESETS = {"sio2_md_cpu": "sio2_md_cpu", "batio3_md_cpu": "batio3_md_cpu",
           "mp_dielectric_cpu": "mp_dielectric_cpu", "ferroelectric_cpu": "ferroelectric_cpu"}


def training_split(experiment: str, out: Path):
    from hydra import compose, initialize_config_dir

    from mf_lightning.train.pipeline import make_datamodule

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"experiment={experiment}", f"paths.output_dir={out}"])
    dm = make_datamodule(cfg)
    dm.setup()
    return cfg, dm


def main() -> int:
    from mf_lightning.train.pipeline import head_quantities, training_element_counts

    for name, experiment in PRESETS.items():
        path = HERE / f"{name}.pt"
        model = load_model(path)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        learned = sorted(model.learned_quantities())
        with tempfile.TemporaryDirectory() as tmp:
            cfg, dm = training_split(experiment, Path(tmp))
            configured = head_quantities(cfg, dm)
        if list(dm.atomic_numbers) != list(model.atomic_numbers):
            raise SystemExit(f"{name}: the preset's element table is not the model's")
        (only,) = configured.values()
        if set(only) != set(learned):
            raise SystemExit(f"{name}: loss scales say {learned}, the preset labels {only}")
        model.head_quantities = {model.heads[0]: [q for q in only]}
        model.training_elements = training_element_counts(dm.train_graphs(), dm.atomic_numbers)
        save_model(model, path)
        again = load_model(path)
        assert all(torch.equal(before[k], v) for k, v in again.state_dict().items()), name
        unseen = sum(1 for n in model.training_elements.values() if n == 0)
        print(f"{name}: head {model.heads[0]!r} learned {', '.join(only)}; "
              f"{len(model.training_elements)} elements, {unseen} in no training structure")
    return 0


if __name__ == "__main__":
    sys.exit(main())
