"""Calibrated uncertainty of ensembles (mf_lightning.model.uncertainty, analysis.uncertainty,
mf-ensemble): the factor and coverage on synthetic numbers, calibration and eval's coverage on a
tiny labelled file checked by hand, mf-ensemble's command line, and mf-predict's _std columns and
high_uncertainty flag with both engines."""

from __future__ import annotations

import csv
import json

import ase.io
import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from mf_lightning.analysis.evaluate import evaluate_datamodule, uncertainty_table
from mf_lightning.analysis.uncertainty import calibrate
from mf_lightning.cli.ensemble import calibration_data
from mf_lightning.cli.ensemble import main as ensemble_main
from mf_lightning.cli.predict import main as predict_main
from mf_lightning.data import keys
from mf_lightning.errors import EXIT_INPUT, EXIT_OK, InputError
from mf_lightning.model.ensemble import FieldMACEEnsemble
from mf_lightning.model.io import load_model, save_model
from mf_lightning.model.uncertainty import (
    calibration_factor,
    combined_sigma,
    coverage,
    derived_spreads,
    sigma_parts,
    spearman,
    structure_sigma,
)
from mf_lightning.model.validity import response_flags
from mf_lightning.simulation.calculator import MACEFieldCalculator
from tests.helpers import batch_of, elements_of, tiny_model

N_FRAMES = 7
DIAG = np.eye(3, dtype=bool)


