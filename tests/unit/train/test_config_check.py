"""The configuration checked once, up front (mf_lightning.train.config_check): every shipped
experiment passes; each bad value, unknown key or group option is a ConfigError naming its key,
all of a config's problems in one line. The run-folder decisions (mf_lightning.train.run_folder)
on real folders: which runs may use a folder that holds another, and what overwrite removes."""

from __future__ import annotations

import json

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf, open_dict

from mf_lightning.errors import InputError
from mf_lightning.train.config_check import (
    ConfigError,
    check_command_line,
    check_eval_config,
    check_train_config,
    command_line_overrides,
)
from mf_lightning.train.pipeline import non_finite_metrics
from mf_lightning.train.run_folder import claim_run_folder, config_differences, write_run_record
from tests.conftest import REPO

EXPERIMENTS = sorted(p.stem for p in (REPO / "conf" / "experiment").glob("*.yaml"))
NEEDS = {"finetune_replay": ["model.source=MACE.model", "data.sources.replay.file=replay.xyz"],
         "ablation_replay": ["model.source=MACE.model", "data.sources.replay.file=replay.xyz"]}


def composed(*overrides, config="train"):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose(config_name=config, overrides=list(overrides))


def train_error(*overrides) -> str:
    with pytest.raises(ConfigError) as info:
        check_train_config(composed(*overrides))
    return str(info.value)


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_shipped_experiment_passes(name):
    check_train_config(composed(f"experiment={name}", *NEEDS.get(name, [])))


@pytest.mark.parametrize("data", ["sio2", "extxyz", "mp_dielectric", "ferroelectric", "batio3"])
def test_shipped_eval_configs_pass(data):
    check_eval_config(composed("model_file=model.pt", f"data={data}", *(["data.file=x.xyz"] if data == "extxyz" else []),
                               config="eval"))


@pytest.mark.parametrize("override, expected", [
    ("data.batch_size=0", "data.batch_size: must be a positive integer, got 0"),
    ("data.batch_size=-2", "data.batch_size: must be a positive integer, got -2"),
    ("data.eval_batch_size=0", "data.eval_batch_size: must be a positive integer"),
    ("loss.huber_delta=0", "loss.huber_delta: must be a finite number > 0, got 0"),
    ("loss.huber_delta={forces: -1}", "loss.huber_delta.forces: must be a finite number > 0"),
    ("model.dtype=float16", "model.dtype: unknown dtype 'float16'; choose from float32, float64"),
    ("model.max_ell=-1", "model.max_ell: must be an integer >= 0, got -1"),
    ("model.coupling.form=bogus", "model.coupling.form: unknown coupling form 'bogus'; choose from none, residual_tp"),
    ("model.coupling.init=ones", "model.coupling.init: unknown coupling init 'ones'"),
    ("model.coupling.field_order=3", "model.coupling.field_order: unknown field order 3"),
    ("+model.coupling.strength=1", "model.coupling.strength: no such coupling setting"),
    ("data.labels.energy.unit=kcal/mol", "data.labels.energy.unit: unknown unit of energy 'kcal/mol'; choose from eV"),
    ("data.labels.polarisation.unit=C", "data.labels.polarisation.unit: unknown unit of polarisation 'C'"),
    ("+data.labels.spin={key: s, unit: x}", "data.labels.spin: unknown quantity 'spin'"),
    ("model.correlation=0", "model.correlation: must be a positive integer (or one per layer), got 0"),
    ("model.num_channels=0", "model.num_channels: must be a positive integer, got 0"),
    ("model.num_interactions=0", "model.num_interactions: must be a positive integer"),
    ("model.r_max=-1.0", "model.r_max: must be a finite number > 0"),
    ("model.radial_MLP=[0]", "model.radial_MLP: must be a list of positive layer widths"),
    ("model.gate=relu", "model.gate: unknown mace gate 'relu'"),
    ("model.atomic_charges=yes", "model.atomic_charges: must be auto (null), fit, false, a list"),
    ("model.interaction=Bogus", "model.interaction: unknown mace interaction 'Bogus'"),
    ("loss.weights.forces=-1", "loss.weights.forces: must be a finite number >= 0 (a negative weight maximises"),
    ("loss.weights.forces=inf", "loss.weights.forces: must be a finite number >= 0"),
    ("loss.weights.forces=nan", "loss.weights.forces: must be a finite number >= 0"),
    ("+loss.weights.force=1", "loss.weights.force: unknown task 'force'"),
    ("loss.weights={energy: 0, forces: 0, stress: 0, polarisation: 0, becs: 0, polarisability: 0}",
     "loss.weights: every weight is 0"),
    ("+loss.scales.forces=0", "loss.scales.forces: must be a finite number > 0"),
    ("module.lr=0", "module.lr: must be a finite number > 0"),
    ("module.scheduler=step", "module.scheduler: unknown scheduler 'step'; choose from plateau, cosine, none"),
    ("module.huber_delta=0", "module.huber_delta: must be a finite number > 0"),
])
def test_each_bad_training_value_is_refused_naming_its_key(override, expected):
    assert expected in train_error("experiment=smoke", override)


