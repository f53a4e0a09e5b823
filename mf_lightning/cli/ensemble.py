"""``mf-ensemble``: combine trained runs into one ensemble model file (a deep ensemble), and
calibrate its spread.

  mf-ensemble outputs/run_seed0 outputs/run_seed1 outputs/run_seed2 --out ensemble.pt
  mf-ensemble multirun/<sweep> --out ensemble.pt --calibrate mp_dielectric        # its val split
  mf-ensemble ensemble.pt --out ensemble.pt --calibrate held_out.xyz               # recalibrate

Members are run folders (their model.pt; the ids of their training structures from splits/),
sweep or ensemble-run folders (every run below), model files, or ensemble files (their members).
They must share the element table, dtype, heads and cutoff. --calibrate fits one factor per
quantity so that 68.27 % of the errors lie within one sigma on the data (read as eval.py reads it; structures any
member trained on are left out) and the high_uncertainty threshold (the --percentile of the
calibrated per-structure sigma), and stores both in the file (mf_lightning.analysis.uncertainty).
"""

from __future__ import annotations

import os
import sys
from typing import Optional, Sequence

from mf_lightning.cli._common import RawDescriptionHelpFormatter, cli_main, setup_process, writable_output
from mf_lightning.cli._common import parser as cli_parser

PROG = "mf-ensemble"
SPLITS = ("auto", "train", "val", "test", "all")


def build_parser():
    parser = cli_parser(PROG, description=description(), formatter_class=RawDescriptionHelpFormatter)
    parser.add_argument("members", nargs="+", metavar="RUN_OR_MODEL",
                        help="run folders, sweep folders, model.pt files or ensemble files")
    parser.add_argument("--out", required=True, help="the ensemble model file to write")
    parser.add_argument("--calibrate", default=None, metavar="DATA",
                        help="calibrate on a data config of conf/data (e.g. mp_dielectric) or a labelled extxyz file")
    parser.add_argument("--split", default="auto", choices=SPLITS,
                        help="--calibrate: the split; auto: val of a data config, every structure of a file")
    parser.add_argument("--seed", type=int, default=None,
                        help="--calibrate: the split seed of a data config (default: the members' data.seed, read from "
                             "their run folders' .hydra/config.yaml; 0 where none is recorded)")
    parser.add_argument("--override", action="append", default=None, metavar="KEY=VALUE",
                        help="--calibrate: a key of eval.py's config, e.g. data.test_file=held.xyz (repeatable)")
    parser.add_argument("--percentile", type=float, default=95.0,
                        help="--calibrate: high_uncertainty above this percentile of the calibration split's sigma")
    parser.add_argument("--head", default=None, help="--calibrate: the head (default: each source's own)")
    parser.add_argument("--device", default="cpu", help="torch device (cpu, cuda, cuda:1, ...)")
    parser.add_argument("--batch-size", type=int, default=8, help="--calibrate: structures per forward pass")
    return parser


def members_split_seed(members) -> int:
    """The data split seed the members trained on (``data.seed`` of their runs' resolved configs,
    searched below each given folder); 0 where no run records one. Members of different split
    seeds are refused: no validation split is free of all their training structures."""
    from pathlib import Path

    from omegaconf import OmegaConf

    from mf_lightning.errors import InputError

    seeds = set()
    for member in members:
        root = Path(member)
        configs = root.rglob(".hydra/config.yaml") if root.is_dir() else ()
        for config in configs:
            cfg = OmegaConf.load(config)  # data.seed is an interpolation of seed unless fixed
            keys = ["data.seed"] + [f"data.sources.{k}.seed" for k in (OmegaConf.select(cfg, "data.sources") or {})]
            values = [OmegaConf.select(cfg, k, default=None, throw_on_resolution_failure=False) for k in keys]
            seeds |= {int(v) for v in values if isinstance(v, int)}
    if len(seeds) > 1:
        raise InputError(f"the members were trained on different data splits (data.seed {sorted(seeds)}): "
                         "give --seed to choose the calibration split")
    return seeds.pop() if seeds else 0


def description() -> str:
    """This module's docstring (read from its source: ``--help`` imports nothing heavy)."""
    import ast

    return ast.get_docstring(ast.parse(open(__file__, encoding="utf-8").read())) or ""


def calibration_data(data: str, ensemble, split: str = "auto", seed: int = 0, head: Optional[str] = None,
                     overrides: Sequence[str] = ()):
    """(set-up data module, split) of ``data`` (a data config of ``conf/data`` or an extxyz file),
    read as ``eval.py`` reads it (:func:`mf_lightning.cli.train.data_path_overrides`), bound to the
    ensemble; ``split`` auto: ``val`` of a data config (made with ``seed``), every structure of a file."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from mf_lightning.cli import CONF_DIR
    from mf_lightning.cli.train import data_path_overrides
    from mf_lightning.data.datamodules import FieldDataModule
    from mf_lightning.train.config_check import ConfigError, check_eval_config
    from mf_lightning.train.pipeline import bind_to_model, make_datamodule

    os.environ.setdefault("PROJECT_ROOT", os.getcwd())
    argv = data_path_overrides([f"data={data}", f"seed={int(seed)}", "model_file=-", "paths.output_dir=null",
                                *overrides], training=False)
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose("eval", overrides=argv)
    except (HydraException, OmegaConfBaseException) as exc:  # an unknown data config or key: one line
        raise ConfigError(f"--calibrate {data}: {str(exc).splitlines()[0]}") from exc
    check_eval_config(cfg)
    dm = make_datamodule(cfg)
    bind_to_model(dm, ensemble, head=head)
    if split == "auto":
        split = "all" if all(type(src) is FieldDataModule for src in dm.sources.values()) else "val"
    dm.setup()
    return dm, split


@cli_main(PROG)
def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.calibrate and (args.split != "auto" or args.override):
        parser.error("--split and --override choose the calibration data: add --calibrate DATA")
    if not 0 < args.percentile < 100:
        parser.error(f"--percentile must be between 0 and 100, got {args.percentile}")
    if args.batch_size < 1:
        parser.error(f"--batch-size must be a positive integer, got {args.batch_size}")
    out = writable_output(args.out)
    setup_process()
    from mf_lightning.model.ensemble import combine, save_ensemble

    ensemble = combine(args.members, device=args.device)
    if args.calibrate and args.seed is None:
        args.seed = members_split_seed(args.members)
    if args.calibrate:
        from mf_lightning.analysis.uncertainty import calibrate, calibration_table

        dm, split = calibration_data(args.calibrate, ensemble, split=args.split, seed=args.seed, head=args.head,
                                     overrides=args.override or ())
        calibration = calibrate(ensemble, dm, split, batch_size=args.batch_size, percentile=args.percentile,
                                data=args.calibrate, seed=args.seed)
        print(calibration_table(calibration))
        print(f"calibrated on {args.calibrate} ({split} split, {sum(calibration['structures_used'].values())} "
              f"structures, {calibration['structures_left_out']} left out as a member's training data); units: "
              "high_uncertainty thresholds in eV/atom, eV/A, eV/A^3, e/A^2, e, e/(V*A)")
    else:
        print(f"{PROG}: not calibrated (no --calibrate): its sigma is the members' raw spread and it never raises "
              "high_uncertainty; calibrate it on labelled data none of the members trained on")
    save_ensemble(ensemble, out)
    print(f"wrote {out}: an ensemble of {ensemble.n_members} members; sigma {ensemble.describe_sigma()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