# ---------------------------------------------------------------------- the numbers
def test_calibration_factor_and_coverage_on_synthetic_numbers():
    rng = np.random.default_rng(0)
    sigma = rng.uniform(0.5, 2.0, 4000)
    z = rng.standard_normal(4000)
    z /= np.sqrt(np.mean(z ** 2))  # unit RMS exactly
    errors = 3.0 * sigma * z  # the raw sigma is 3x too small
    s = calibration_factor(errors, sigma)
    assert s == pytest.approx(np.quantile(np.abs(z), 0.6827) * 3.0, rel=1e-12) and s == pytest.approx(3.0, rel=0.05)
    raw, calibrated = coverage(errors, sigma), coverage(errors, 3.0 * sigma)
    assert calibrated["rms_z"] == pytest.approx(1.0, rel=1e-12) and raw["rms_z"] == pytest.approx(3.0, rel=1e-12)
    assert coverage(errors, s * sigma)["within_1_sigma"] == pytest.approx(0.6827, abs=1e-3)
    # a few values of tiny spread and large error (a mislabelled structure) do not set the factor
    e3, s3 = np.concatenate([errors, [5.0, -5.0]]), np.concatenate([sigma, [1e-5, 1e-5]])
    assert calibration_factor(e3, s3) == pytest.approx(s, rel=1e-2)
    assert calibrated["within_1_sigma"] == np.mean(np.abs(z) <= 1) and calibrated["within_2_sigma"] == np.mean(
        np.abs(z) <= 2)
    assert 0.6 < calibrated["within_1_sigma"] < 0.75 and 0.93 < calibrated["within_2_sigma"] < 0.97  # Gaussian
    assert raw["within_1_sigma"] < 0.3 and calibrated["n_values"] == 4000 and calibrated["n_fixed"] == 0
    # values fixed by symmetry (every member agrees to round-off) are left out, not fitted
    e2, s2 = np.concatenate([errors, [1e-4, -1e-4]]), np.concatenate([sigma, [1e-18, 0.0]])
    assert calibration_factor(e2, s2) == pytest.approx(s, rel=1e-12)
    assert coverage(e2, 3 * s2)["n_fixed"] == 2 and coverage(e2, 3 * s2)["n_values"] == 4000
    assert np.isnan(calibration_factor([1.0], [0.0])) and coverage([1.0], [0.0])["n_values"] == 0
    # does a larger sigma mean a larger error?
    assert spearman([1, 2, 3, 4], [0.1, 0.2, 0.3, 0.9]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert np.isnan(spearman([1, 1, 1, 1], [1, 2, 3, 4]))


def test_structure_sigma_and_derived_spreads():
    std = np.zeros((2, 3, 3)) + 1.0
    std[:, DIAG] = 2.0  # Z* of 2 atoms: diagonal 2, off-diagonal 1
    parts = sigma_parts("becs", std, 2)
    assert parts == {"becs_diag": (24.0, 6), "becs_offdiag": (12.0, 12)}
    assert structure_sigma("becs", std, 2) == pytest.approx(np.sqrt(36 / 18))
    assert combined_sigma(parts, {"becs_diag": 0.5}) == pytest.approx(1.0)
    assert structure_sigma("energy", 4.0, 2) == 2.0  # per atom
    assert structure_sigma("polarisation", [3.0, 0.0, 0.0], 1) == pytest.approx(np.sqrt(3.0))
    alpha = np.array([np.eye(3) * a for a in (0.01, 0.02, 0.03)])
    factor = np.full((3, 3), 5.0)
    np.fill_diagonal(factor, 2.0)
    spread = derived_spreads(alpha, factor)
    eps = 1 + np.array([0.01, 0.02, 0.03]) / 0.00552635
    assert spread["eps_poly"] == pytest.approx(2 * np.std(eps, ddof=1), rel=1e-5)
    assert spread["n"] == pytest.approx(2 * np.std(np.sqrt(eps), ddof=1), rel=1e-5)
    assert spread["eps_inf"][0, 0] == pytest.approx(spread["eps_poly"]) and spread["eps_inf"][0, 1] == 0.0


def test_high_uncertainty_flag():
    z = [8, 14]
    flags = response_flags(z, uncertainty={"becs": 0.3, "polarisability": 1e-4},
                           uncertainty_thresholds={"becs": 0.2, "polarisability": 1e-3})
    assert flags == ["high_uncertainty:becs"]
    assert response_flags(z, uncertainty={"becs": 0.3}, uncertainty_thresholds={}) == []
    assert response_flags(z, uncertainty={"becs": 0.3}) == []  # uncalibrated: no threshold, no flag


# ---------------------------------------------------------------------- a tiny labelled file
@pytest.fixture(scope="module")
def case(tmp_path_factory, sio2_atoms):
    """Nine-atom quartz pieces labelled by a teacher model, three student members."""
    root = tmp_path_factory.mktemp("uncertainty")
    z = elements_of(sio2_atoms)
    teacher = MACEFieldCalculator(tiny_model(z, seed=7))
    frames = []
    for k in range(N_FRAMES):
        a = sio2_atoms[:9].copy()
        a.rattle(0.03, seed=k)
        labelled = a.copy()
        labelled.arrays["REF_becs"] = teacher.get_becs(a).reshape(9, 9)
        labelled.arrays["REF_forces"] = teacher.get_forces(a)
        labelled.info["REF_energy"] = teacher.get_potential_energy(a)
        labelled.info["REF_polarisation"] = teacher.get_polarisation(a)
        labelled.info["REF_polarisability"] = teacher.get_polarisability(a).reshape(9)
        frames.append(labelled)
    ase.io.write(root / "held.xyz", frames, format="extxyz")
    members = [tiny_model(z, seed=s) for s in (0, 1, 2)]
    return root, ase.io.read(root / "held.xyz", index=":"), members  # as the file holds them (rounded)


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MF_CACHE_DIR", str(tmp_path / "cache"))


def test_calibration_and_eval_coverage_by_hand(case, tmp_path):
    root, frames, members = case
    ens = FieldMACEEnsemble(members)
    dm, split = calibration_data(str(root / "held.xyz"), ens)
    assert split == "all"  # a plain file: every structure
    cal = calibrate(ens, dm, split, data="held.xyz")
    assert ens.calibrated and cal["structures_used"] == {"held": N_FRAMES} and cal["structures_left_out"] == 0

    # by hand: the members' raw spread of Z* against the file's labels
    batch = batch_of(ens, frames)
    with ens.raw_spread():
        out = {k: v.detach().numpy() for k, v in ens(batch, properties=(keys.ENERGY, keys.BECS)).items()}
    ref = np.concatenate([f.arrays["REF_becs"] for f in frames]).reshape(-1, 3, 3)
    err, raw = out["becs"] - ref, out["becs_std"]
    s_diag = np.quantile(np.abs(err[:, DIAG] / raw[:, DIAG]), 0.6827)
    s_off = np.quantile(np.abs(err[:, ~DIAG] / raw[:, ~DIAG]), 0.6827)
    assert cal["scale"]["becs_diag"] == pytest.approx(s_diag, rel=1e-9)
    assert cal["scale"]["becs_offdiag"] == pytest.approx(s_off, rel=1e-9)
    assert set(cal["scale"]) >= {"energy", "forces", "polarisation", "polarisability_diag", "polarisability_offdiag"}
    factor = np.full((3, 3), s_off)
    np.fill_diagonal(factor, s_diag)
    per_structure = [np.sqrt(np.mean((raw[9 * k:9 * k + 9] * factor) ** 2)) for k in range(N_FRAMES)]
    assert cal["threshold"]["becs"] == pytest.approx(np.percentile(per_structure, 95), rel=1e-9)

    # eval with the calibrated ensemble, on the data it was calibrated on: 68.27 % within 1 sigma by construction
    metrics = evaluate_datamodule(ens, dm, split, tmp_path / "eval", plots=False, predictions=True)
    assert metrics["uncertainty"]["calibrated"] and metrics["uncertainty"]["members"] == 3
    q = metrics["datasets"]["held"]["quantities"]
    for name in ("energy", "forces", "polarisation", "becs_diag", "becs_offdiag", "polarisability_diag"):
        u = q[name]["uncertainty"]
        assert u["within_1_sigma"] == pytest.approx(0.6827, abs=1.0 / u["n_values"] + 1e-9), (name, u)
    z_diag = np.abs(err[:, DIAG]) / (s_diag * raw[:, DIAG])
    u = q["becs_diag"]["uncertainty"]
    assert u["within_1_sigma"] == pytest.approx(np.mean(z_diag <= 1)) and u["within_2_sigma"] == pytest.approx(
        np.mean(z_diag <= 2))
    assert u["spearman"] == pytest.approx(spearmanr(np.abs(err[:, DIAG]).ravel(), raw[:, DIAG].ravel()).correlation, rel=1e-9)
    assert "n" in q and q["n"]["uncertainty"]["n_values"] == N_FRAMES
    saved = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert saved["datasets"]["held"]["quantities"]["becs_diag"]["uncertainty"]["n_values"] == u["n_values"]
    assert "| held | becs_diag |" in uncertainty_table(metrics)
    predicted = ase.io.read(tmp_path / "eval" / "predictions_held.xyz", index=":")
    np.testing.assert_allclose(predicted[3].arrays["MACE_becs_std"].reshape(-1, 3, 3), raw[27:36] * factor,
                               rtol=1e-5, atol=1e-8)  # as written (8 digits)


def test_calibration_leaves_out_what_a_member_trained_on(case):
    root, frames, members = case
    ids = [{"held": ["held.xyz:0", "held.xyz:1"]}, None, {"held": ["held.xyz:1"]}]
    ens = FieldMACEEnsemble(members, training_ids=ids)
    dm, split = calibration_data(str(root / "held.xyz"), ens)
    cal = calibrate(ens, dm, split)
    assert cal["structures_left_out"] == 2 and cal["structures_used"] == {"held": N_FRAMES - 2}
    every = [{"held": [f"held.xyz:{k}" for k in range(N_FRAMES)]}, None, None]
    with pytest.raises(InputError, match="data.seed"):
        calibrate(FieldMACEEnsemble(members, training_ids=every), dm, split)


def test_mf_ensemble_combines_and_calibrates(case, tmp_path, capsys):
    root, _, members = case
    for k, m in enumerate(members):
        save_model(m, tmp_path / f"m{k}.pt")
    inputs = [str(tmp_path / f"m{k}.pt") for k in range(3)]
    out = tmp_path / "ensemble.pt"
    assert ensemble_main([*inputs, "--out", str(out), "--calibrate", str(root / "held.xyz")]) == EXIT_OK
    printed = capsys.readouterr().out
    assert "| becs_diag |" in printed and "calibrated" in printed
    ens = load_model(out)
    reference = FieldMACEEnsemble(members)
    dm, split = calibration_data(str(root / "held.xyz"), reference)
    assert ens.calibration["scale"] == pytest.approx(calibrate(reference, dm, split)["scale"], rel=1e-12)
    assert ens.sources == inputs and ens.calibration["data"] == str(root / "held.xyz")
    # without --calibrate: uncalibrated; one ensemble file alone keeps its calibration
    assert ensemble_main([*inputs[:2], "--out", str(tmp_path / "two.pt")]) == EXIT_OK
    assert not load_model(tmp_path / "two.pt").calibrated
    assert ensemble_main([str(out), "--out", str(tmp_path / "copy.pt")]) == EXIT_OK
    assert load_model(tmp_path / "copy.pt").calibration == ens.calibration
    capsys.readouterr()
    # mismatched members: one line, exit 2
    save_model(tiny_model([8, 14, 22]), tmp_path / "other.pt")
    assert ensemble_main([inputs[0], str(tmp_path / "other.pt"), "--out", str(tmp_path / "bad.pt")]) == EXIT_INPUT
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mf-ensemble: error: ") and "element table" in err[0]
    assert not (tmp_path / "bad.pt").exists()
    with pytest.raises(SystemExit) as info:
        ensemble_main([*inputs, "--out", str(tmp_path / "x.pt"), "--split", "val"])
    assert info.value.code == 2


# ---------------------------------------------------------------------- mf-predict, both engines
@pytest.fixture(scope="module")
def calibrated_file(case, tmp_path_factory):
    root, _, members = case
    path = tmp_path_factory.mktemp("model") / "ensemble.pt"
    save_model(FieldMACEEnsemble(members, calibration={"scale": {"becs_diag": 2.0, "polarisability_diag": 3.0},
                                                       "threshold": {"becs": 0.0}, "data": "held.xyz",
                                                       "split": "all"}), path)
    return path


def rows_of(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.parametrize("engine", ["ase", "torchsim"])
def test_predict_writes_the_spread_beside_each_observable(case, calibrated_file, tmp_path, engine, capsys):
    if engine == "torchsim":
        pytest.importorskip("torch_sim")
    root, frames, _ = case
    ens = load_model(calibrated_file)
    out = tmp_path / "table.csv"
    code = predict_main([str(root / "held.xyz"), "--model", str(calibrated_file), "--out", str(out), "--no-progress",
                         "--engine", engine])
    assert code == EXIT_OK
    printed = capsys.readouterr().out
    assert "±" in printed and "calibrated" in printed
    assert f"{N_FRAMES} of {N_FRAMES} structures flagged (high_uncertainty: {N_FRAMES})" in printed  # threshold 0
    rows = rows_of(out)
    header = list(rows[0])
    for column in ("eps_poly", "n", "eps_inf", "polarisability", "becs", "polarisation"):
        assert header[header.index(column) + 1] == column + "_std"
    atoms = frames[2].copy()
    calc = MACEFieldCalculator(ens)
    atoms.calc = calc
    spread = calc.get_uncertainty(atoms)
    row = rows[2]
    np.testing.assert_allclose(np.array(json.loads(row["becs_std"])).reshape(-1, 3, 3), spread["becs"], rtol=1e-4,
                               atol=1e-6)
    np.testing.assert_allclose(json.loads(row["polarisability_std"]), spread["polarisability"], rtol=1e-4, atol=1e-8)
    np.testing.assert_allclose(json.loads(row["eps_inf_std"]), spread["eps_inf"], rtol=1e-4, atol=1e-6)
    assert float(row["n_std"]) == pytest.approx(float(spread["n"]), rel=1e-4)
    np.testing.assert_allclose(json.loads(row["polarisation_std"]), spread["polarisation"], rtol=1e-4, atol=1e-8)
    assert "high_uncertainty:becs" in row["flags"].split(";")
    meta = json.loads(out.with_name("table.meta.json").read_text())
    assert meta["uncertainty"]["calibrated"] is True and meta["uncertainty"]["members"] == 3
    assert meta["uncertainty"]["high_uncertainty_threshold"] == {"becs": 0.0}
    assert "sigma" in meta["columns"]["becs_std"]["meaning"]
    per_atom = rows_of(out.with_name("table.becs.csv"))
    assert len(per_atom) == 9 * N_FRAMES and float(per_atom[0]["Z_xx_std"]) > 0


def test_predict_ionic_gives_the_spread_of_eps_0(case, calibrated_file, tmp_path):
    root, frames, _ = case
    ase.io.write(tmp_path / "one.cif", frames[0])
    out = tmp_path / "ion.csv"
    code = predict_main([str(tmp_path / "one.cif"), "--model", str(calibrated_file), "--out", str(out),
                         "--no-progress", "--ionic"])
    assert code == EXIT_OK
    header = list(rows_of(out)[0])
    assert header[header.index("eps_0") + 1] == "eps_0_std"
    assert header[header.index("eps_0_poly") + 1] == "eps_0_poly_std"


def test_a_single_model_table_is_unchanged(case, tmp_path):
    root, _, members = case
    save_model(members[0], tmp_path / "one.pt")
    out = tmp_path / "t.csv"
    assert predict_main([str(root / "held.xyz"), "--model", str(tmp_path / "one.pt"), "--out", str(out),
                         "--no-progress"]) == EXIT_OK
    assert not [c for c in rows_of(out)[0] if c.endswith("_std") or c == "polarisation"]
    assert "uncertainty" not in json.loads(out.with_name("t.meta.json").read_text())
    assert torch.get_num_threads() == 1
