"""`python eval.py model=... data=<extxyz path>` end to end on a tiny model: metrics.json with
counts, R^2, and errors with and without the structures whose labels fail the audit."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import ase.io
import numpy as np
import pytest

from mf_lightning.model.io import save_model
from mf_lightning.simulation.calculator import MACEFieldCalculator
from mf_lightning.units import E_PER_A2_TO_UC_PER_CM2
from tests.conftest import REPO, SHARED_DATA
from tests.helpers import elements_of, tiny_model


def labelled_file(path, frames, model):
    """Frames labelled under the internal names (conf/data/extxyz.yaml) by a *different* model
    (so errors are not zero); frame 1's Z* break the acoustic sum rule by 0.5 e."""
    teacher = MACEFieldCalculator(tiny_model(model.atomic_numbers, seed=7))
    out = []
    for k, atoms in enumerate(frames):
        a = atoms.copy()
        a.calc = None
        becs = teacher.get_becs(atoms)
        if k == 1:
            becs = becs.copy()
            becs[0] += 0.5 * np.eye(3)
        a.arrays["REF_becs"] = becs.reshape(len(a), 9)
        a.arrays["REF_forces"] = teacher.get_forces(atoms)
        a.info["REF_energy"] = teacher.get_potential_energy(atoms)
        a.info["REF_polarisation"] = teacher.get_polarisation(atoms)
        a.info["REF_polarisability"] = teacher.get_polarisability(atoms).reshape(9)
        # zero-field labels in a file that writes a field anyway (as the shared BaTiO3 file does)
        a.info["REF_electric_field"] = np.array([0.3, 0.3, 0.3])
        out.append(a)
    ase.io.write(path, out, format="extxyz")
    return out


