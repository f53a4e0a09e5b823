"""Training entry point (Hydra): ``mf-train experiment=<name> [overrides]`` (installed console
script) or ``python train.py ...`` in a checkout; the configs ship in ``mf_lightning/conf``.

Only puts things in order; see :mod:`mf_lightning.train.pipeline`. Returns the validation metric
named by ``optimized_metric`` (for sweepers). ``demo.only=true`` instead prints the response
of the configured, untrained model for one structure. ``ensemble=N`` trains a deep ensemble
(:mod:`mf_lightning.train.ensemble`).

The command line is composed once before Hydra runs (:func:`hydra_entry`): an unknown key or
group option is one line ``train.py: error: ...`` and exit code 2, before any folder is made.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Callable, Dict, List, Optional

# paths.root_dir: the checkout (train.py sets it) or, installed, the working directory
os.environ.setdefault("PROJECT_ROOT", os.getcwd())

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from mf_lightning.cli import CONF_DIR as CONF  # noqa: E402

PROG = "train.py"
HELP_FLAGS = ("--help", "-h")


def config_groups(conf: Path) -> Dict[str, List[str]]:
    """The config groups of ``conf`` (folders of yaml files, ``hydra/`` aside) and their options."""
    groups = {}
    for folder in sorted(p for p in conf.rglob("*") if p.is_dir()):
        group = folder.relative_to(conf).as_posix()
        options = sorted(f.stem for f in folder.glob("*.yaml"))
        if options and group.split("/")[0] != "hydra":
            groups[group] = options
    return groups


def fast_help(config_name: str) -> str:
    """The app's ``--help``: ``conf/hydra/help/<config_name>.yaml``'s template, with
    ``$APP_CONFIG_GROUPS`` listed from the config folders. Hydra's own ``--help`` composes every
    option of every group first (seconds); this reads one small file."""
    import string

    import yaml

    from mf_lightning.cli import CONF_DIR

    spec = yaml.safe_load((CONF_DIR / "hydra" / "help" / f"{config_name}.yaml").read_text())
    groups = "\n".join(f"{g}: {', '.join(opts)}" for g, opts in config_groups(CONF_DIR).items())
    return string.Template(spec["template"]).substitute(APP_CONFIG_GROUPS=groups)


def data_path_overrides(argv: list, training: bool) -> list:
    """``data=<file>`` for a plain extxyz file: Hydra reads ``data=`` as a choice of the config group
    ``conf/data``, which cannot be a path, so it becomes ``data=extxyz data.file=<absolute path>
    data.name=<file stem>`` (the dataset, its metrics ``val/<stem>/...`` and parity plots are named
    after the file). For training a plain file is also split (``val_fraction``/``test_fraction``
    0.1 each, unless given: eval evaluates every structure)."""
    out, given = [], {a.split("=", 1)[0] for a in argv if "=" in a}
    for arg in argv:
        if arg.startswith("data="):
            value = arg.split("=", 1)[1]
            if not (CONF / "data" / f"{value}.yaml").exists() and (
                    Path(value).exists() or value.endswith((".xyz", ".extxyz"))):
                name = re.sub(r"[^A-Za-z0-9_]+", "_", Path(value).stem).strip("_") or "data"
                out += ["data=extxyz", f"data.file={Path(value).resolve()}"]
                out += [] if "data.name" in given else [f"data.name={name}"]
                if training:
                    out += [f"data.{k}=0.1" for k in ("val_fraction", "test_fraction") if f"data.{k}" not in given]
                continue
        out.append(arg)
    return out


def hydra_entry(hydra_main: Callable[[], None], config_name: str, prog: str) -> None:
    """Check the command line as Hydra will compose it (:func:`~mf_lightning.train.config_check.check_command_line`),
    then run ``hydra_main``. Hydra's own report of a composition error is several lines and exit
    code 1; here it is one line and exit code 2, as for every other configuration error
    (``debug=true``, ``MF_DEBUG=1`` or ``HYDRA_FULL_ERROR=1`` show the traceback).
    ``--help`` is :func:`fast_help` (``--hydra-help`` stays Hydra's)."""
    if any(a in HELP_FLAGS for a in sys.argv[1:]):
        print(fast_help(config_name))
        sys.exit(0)
    from mf_lightning.cli._common import report
    from mf_lightning.train.config_check import ConfigError, check_command_line

    try:
        check_command_line(config_name, sys.argv[1:])
    except ConfigError as exc:
        sys.exit(report(exc, prog))
    hydra_main()


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def hydra_main(cfg: DictConfig):
    from mf_lightning.cli._common import run_hydra_job

    return run_hydra_job(_main, cfg, PROG)


def _main(cfg: DictConfig):
    if cfg.demo.only:
        from pathlib import Path

        from mf_lightning.cli.demo import response_demo
        from mf_lightning.train.config_check import ConfigError, check_train_config
        from mf_lightning.train.run_folder import run_outputs, write_run_record

        check_train_config(cfg)
        folder = Path(cfg.paths.output_dir)
        if run_outputs(folder):  # its .hydra/ record is that run's
            raise ConfigError(f"{folder} holds a training run: the demo would replace its record (.hydra/); "
                              "choose another hydra.run.dir")
        write_run_record(cfg, folder)
        response_demo(cfg)
        return None
    if int(cfg.get("ensemble") or 0) > 0:  # N members into <run>/member_<k>/, then <run>/ensemble.pt
        from mf_lightning.train.config_check import check_train_config

        check_train_config(cfg)
        return train_ensemble(cfg)
    from mf_lightning.train.pipeline import train

    return train(cfg)


def train_ensemble(cfg) -> Optional[float]:
    """``train.py ... ensemble=N`` (:mod:`mf_lightning.train.ensemble`): train the members one
    after the other, then write ``<run>/ensemble.pt`` calibrated on the validation split;
    returns the members' mean ``optimized_metric``."""
    import logging
    from pathlib import Path

    from mf_lightning.analysis.uncertainty import calibrate_on_validation, calibration_table
    from mf_lightning.model.ensemble import combine, save_ensemble
    from mf_lightning.train.ensemble import member_config
    from mf_lightning.train.pipeline import _process_rank, train

    run_dir = Path(cfg.paths.output_dir)
    n = int(cfg.ensemble)
    values = []
    for k in range(n):
        logging.getLogger(__name__).info("ensemble member %d of %d (seed %d)", k + 1, n, int(cfg.seed) + k)
        values.append(train(member_config(cfg, k, run_dir)))
    if _process_rank() != 0:
        return None
    ensemble = combine([run_dir / f"member_{k}" for k in range(n)])
    calibration = calibrate_on_validation(ensemble, member_config(cfg, 0, run_dir))
    if calibration:
        print(calibration_table(calibration))
    save_ensemble(ensemble, run_dir / "ensemble.pt")
    print(f"run directory: {run_dir} (ensemble.pt: {n} members, sigma {ensemble.describe_sigma()}; "
          f"member_<k>/ each a run folder)")
    finite = [v for v in values if v is not None]
    return sum(finite) / len(finite) if finite else None


def main() -> None:
    """The console script ``mf-train`` (and ``train.py``); ``data=<file.xyz>`` trains on a plain file
    (:func:`data_path_overrides`)."""
    sys.argv = [sys.argv[0]] + data_path_overrides(sys.argv[1:], training=True)
    hydra_entry(hydra_main, "train", PROG)


if __name__ == "__main__":
    main()
