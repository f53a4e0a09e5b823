"""Evaluation entry point (Hydra): ``mf-eval model=<model.pt> data=<config | extxyz path>``
(installed console script) or ``python eval.py ...`` in a checkout.

``model=`` is shorthand for ``model_file=`` (see :func:`rewrite_overrides`).
``data`` is a data config of ``conf/data`` (then ``split`` chooses which split, the test split by
default, made exactly as in training with the same ``seed``) or a path to any extxyz file with
labels under the internal names (``conf/data/extxyz.yaml``; every structure is evaluated).
Writes ``metrics.json`` and ``parity/*.png`` in the run directory and prints a table; see
:mod:`mf_lightning.analysis.evaluate`. An ensemble model (``mf-ensemble``) adds a second table:
per quantity, the fractions of errors within 1 and 2 predicted sigma and the Spearman
correlation of |error| with sigma.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("PROJECT_ROOT", os.getcwd())  # eval.py in a checkout sets the checkout

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402


def rewrite_overrides(argv: list) -> list:
    """Hydra reads ``key=value`` for a key that is also a config group (``conf/model``,
    ``conf/data``) as a choice of that group, which cannot be a path. So ``model=<file>`` becomes
    ``model_file=<file>``, and ``data=<file>`` is a plain extxyz file
    (:func:`mf_lightning.cli.train.data_path_overrides`, named after the file)."""
    from mf_lightning.cli.train import data_path_overrides

    argv = ["model_file=" + a.split("=", 1)[1] if a.startswith("model=") else a for a in argv]
    return data_path_overrides(argv, training=False)


PROG = "eval.py"


@hydra.main(version_base="1.3", config_path="../conf", config_name="eval")
def main(cfg: DictConfig):
    from mf_lightning.cli._common import run_hydra_job

    return run_hydra_job(_main, cfg, PROG)


def _main(cfg: DictConfig):
    from mf_lightning.analysis.evaluate import evaluate_datamodule, table, uncertainty_table
    from mf_lightning.data.datamodules import FieldDataModule
    from mf_lightning.model.io import load_model
    from mf_lightning.runtime import configure_process
    from mf_lightning.train.config_check import check_eval_config
    from mf_lightning.train.pipeline import bind_to_model, make_datamodule

    check_eval_config(cfg)  # before the model or any data is read
    configure_process(cfg.get("torch_threads"), malloc=cfg.get("malloc_tuning", True))
    model = load_model(cfg.model_file, device=cfg.device, dtype=cfg.dtype)
    dm = make_datamodule(cfg)
    bind_to_model(dm, model, head=cfg.head)
    split = cfg.split
    if split == "auto":
        plain = all(type(src) is FieldDataModule for src in dm.sources.values())
        split = "all" if plain else "test"
    for src in dm.sources.values():  # a held-out file alone: the training file is not read
        src.test_only = split == "test" and bool(src.test_file)
    dm.setup()
    for name, src in dm.sources.items():  # the units the labels were read in, before any number
        print(f"{name}: labels " + ", ".join(f"{q} = {s['key']} [{s['unit']}]" for q, s in src.labels.items()))
    out_dir = Path(cfg.paths.output_dir)
    metrics = evaluate_datamodule(model, dm, split, out_dir, batch_size=int(cfg.batch_size), ionic=bool(cfg.ionic),
                                  ionic_key=cfg.ionic_key, ionic_max_atoms=int(cfg.ionic_max_atoms),
                                  predictions=bool(cfg.predictions), plots=bool(cfg.plots),
                                  figure_format=str(cfg.get("figure_format", "png")),
                                  figure_dpi=float(cfg.get("figure_dpi", 300)),
                                  allow_untrained=bool(cfg.get("allow_untrained", False)),
                                  piezo_key=str(cfg.get("piezo_key", "REF_piezoelectric")),
                                  piezo_order=str(cfg.get("piezo_order", "vasp")))
    print(table(metrics))
    calibration = uncertainty_table(metrics)  # an ensemble: how well its sigma describes the errors
    if calibration:
        print(f"ensemble of {metrics['uncertainty']['members']} members, sigma {metrics['uncertainty']['sigma']}:")
        print(calibration)
    print(f"run directory: {out_dir} (metrics.json, parity/)")
    return metrics


def cli() -> None:
    """The console script: ``model=``/``data=`` shorthands rewritten, the command line checked
    (:func:`mf_lightning.cli.train.hydra_entry`: a Hydra composition error is one line, exit 2),
    then Hydra."""
    from mf_lightning.cli.train import hydra_entry

    sys.argv = [sys.argv[0]] + rewrite_overrides(sys.argv[1:])
    hydra_entry(main, "eval", PROG)


if __name__ == "__main__":
    cli()