def test_eval_cli_on_an_extxyz_file(tmp_path):
    frames = ase.io.read(SHARED_DATA / "md" / "SiO2.xyz", index="0:3")
    model = tiny_model(elements_of(*frames))
    save_model(model, tmp_path / "model.pt")
    labelled = labelled_file(tmp_path / "held_out.xyz", frames, model)

    env = {**os.environ, "MF_DATA_DIR": str(SHARED_DATA), "OMP_NUM_THREADS": "1",
           "MF_CACHE_DIR": str(tmp_path / "cache")}
    cmd = [sys.executable, "eval.py", f"model={tmp_path / 'model.pt'}", f"data={tmp_path / 'held_out.xyz'}",
           f"hydra.run.dir={tmp_path}/run", "torch_threads=1", "predictions=true"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| held_out | becs_diag |" in proc.stdout  # named after the file
    # a plain file is evaluated at zero field (the hand-computed errors below are), and the
    # REF_electric_field it has but that is not used is named
    assert "REF_electric_field" in proc.stdout + proc.stderr and "zero field" in proc.stdout + proc.stderr
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    data = metrics["datasets"]["held_out"]
    assert metrics["split"] == "all"
    assert data["n_structures"] == 3 and data["n_atoms"] == 3 * 72
    assert data["flagged"] == ["held_out.xyz:1"]
    q = data["quantities"]
    assert set(q) >= {"energy", "forces", "polarisation", "becs_diag", "becs_offdiag",
                      "polarisability_diag", "polarisability_offdiag", "n"}
    assert "stress" not in q  # not labelled, not invented

    # Z* diagonal errors recomputed by hand, with and without the flagged frame
    calc = MACEFieldCalculator(model)
    sq = []
    for a, ref in zip(frames, labelled):
        err = calc.get_becs(a) - ref.arrays["REF_becs"].reshape(-1, 3, 3)
        sq.append(np.einsum("kii->ki", err) ** 2)
    becs = q["becs_diag"]
    assert becs["all"]["rmse"] == pytest.approx(np.sqrt(np.mean(np.concatenate(sq))), rel=1e-6)
    assert becs["unflagged"]["rmse"] == pytest.approx(np.sqrt(np.mean(np.concatenate([sq[0], sq[2]]))), rel=1e-6)
    assert becs["flagged"]["n_values"] == 72 * 3
    assert becs["n_structures"] == 3 and becs["all"]["r2"] <= 1.0
    # P in uC/cm^2, folded
    p_err = [calc.get_polarisation(a) - r.info["REF_polarisation"] for a, r in zip(frames, labelled)]
    assert q["polarisation"]["all"]["mae"] == pytest.approx(np.mean(np.abs(p_err)) * E_PER_A2_TO_UC_PER_CM2, rel=1e-6)
    assert q["polarisation"]["unit"] == "uC/cm^2"
    assert q["polarisation"]["all"]["zero_rmse"] > 0 and "RMSE of 0" in proc.stdout
    assert (tmp_path / "run" / "parity" / "held_out_becs_diag.png").is_file()
    # per-structure predictions beside the references, mace's MACE_ convention, readable by ASE
    predicted = ase.io.read(tmp_path / "run" / "predictions_held_out.xyz", index=":")
    assert len(predicted) == 3
    for a, ref, p in zip(frames, labelled, predicted):
        # (extxyz keeps 8 decimals)
        np.testing.assert_allclose(p.arrays["MACE_becs"].reshape(-1, 3, 3), calc.get_becs(a), atol=1e-7)
        np.testing.assert_allclose(p.arrays["MACE_forces"], calc.get_forces(a), atol=1e-7)
        np.testing.assert_allclose(p.info["MACE_polarisation"], calc.get_polarisation(a), atol=1e-7)
        np.testing.assert_allclose(p.arrays["REF_becs"], ref.arrays["REF_becs"], atol=1e-7)  # the reference kept
        assert "MACE_polarisability:e/(V*A)" in p.info["MACE_units"]


def test_eval_of_the_exported_model_reproduces_the_runs_validation_metrics(tmp_path):
    """One set of weights: with EMA on (warm-up decay), validation during and after training,
    checkpoint selection, the test numbers and the exported model.pt all use the averaged
    weights, so eval.py on model.pt and the validation split gives metrics.json's numbers."""
    from tests.integration.test_experiments import TOY, run_train

    toy = [o.lstrip("+") for o in TOY if "limit_val_batches" not in o and "max_epochs" not in o]
    run_train(tmp_path, "smoke", *toy, "trainer.max_epochs=2", "trainer.limit_val_batches=1.0",
              "trainer.limit_train_batches=3", "data.eval_batch_size=4")
    run = tmp_path / "run"
    trained = json.loads((run / "metrics.json").read_text())
    assert trained["loss_scales"]["forces"] > 0

    env = {**os.environ, "MF_DATA_DIR": str(SHARED_DATA), "OMP_NUM_THREADS": "1",
           "MF_CACHE_DIR": str(tmp_path / "cache")}
    cmd = [sys.executable, "eval.py", f"model={run / 'model.pt'}", "data=sio2", "split=val", "seed=0",
           f"hydra.run.dir={tmp_path}/eval", "torch_threads=1", "plots=false"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    evaluated = json.loads((tmp_path / "eval" / "metrics.json").read_text())["datasets"]["sio2"]["quantities"]
    val = trained["val"]["sio2"]
    for q in ("energy", "forces", "becs_diag", "polarisability_diag", "polarisation"):
        assert evaluated[q]["all"]["rmse"] == pytest.approx(val[q]["rmse"], rel=1e-6), q
    # and the averaged weights are not the live ones (EMA did something), yet both files agree
    import torch
    ckpt = torch.load(trained["checkpoint"], map_location="cpu", weights_only=True)
    assert "current_model_state" in ckpt
    live, avg = ckpt["current_model_state"], ckpt["state_dict"]
    assert any(not torch.equal(live[k], avg[k]) for k in avg if avg[k].is_floating_point())
    payload = torch.load(run / "model.pt", map_location="cpu", weights_only=True)
    exported = payload["state_dict"]
    # integer buffers are never averaged: the element table survives EMA exactly
    assert exported["backbone.atomic_numbers"].tolist() == payload["backbone_config"]["atomic_numbers"] == [8, 14]
    for k, v in exported.items():
        torch.testing.assert_close(v, avg["model." + k].to(v.dtype), rtol=0, atol=0)


def test_p_metrics_of_a_zero_predictor_are_on_one_branch():
    """A model that predicts P = 0 against labels several quanta from zero: R^2 <= 0 (not 0.86, as
    when folded errors were divided by the unfolded labels' variance), its RMSE equals the
    zero-predictor line, and the parity points lie on the horizontal axis, not the diagonal."""
    import torch

    from mf_lightning.analysis.evaluate import stats
    from mf_lightning.data import keys
    from mf_lightning.data.dataset import ref_key
    from mf_lightning.data.polarisation import polarisation_quanta
    from mf_lightning.train.metrics import reference_and_prediction, zero_predictor_error

    rng = np.random.default_rng(0)
    cells = np.array([np.diag(rng.uniform(4, 6, 3)) for _ in range(40)])
    small = rng.normal(0, 0.004, (40, 3))  # the physical part, well inside half a quantum
    whole = rng.integers(-3, 4, (40, 3))  # the branch each label happens to be on
    labels = np.array([s + polarisation_quanta(c) @ n for s, c, n in zip(small, cells, whole)])
    batch = {ref_key("polarisation"): torch.tensor(labels), keys.CELL: torch.tensor(cells)}
    out = {keys.POLARISATION: torch.zeros(40, 3, dtype=torch.float64)}
    ref, pred, err = reference_and_prediction("polarisation", out, batch)
    r, p = ref["polarisation"].numpy(), pred["polarisation"].numpy()
    assert np.all(p == 0)
    np.testing.assert_allclose(p - r, err["polarisation"].numpy(), atol=1e-12)
    np.testing.assert_allclose(r, small * E_PER_A2_TO_UC_PER_CM2, atol=1e-9)  # the branch nearest 0
    s = stats(r, p, zero_predictor_error("polarisation", out, batch)["polarisation"].numpy())
    assert s["r2"] <= 0.0 + 1e-9 and s["rmse"] == pytest.approx(s["zero_rmse"])
