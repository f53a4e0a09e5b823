"""Every experiment config composes and runs a few steps at toy size through the real CLI;
a run resumed from its last checkpoint ends with the same weights as an uninterrupted one."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import ase.io
import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from mf_lightning.model.backbone import cueq_available
from mf_lightning.model.coupling import coupling_forms
from tests.conftest import REPO, SHARED_DATA

EXPERIMENTS = sorted(p.stem for p in (REPO / "conf" / "experiment").glob("*.yaml"))
TOY = ["model.num_channels=4", "model.max_ell=1", "model.correlation=2", "model.r_max=3.5",
       "model.radial_MLP=[8]", "model.MLP_irreps=4x0e", "trainer.max_epochs=1",
       "+trainer.limit_train_batches=1", "+trainer.limit_val_batches=1", "+trainer.limit_test_batches=1",
       "trainer.enable_progress_bar=false", "torch_threads=1"]


def run_train(tmp_path, name, *overrides, run="run", returncode=0):
    env = {**os.environ, "MF_DATA_DIR": str(SHARED_DATA), "MF_CACHE_DIR": str(tmp_path / "cache"),
           "XDG_CACHE_HOME": str(tmp_path / "xdg"), "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "train.py", f"experiment={name}", f"hydra.run.dir={tmp_path / run}", *overrides]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == returncode, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_composes(name):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"experiment={name}"])
    if name in ("finetune_replay", "ablation_replay"):
        assert cfg.data.replay == "replay" and cfg.module.freeze_backbone_epochs > 0
        return
    assert cfg.model.coupling.form in coupling_forms()
    assert cfg.data._target_.startswith("mf_lightning.data.datamodules.")


@pytest.mark.parametrize("overrides,target", [
    (["launcher=slurm", "trainer=ddp"], "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"),
    (["launcher=local"], "hydra._internal.core_plugins.basic_launcher.BasicLauncher"),
])
def test_launchers_compose(overrides, target):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=["experiment=sio2_md", *overrides], return_hydra_config=True)
    assert cfg.hydra.launcher._target_ == target
    if "trainer=ddp" in overrides:
        assert cfg.trainer.strategy == "ddp" and cfg.hydra.launcher.tasks_per_node == cfg.trainer.devices


def test_gpu_trainer_and_cueq_compose():
    """trainer=gpu is one GPU whose precision follows model.dtype; model.cueq and the TF32 switch
    are plain settings (without CUDA only composing is checked; the GPU run is bench/gpu_check.sh)."""
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=["experiment=sio2_md", "trainer=gpu", "model.cueq=true",
                                                      "model.dtype=float32", "float32_matmul_precision=high"])
    assert cfg.trainer.accelerator == "gpu" and cfg.trainer.devices == 1 and cfg.trainer.precision is None
    assert cfg.model.cueq is True and cfg.float32_matmul_precision == "high"
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=["experiment=sio2_md"])
    assert cfg.model.cueq is False and cfg.float32_matmul_precision == "highest"  # the CPU defaults


def test_optuna_search_composes():
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=["experiment=sio2_md", "hparams_search=optuna"], return_hydra_config=True)
    assert "OptunaSweeper" in cfg.hydra.sweeper._target_ and "module.lr" in cfg.hydra.sweeper.params
    assert cfg.optimized_metric == "val/sio2/becs_diag_rmse"


def _limits_already_set(name):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"experiment={name}"])
    return {k for k in ("limit_train_batches", "limit_val_batches", "limit_test_batches") if k in cfg.trainer}


@pytest.fixture(scope="module")
def source_model_and_replay(tmp_path_factory):
    """A small mace-torch model saved as mace does (pickled), and 12 alpha-quartz frames labelled
    by it (self-distillation): what the fine-tune experiment needs from a user."""
    import ase.io

    import mf_lightning
    from mf_lightning.simulation.distill import distill
    from tests.helpers import make_source

    tmp = tmp_path_factory.mktemp("source")
    source = make_source()
    torch.save(source, tmp / "source.model")
    frames = ase.io.read(SHARED_DATA / "md" / "SiO2.xyz", index=":12")
    assert distill(mf_lightning.FieldMACE.from_mace(source, form="none"), frames, tmp / "replay.xyz") == 12
    return tmp / "source.model", tmp / "replay.xyz"


@pytest.fixture(scope="module")
def foundation_source(tmp_path_factory):
    """A small mace-torch model over elements 1-94 (a foundation model's coverage), pickled as
    mace saves it: served to the foundation fine-tune as a file:// URL."""
    from tests.helpers import make_source

    path = tmp_path_factory.mktemp("foundation") / "tiny-foundation.model"
    torch.save(make_source(atomic_numbers=range(1, 95)), path)
    return path


def experiment_overrides(name, source_model_and_replay, foundation=None):
    if name in ("finetune_replay", "ablation_replay"):
        model_path, replay = source_model_and_replay
        return [f"model.source={model_path}", "model.allow_pickle=true", f"data.sources.replay.file={replay}"]
    if name == "foundation_finetune":  # served as a URL through mace's downloader (no network)
        return [f"model.source=file://{foundation}", "model.allow_pickle=true", "data.sources.replay.distill.every=25"]
    return []


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_runs_at_toy_size(tmp_path, name, source_model_and_replay, foundation_source):
    present = _limits_already_set(name)
    overrides = [o.lstrip("+") if o.lstrip("+").split("=")[0].split(".")[-1] in present else o for o in TOY]
    proc = run_train(tmp_path, name, *overrides, *experiment_overrides(name, source_model_and_replay, foundation_source))
    run = tmp_path / "run"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test"] and metrics["val"]
    for f in ("model.pt", "metrics.csv", "checkpoints/best.ckpt", "checkpoints/last.ckpt", ".hydra/config.yaml"):
        assert (run / f).is_file(), f
    assert list((run / "parity").glob("*.png")) and list((run / "splits").glob("*.json"))
    assert "| dataset | quantity |" in proc.stdout
    if name == "foundation_finetune":  # three heads; replay labelled by the source itself
        assert set(metrics["val"]) == {"dielectric", "ferroelectric", "replay"}
        assert set(metrics["val"]["replay"]) >= {"energy", "forces", "stress"}
        assert list((tmp_path / "xdg" / "mace").glob("tinyfoundationmodel"))
    import mf_lightning

    mf_lightning.load_model(run / "model.pt")  # the exported file loads weights-only


def test_resume_from_last_checkpoint_is_exact(tmp_path):
    common = ["trainer.max_epochs=2", "callbacks.early_stopping=null"]
    run_train(tmp_path, "smoke", *common, run="straight")
    run_train(tmp_path, "smoke", "trainer.max_epochs=1", "callbacks.early_stopping=null", run="killed")
    proc = run_train(tmp_path, "smoke", *common, f"ckpt_path={tmp_path / 'killed' / 'checkpoints' / 'last.ckpt'}",
                     run="killed")
    # resume, the best-checkpoint validation and test all load through AtomicCheckpointIO (always
    # torch's weights_only=True: tests/unit/train/test_reliability.py); Lightning's misleading
    # "weights_only was not set, defaulting to False" must not be printed
    assert "weights_only" not in proc.stdout + proc.stderr
    a = torch.load(tmp_path / "straight" / "checkpoints" / "last.ckpt", weights_only=False)
    b = torch.load(tmp_path / "killed" / "checkpoints" / "last.ckpt", weights_only=False)
    assert a["epoch"] == b["epoch"] and a["global_step"] == b["global_step"]
    for k, v in a["state_dict"].items():
        torch.testing.assert_close(b["state_dict"][k], v, rtol=0, atol=0, msg=k)


@pytest.mark.skipif(not cueq_available(),
                    reason="cuequivariance-torch not installed (pip install '.[cueq]')")
def test_training_on_cuequivariance_exports_e3nn_weights_and_resumes_exactly(tmp_path):
    """model.cueq=true end to end on the CPU (cuequivariance-torch in plain torch): the run trains
    on the cuEquivariance backbone, its model.pt holds e3nn weights and remembers the choice, and
    a run resumed from last.ckpt (cuEquivariance weights) ends where an uninterrupted one does."""
    common = ["model.cueq=true", "trainer.max_epochs=2", "callbacks.early_stopping=null", *TOY[:6]]
    run_train(tmp_path, "smoke", *common, run="straight")
    run_train(tmp_path, "smoke", *common[:1], "trainer.max_epochs=1", *common[2:], run="killed")
    run_train(tmp_path, "smoke", *common, f"ckpt_path={tmp_path / 'killed' / 'checkpoints' / 'last.ckpt'}",
              run="killed")
    a = torch.load(tmp_path / "straight" / "checkpoints" / "last.ckpt", weights_only=False)
    b = torch.load(tmp_path / "killed" / "checkpoints" / "last.ckpt", weights_only=False)
    for k, v in a["state_dict"].items():
        torch.testing.assert_close(b["state_dict"][k], v, rtol=0, atol=0, msg=k)
    from mf_lightning.model.io import load_model

    payload = torch.load(tmp_path / "straight" / "model.pt", weights_only=True)
    assert payload["cueq"] is True
    assert load_model(tmp_path / "straight" / "model.pt").cueq
    assert not load_model(tmp_path / "straight" / "model.pt", cueq=False).cueq


def test_train_time_and_stop_reason_are_read_before_the_best_checkpoint_is_reloaded(tmp_path):
    """validate/test after fit reload the best checkpoint, whose Timer state came back as an
    offset: read afterwards, the training time counted the best epoch's time twice and a run with
    a time limit looked cut by it. A run well inside its limit stops by max_epochs, and its
    training time fits in its wall time."""
    run_train(tmp_path, "smoke", "trainer.max_epochs=2", "callbacks.early_stopping=null",
              "+trainer.max_time=00:01:00:00", *TOY[:6], run="run")
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["stopped_by"] == "max_epochs" and metrics["checkpoint"]
    last = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    timer = [v for k, v in last["callbacks"].items() if k.startswith("Timer")][0]["time_elapsed"]["train"]
    # the fit's own time: at most the last checkpoint's (written at the end of training) plus the
    # moments after it, never that plus the best epoch's time again
    assert timer <= metrics["train_time_s"] < 1.5 * timer


def test_a_run_cut_by_max_time_is_incomplete_and_the_same_command_with_more_time_finishes_it(tmp_path):
    """A run stopped by ``trainer.max_time`` says so (``stopped_by``); with ``resume: true`` the
    rerun continues it from last.ckpt instead of skipping it, and its training time counts both
    processes (the table tool lists cut runs instead of averaging them in)."""
    common = ["trainer.max_epochs=2", "callbacks.early_stopping=null", "resume=true",
              "callbacks.last_checkpoint.every_n_train_steps=1", "trainer.enable_progress_bar=false"]
    run_train(tmp_path, "smoke", *common, "+trainer.max_time=00:00:00:01", run="cut")
    cut = json.loads((tmp_path / "cut" / "metrics.json").read_text())
    assert cut["stopped_by"] == "max_time" and cut["finished"]
    ckpt = torch.load(tmp_path / "cut" / "checkpoints" / "last.ckpt", weights_only=True)
    trained = [v for k, v in ckpt["callbacks"].items() if k.startswith("Timer")][0]["time_elapsed"]["train"]
    assert trained >= 1
    run_train(tmp_path, "smoke", *common, run="cut")
    done = json.loads((tmp_path / "cut" / "metrics.json").read_text())
    assert done["resumed"] and done["stopped_by"] == "max_epochs" and done["steps"] > cut["steps"]
    assert done["train_time_s"] > trained  # the time before the cut is counted


def test_sigkill_mid_step_or_mid_validation_then_resume_is_exact(tmp_path):
    """A real SIGKILL (a) in the middle of an optimisation step (mid-epoch) and (b) in the middle
    of an epoch's validation, after its last step and before its end-of-epoch checkpoint (where a
    resume used to skip that validation: plateau, ModelCheckpoint and EarlyStopping missed the
    epoch). Then ``ckpt_path=.../last.ckpt``: the final weights, optimiser and plateau state equal
    an uninterrupted run's, bit for bit (float64, CPU). last.ckpt is written every step here
    (``every_n_train_steps=1``) and the training loader skips the batches already seen.
    Deterministic: the mid-step kill is at step 4 (``MF_KILL_STEP`` picks another; every step
    1-5 has been checked)."""
    common = ["trainer.max_epochs=2", "trainer.limit_train_batches=3", "callbacks.early_stopping=null",
              "callbacks.last_checkpoint.every_n_train_steps=1", "trainer.enable_progress_bar=false"]
    # epochs are steps 0-2 and 3-5; step 3 resumes from the checkpoint written at the end of
    # epoch 0, which must not make epoch 1 skip batches
    kill_at = int(os.environ.get("MF_KILL_STEP", "4"))
    run_train(tmp_path, "smoke", *common, run="straight")
    a = torch.load(tmp_path / "straight" / "checkpoints" / "last.ckpt", weights_only=True)
    for during, step, expect_saved in (("train", kill_at, kill_at), ("validation", 3, 2)):
        run = f"killed_{during}"
        run_train(tmp_path, "smoke", *common, "+callbacks.killer._target_=tests.helpers.SignalAtStep",
                  f"+callbacks.killer.step={step}", f"+callbacks.killer.during={during}", run=run, returncode=-9)
        last = tmp_path / run / "checkpoints" / "last.ckpt"
        # mid-validation: the newest checkpoint is from before the epoch's last step
        assert torch.load(last, weights_only=True)["global_step"] == expect_saved, (during, step)
        assert not list(last.parent.glob("*.tmp")), "a temporary checkpoint file was left behind"
        run_train(tmp_path, "smoke", *common, f"ckpt_path={last}", run=run)
        b = torch.load(last, weights_only=True)
        assert a["global_step"] == b["global_step"] == 6
        for k, v in a["state_dict"].items():
            torch.testing.assert_close(b["state_dict"][k], v, rtol=0, atol=0, msg=f"{k} (killed {during} at {step})")
        # the optimiser and the plateau scheduler continue as if never interrupted, too
        assert b["plateau_scheduler"] == a["plateau_scheduler"], (during, step)
        assert b["optimizer_states"][0]["param_groups"] == a["optimizer_states"][0]["param_groups"], (during, step)
        if during == "validation":  # the interrupted epoch's validation ran on resume
            scores = [{k: v[k] for k in ("best_model_score", "current_score")}
                      for c in (a, b) for name, v in sorted(c["callbacks"].items()) if "ModelCheckpoint" in name]
            assert scores and scores[: len(scores) // 2] == scores[len(scores) // 2:], scores


def test_a_killed_sweep_rerun_skips_finished_runs_and_resumes_the_killed_one(tmp_path):
    """Hydra multirun in a fixed folder with resume=true: the second job is SIGKILLed at step 2
    (which kills the sweep). The same command again skips the finished job (its metrics.json is
    untouched), resumes the killed one from its last.ckpt, and the table callback writes the
    table of both when the sweep ends."""
    sweep = tmp_path / "sweep"
    env = {**os.environ, "MF_DATA_DIR": str(SHARED_DATA), "MF_CACHE_DIR": str(tmp_path / "cache"),
           "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "train.py", "-m", "experiment=smoke", "trainer.max_epochs=2", "torch_threads=1",
           "trainer.limit_train_batches=3", "callbacks.early_stopping=null", "resume=true",
           "trainer.enable_progress_bar=false",
           "callbacks.last_checkpoint.every_n_train_steps=1", f"hydra.sweep.dir={sweep}",
           "+callbacks.killer._target_=tests.helpers.SignalAtStep", "+callbacks.killer.step=999,2",
           f"+callbacks.killer.once={tmp_path / 'killed.flag'}",
           "+hydra.callbacks.table._target_=mf_lightning.cli.sweep_table.WriteTable"]
    first = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert first.returncode == -9, first.stderr[-3000:]
    done, killed = sweep / "0", sweep / "1"
    assert (done / "metrics.json").is_file() and not (killed / "metrics.json").exists()
    killed_ckpt = torch.load(killed / "checkpoints" / "last.ckpt", weights_only=True)
    assert killed_ckpt["global_step"] == 2
    timer = [v for k, v in killed_ckpt["callbacks"].items() if k.startswith("Timer")]
    trained_before_kill = timer[0]["time_elapsed"]["train"]
    assert trained_before_kill > 0
    before = (done / "metrics.json").read_bytes()
    second = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "finished already, skipped" in second.stdout
    assert (done / "metrics.json").read_bytes() == before
    metrics = json.loads((killed / "metrics.json").read_text())
    assert metrics["finished"] and metrics["resumed"] and metrics["epochs"] == 2
    # cost over both processes: the Timer's state came back with the checkpoint
    assert metrics["steps"] == 6 and metrics["stopped_by"] == "max_epochs"
    assert metrics["train_time_s"] > trained_before_kill
    assert "| seeds |" in (sweep / "table.md").read_text()


def test_slurm_preemption_signal_saves_requeues_and_resumes(tmp_path):
    """Under SLURM (environment as SLURM sets it), SIGUSR1 before the time limit makes Lightning
    save an HPC checkpoint (through our atomic checkpoint IO) and call ``scontrol requeue <job>``;
    the requeued job, started with the same command, resumes from that checkpoint. ``scontrol``
    is SLURM's CLI, not on this machine: a stand-in on PATH records how it is called."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "scontrol_calls.txt"
    (bin_dir / "scontrol").write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    (bin_dir / "scontrol").chmod(0o755)
    slurm = {"SLURM_NTASKS": "1", "SLURM_NTASKS_PER_NODE": "1", "SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "mf",
             "SLURM_NODELIST": "localhost", "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0",
             "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    common = ["trainer.max_epochs=2", "trainer.limit_train_batches=3", "callbacks.early_stopping=null",
              "trainer.enable_progress_bar=false", "torch_threads=1"]
    env = {**os.environ, "MF_DATA_DIR": str(SHARED_DATA), "MF_CACHE_DIR": str(tmp_path / "cache"),
           "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", **slurm}
    run = tmp_path / "job"
    cmd = [sys.executable, "train.py", "experiment=smoke", f"hydra.run.dir={run}", *common]
    first = subprocess.run(cmd + ["+callbacks.preempt._target_=tests.helpers.SignalAtStep",
                                  "+callbacks.preempt.step=2", "+callbacks.preempt.signal=SIGUSR1"],
                           cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stderr[-3000:]
    hpc = run / "hpc_ckpt_1.ckpt"
    assert torch.load(hpc, weights_only=True)["global_step"] == 2
    assert calls.read_text().split() == ["requeue", "4242"]
    second = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "hpc_ckpt_1.ckpt" in second.stdout + second.stderr  # Lightning restored from it


def test_ddp_two_cpu_processes_match_one_process(tmp_path):
    """DDP over 2 CPU processes (gloo) with batch 1 per rank vs 1 process with batch 2: the same
    global batches (the DataModule shards one permutation), gradients averaged over ranks = the
    batch mean. Weights agree to float64 round-off of the all-reduce (< 1e-12), and the
    validation RMSE, summed over ranks from disjoint shares, is the single process's (no
    structure counted twice)."""
    common = ["callbacks.early_stopping=null", "callbacks.ema=null", "trainer.max_epochs=1",
              "trainer.limit_train_batches=3", "trainer.limit_val_batches=null", "trainer.enable_progress_bar=false"]
    run_train(tmp_path, "smoke", *common, "data.batch_size=2", "data.eval_batch_size=2", run="one")
    run_train(tmp_path, "smoke", *common, "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2",
              "data.batch_size=1", "data.eval_batch_size=1", run="two")
    a = torch.load(tmp_path / "one" / "checkpoints" / "last.ckpt", weights_only=True)
    b = torch.load(tmp_path / "two" / "checkpoints" / "last.ckpt", weights_only=True)
    assert a["global_step"] == b["global_step"] == 3
    for k, v in a["state_dict"].items():
        if v.is_floating_point():
            torch.testing.assert_close(b["state_dict"][k], v, rtol=0, atol=1e-12, msg=k)
    ma = json.loads((tmp_path / "one" / "metrics.json").read_text())["val"]["sio2"]
    mb = json.loads((tmp_path / "two" / "metrics.json").read_text())["val"]["sio2"]
    for q in ("forces", "becs_diag", "polarisation", "polarisability_diag"):
        assert mb[q]["rmse"] == pytest.approx(ma[q]["rmse"], rel=1e-10), q


def test_ablation_sweep_and_table(tmp_path):
    """Two coupling settings x two seeds through Hydra multirun, then the table tool."""
    env = {**os.environ, "MF_DATA_DIR": str(SHARED_DATA), "MF_CACHE_DIR": str(tmp_path / "cache"),
           "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    sweep = tmp_path / "sweep"
    cmd = [sys.executable, "train.py", "-m", "experiment=ablation_coupling_form", "model/coupling=none,basis_tp",
           "seed=1,2", f"hydra.sweep.dir={sweep}", "data.batch_size=2", *TOY]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert len(list(sweep.rglob("metrics.json"))) == 4
    from mf_lightning.cli import table

    assert table.main([str(sweep), "--out", str(tmp_path / "ablation")]) == 0
    md = (tmp_path / "ablation.md").read_text()
    assert "| model/coupling=none | 2 |" in md and "| model/coupling=basis_tp | 2 |" in md
    assert "Common to all runs:" in md and "`model.num_channels=4`" in md
    assert "sio2/becs_diag RMSE (e)" in md and md.count("**") >= 2


def test_finetune_keeps_the_source_at_zero_field_and_reports_replay(tmp_path, source_model_and_replay):
    """Fine-tuning upgrades the source model; with the backbone frozen the zero-field E/F on the
    replay set stay exactly the source's (the coupling is zero-initialised and the backbone
    frozen), and replay metrics are reported."""
    model_path, replay = source_model_and_replay
    run_train(tmp_path, "finetune_replay", *experiment_overrides("finetune_replay", source_model_and_replay),
              "trainer.max_epochs=1", "+trainer.limit_train_batches=2", "+trainer.limit_val_batches=2",
              "+trainer.limit_test_batches=1", "trainer.enable_progress_bar=false", "callbacks.ema=null")
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert {"energy", "forces"} <= set(metrics["val"]["replay"])
    # the labels are the source's own, rounded to the 8 decimals extxyz writes
    assert metrics["val"]["replay"]["forces"]["rmse"] < 1e-7
    assert metrics["val"]["replay"]["energy"]["rmse"] < 1e-7
    assert {"becs_diag", "polarisation"} <= set(metrics["val"]["sio2"])
    import mf_lightning
    from mf_lightning.simulation.calculator import MACEFieldCalculator

    model = mf_lightning.load_model(tmp_path / "run" / "model.pt")
    assert model.heads == ["sio2", "replay"]  # one per source
    # which head learnt what is in the model file; P, Z* and alpha come from the sio2 head, never
    # silently from the last (replay) one, and a use that needs both heads' labels must name one
    assert model.head_quantities == {"sio2": ["polarisation", "becs", "polarisability"],
                                     "replay": ["energy", "forces", "stress"]}
    assert model.resolve_head(None, ["polarisation", "becs"]) == "sio2"
    assert model.resolve_head(None, ["forces"]) == "replay"
    with pytest.raises(ValueError, match=r"several heads: 'sio2' \(trained on polarisation.*'replay'"):
        MACEFieldCalculator(model)
    with pytest.raises(ValueError, match="not one of the model's heads"):
        MACEFieldCalculator(model, head="typo")
    assert MACEFieldCalculator(model, head="replay").head == "replay"
    from mf_lightning.analysis.screening import predict_response

    atoms = ase.io.read(SHARED_DATA / "md" / "SiO2.xyz", index=0)
    by_default = predict_response(model, [atoms])[0]
    np.testing.assert_array_equal(by_default["becs"], predict_response(model, [atoms], head="sio2")[0]["becs"])
    # eval.py with a single-source data config binds the head of that name
    from mf_lightning.data.datamodules import MDTrajectoryDataModule, MultiSourceDataModule
    from mf_lightning.train.pipeline import bind_to_model

    sio2 = MDTrajectoryDataModule(file=str(SHARED_DATA / "md" / "SiO2.xyz"), name="sio2",
                                  labels={"becs": {"key": "born_charge", "unit": "e"}})
    dm = MultiSourceDataModule(sources={"sio2": sio2})
    bind_to_model(dm, model)
    assert dm.sources["sio2"].head == "sio2"


def test_tensorboard_and_offline_wandb_loggers(tmp_path):
    """logger=many (CSV + TensorBoard) and logger=wandb (offline): the same metric names reach
    each; the model summary with parameter counts is printed at the start."""
    common = ["trainer.max_epochs=1", "trainer.limit_train_batches=2", "callbacks.early_stopping=null",
              "trainer.enable_progress_bar=false"]
    proc = run_train(tmp_path, "smoke", *common, "logger=many", run="many")
    assert "Total params" in proc.stdout + proc.stderr
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "many" / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "val/loss"} <= tags and any(t.startswith("val/sio2/") for t in tags)
    assert (tmp_path / "many" / "metrics.csv").is_file()
    os.environ.setdefault("WANDB_SILENT", "true")
    run_train(tmp_path, "smoke", *common, "logger=wandb", run="wandb")
    offline = list((tmp_path / "wandb" / "wandb").glob("offline-run-*/run-*.wandb"))
    assert offline, list((tmp_path / "wandb").rglob("*"))[:20]