def test_every_problem_of_a_config_in_one_line():
    message = train_error("experiment=smoke", "data.batch_size=0", "model.dtype=float16", "loss.weights.stress=-1")
    assert "\n" not in message
    for key in ("data.batch_size", "model.dtype", "loss.weights.stress"):
        assert f"{key}: " in message


def test_values_left_to_the_user_are_named():
    """finetune_replay without its replay file (and source model): ??? in the config."""
    message = train_error("experiment=finetune_replay", "model.source=MACE.model")
    assert message.startswith("data.sources.replay.file: needs a value") and "model.source" not in message
    assert "model.source: needs a value" in train_error("experiment=finetune_replay")


def test_multi_source_batch_sizes_and_units_are_checked_per_source():
    message = train_error("experiment=foundation_finetune", "data.sources.dielectric.batch_size=0",
                          "data.sources.ferroelectric.labels.polarisation.unit=uC")
    assert "data.sources.dielectric.batch_size: must be a positive integer" in message
    assert "data.sources.ferroelectric.labels.polarisation.unit: unknown unit of polarisation 'uC'" in message


def test_overwrite_and_resume_contradict():
    assert "overwrite: overwrite=true trains from scratch" in train_error("overwrite=true", "resume=true")


def test_config_errors_are_input_errors():
    """One line on stderr and exit code 2 in every entry point (mf_lightning.cli._common.classify)."""
    assert issubclass(ConfigError, InputError)


@pytest.mark.parametrize("overrides, expected", [
    (["batch_size=0"], "batch_size: must be a positive integer, got 0"),
    (["dtype=float16"], "dtype: unknown dtype 'float16'"),
    (["split=validation"], "split: unknown split 'validation'; choose from auto, train, val, test, all"),
    (["data.labels.becs.unit=C"], "data.labels.becs.unit: unknown unit of becs 'C'"),
])
def test_bad_eval_values_are_refused_naming_their_key(overrides, expected):
    with pytest.raises(ConfigError) as info:
        check_eval_config(composed("model_file=model.pt", "data=sio2", *overrides, config="eval"))
    assert expected in str(info.value)


def test_eval_without_a_model_or_data_says_how_to_give_them():
    with pytest.raises(ConfigError, match=r"data.file: needs a value .*give data=<labelled extxyz file>; "
                                          r"model_file: needs a value .*give model=<model.pt>"):
        check_eval_config(composed(config="eval"))


# ---------------------------------------------------------------- the command line, as Hydra composes it
@pytest.mark.parametrize("argv, expected", [
    (["nonsense=1"], "nonsense: no such key in the configuration"),
    (["model.nonsense=1"], "model.nonsense: no such key in the configuration"),
    (["model/coupling=bogus"], "model/coupling=bogus: no such option in config group 'model/coupling'; "
                               "options: basis_tp, none, residual_tp"),
    (["experiment=bogus"], "experiment=bogus: no such option in config group 'experiment'"),
    (["seed=[1"], "seed=[1: not a valid override"),
    (["+seed=1"], "An item is already at 'seed'"),
    (["-m", "model/coupling=none,bogus"], "model/coupling=bogus: no such option"),  # a sweep's later value
    (["-m", "seed=1,2", "model.nonsense=1,2"], "model.nonsense: no such key"),
])
def test_hydra_composition_errors_are_one_line(argv, expected):
    with pytest.raises(ConfigError) as info:
        check_command_line("train", argv)
    assert expected in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("argv", [
    ["experiment=smoke", "hydra.run.dir=/tmp/x"],
    ["-m", "experiment=ablation_coupling_form_cpu"],
    ["-m", "experiment=smoke", "model/coupling=none,residual_tp,basis_tp", "seed=range(1,3)"],
    ["--cfg", "job", "nonsense=1"],  # Hydra's own business
])
def test_valid_command_lines_pass(argv):
    check_command_line("train", argv)


def test_every_value_of_every_sweep_is_composed_once():
    assert command_line_overrides(["a=1,2", "b=3", "c=x,y,z"], multirun=True) == [
        ["a=1", "b=3", "c=x"], ["a=2", "b=3", "c=x"], ["a=1", "b=3", "c=y"], ["a=1", "b=3", "c=z"]]
    assert command_line_overrides(["a=1,2"], multirun=False) == [["a=1,2"]]


# ---------------------------------------------------------------- final metrics
def test_an_infinite_optimised_metric_fails_the_run():
    """A loss weight of 1e300: every per-dataset metric finite, val/loss (the monitored metric)
    infinite. The run used to be marked finished."""
    finite = {"val": {"sio2": {"loss": {"unit": "", "value": 5e299}}}, "test": {}}
    assert non_finite_metrics({**finite, "optimized_metric": {"name": "val/loss", "value": 2.0}}) == []
    assert non_finite_metrics({**finite, "optimized_metric": {"name": "val/loss", "value": float("inf")}}) == [
        "optimized_metric val/loss"]


# ---------------------------------------------------------------- run folders
def finished_folder(tmp_path, cfg, finished=True, stopped_by="max_epochs"):
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    (run / "checkpoints").mkdir()
    for name in ("best.ckpt", "last.ckpt"):
        (run / "checkpoints" / name).write_bytes(b"checkpoint")
    (run / "model.pt").write_bytes(b"model")
    (run / "metrics.json").write_text(json.dumps({"finished": finished, "stopped_by": stopped_by,
                                                  "optimized_metric": {"name": "val/loss", "value": 1.5}}))
    (run / "train.log").write_text("the first run's log\n")
    return run


def snapshot(run):
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


def test_an_empty_folder_is_used(tmp_path):
    assert claim_run_folder(composed("experiment=smoke"), tmp_path) is None


def test_a_folder_holding_a_run_is_refused_unchanged(tmp_path):
    cfg = composed("experiment=smoke")
    run = finished_folder(tmp_path, cfg)
    before = snapshot(run)
    with pytest.raises(ConfigError, match="holds a finished run .*resume=true continues it .*overwrite=true"):
        claim_run_folder(composed("experiment=smoke", "seed=1"), run)
    with pytest.raises(ConfigError, match="with another configuration \\(it differs at model.num_channels, seed\\)"):
        claim_run_folder(composed("experiment=smoke", "seed=1", "model.num_channels=4", "resume=true"), run)
    with pytest.raises(ConfigError, match="is a checkpoint of another run"):
        claim_run_folder(composed("experiment=smoke", f"ckpt_path={tmp_path / 'other' / 'last.ckpt'}"), run)
    (run / "metrics.json").unlink()  # killed: only checkpoints
    before.pop("metrics.json")
    with pytest.raises(ConfigError, match="holds an unfinished run"):
        claim_run_folder(cfg, run)
    assert snapshot(run) == before


def test_the_same_run_resumes_or_is_skipped(tmp_path):
    cfg = composed("experiment=smoke")
    run = finished_folder(tmp_path, cfg)
    # run-control keys may differ: a run cut by max_time is resumed without the limit
    same = composed("experiment=smoke", "resume=true", "torch_threads=1", "+trainer.max_time=00:00:01:00")
    assert claim_run_folder(same, run)["finished"]  # finished: its metrics, to skip it
    (run / "metrics.json").write_text(json.dumps({"finished": True, "stopped_by": "max_time"}))
    assert claim_run_folder(same, run) is None  # cut by max_time: resumed from last.ckpt
    assert claim_run_folder(composed("experiment=smoke", "trainer.max_epochs=9",
                                     f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}"), run) is None


def test_a_requeued_slurm_job_resumes_from_its_hpc_checkpoint(tmp_path):
    run = finished_folder(tmp_path, composed("experiment=smoke"))
    (run / "hpc_ckpt_1.ckpt").write_bytes(b"checkpoint")
    assert claim_run_folder(composed("experiment=smoke", "+callbacks.preempt=null"), run) is None


def test_overwrite_removes_every_output_and_keeps_the_log(tmp_path):
    run = finished_folder(tmp_path, composed("experiment=smoke"))
    for extra in ("checkpoints/best-v1.ckpt", "parity/sio2_forces.png", "splits/sio2.json", "csv/metrics.csv",
                  "metrics.csv", "hpc_ckpt_2.ckpt"):
        (run / extra).parent.mkdir(parents=True, exist_ok=True)
        (run / extra).write_bytes(b"old")
    assert claim_run_folder(composed("experiment=smoke", "seed=1", "overwrite=true"), run) is None
    assert sorted(snapshot(run)) == [".hydra/config.yaml", "train.log"]
    assert (run / "train.log").read_text() == "the first run's log\n"


def test_saved_configs_compare_through_yaml(tmp_path):
    cfg = composed("experiment=quickstart")
    (tmp_path / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    assert config_differences(OmegaConf.load(tmp_path / "config.yaml"), cfg) == []
    assert config_differences(cfg, composed("experiment=quickstart", "module.lr=0.002", "debug=true",
                                            "trainer.max_time=1")) == ["module.lr"]


def test_a_run_from_before_the_charge_term_resumes_only_without_it():
    """Runs written before model.atomic_charges existed had no charge term: the same command with
    model.atomic_charges=false continues them; the default (auto) is refused, naming the key."""
    old = composed("experiment=quickstart")
    with open_dict(old):
        del old.model["atomic_charges"]
    assert config_differences(old, composed("experiment=quickstart")) == ["model.atomic_charges"]
    assert config_differences(old, composed("experiment=quickstart", "model.atomic_charges=false")) == []


def test_no_record_is_written_outside_hydra(tmp_path):
    write_run_record(composed("experiment=smoke"), tmp_path)
    assert not (tmp_path / ".hydra").exists()
