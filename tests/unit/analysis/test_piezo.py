"""Issue 31: the piezoelectric stress tensor from exact derivatives of F(R, E, strain).

* the strained enthalpy's derivatives equal the model's own forces, stress, P, Z*, alpha, and its
  strain derivatives equal finite differences at fixed fractional coordinates (P, forces, alpha);
* symmetry: zero for centrosymmetric crystals, point group 32's pattern for alpha-quartz;
* the proper tensor does not depend on the cell's origin or on where atoms are wrapped;
* relaxed-ion: the finite difference of P after relaxing the ions in strained cells (shipped
  quartz model), NaN and flagged beside unstable modes;
* refused on a head that never learned the field response (or, relaxed, the forces);
* ``mf-predict --piezo``: both engines write the API's tensors in 36 columns with their units,
  the --ionic Hessian is reused, NaN is empty and flagged, a head without forces is refused, an
  ensemble gives its mean F's tensors and the members' spread;
* ``eval.py ionic=true`` scores the relaxed-ion tensor against ``REF_piezoelectric`` (VASP's order).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from mf_lightning.analysis.dielectric import relax_structure
from mf_lightning.analysis.phonons import alpha_quartz
from mf_lightning.analysis.piezo import (
    finite_difference_piezo,
    piezo_tensors,
    proper_clamped,
    strain_derivative,
    to_voigt,
)
from mf_lightning.analysis.response_tensors import enthalpy_derivatives
from mf_lightning.errors import UntrainedQuantityError
from mf_lightning.simulation.calculator import MACEFieldCalculator
from tests.helpers import batch_of, tiny_model

REPO = Path(__file__).resolve().parents[3]
SIO2_MODEL = REPO / "experiments" / "models" / "sio2_md_cpu.pt"


@pytest.fixture(scope="module")
def quartz():
    return alpha_quartz()


@pytest.fixture(scope="module")
def distorted():
    """Quartz with random displacements and a sheared cell: no symmetry, P != 0."""
    atoms = alpha_quartz()
    rng = np.random.default_rng(7)
    atoms.set_cell(atoms.cell.array @ (np.eye(3) + 0.02 * rng.normal(size=(3, 3))), scale_atoms=True)
    atoms.positions += 0.05 * rng.normal(size=atoms.positions.shape)
    return atoms


@pytest.fixture(scope="module")
def charged_model():
    """A random model with fractional per-element charges (O -1.3, Si +2.6): its absolute P then
    moves by a non-quantum q a / Omega when an atom is re-wrapped (model.field_mace.charge_enthalpy),
    which the proper piezoelectric tensor must not see."""
    model = tiny_model([8, 14])
    model.atomic_charges = torch.tensor([-1.3, 2.6], dtype=model.atomic_charges.dtype)
    return model


def strained(atoms, eps):
    out = atoms.copy()
    out.set_cell(atoms.cell.array @ (np.eye(3) + eps), scale_atoms=True)  # fractional coordinates fixed
    return out


def test_strained_enthalpy_gives_the_models_own_observables(charged_model, distorted):
    d = enthalpy_derivatives(charged_model, distorted)
    out = charged_model(batch_of(charged_model, [distorted]),
                        properties=("energy", "forces", "stress", "polarisation", "becs", "polarisability"))
    for key in ("forces", "stress", "polarisation", "becs", "polarisability"):
        ref = out[key].detach().numpy().reshape(d[key].shape)
        np.testing.assert_allclose(d[key], ref, rtol=1e-10, atol=1e-12 * max(np.abs(ref).max(), 1.0), err_msg=key)
    assert d["energy"] == pytest.approx(float(out["energy"].detach()), rel=1e-12)


def test_strain_derivatives_equal_finite_differences_at_fixed_fractional_coordinates(charged_model, distorted):
    d = enthalpy_derivatives(charged_model, distorted, raman=True)
    calc = MACEFieldCalculator(charged_model)
    P0 = calc.get_polarisation(distorted.copy())
    assert np.abs(P0).max() > 1e-3  # P != 0: proper and improper differ
    e = proper_clamped(d["dM_deps"], d["polarisation"], d["volume"])
    h = 1e-5
    pairs = [(0, 0), (2, 2), (1, 2), (0, 1)]
    dP = strain_derivative(calc, distorted, calc.get_polarisation, pairs, h=h, relax=False)

    def dF_dR(atoms):  # dF/dR of the unstrained positions R: -f(eps) (I + eps)^T
        deform = np.linalg.solve(distorted.cell.array, atoms.cell.array)
        return -calc.get_forces(atoms) @ deform.T

    lam = strain_derivative(calc, distorted, dF_dR, pairs, h=h, relax=False)
    for j, k in pairs:
        np.testing.assert_allclose(e["improper"][:, j, k], dP[(j, k)], rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(d["internal_strain"][:, :, j, k], lam[(j, k)], rtol=1e-6, atol=1e-8)
    # proper = improper + (delta_ij P_k + delta_ik P_j)/2 - delta_jk P_i
    eye, P = np.eye(3), d["polarisation"]
    expected = (e["improper"] + np.einsum("jk,i->ijk", eye, P)
                - 0.5 * (np.einsum("ij,k->ijk", eye, P) + np.einsum("ik,j->ijk", eye, P)))
    np.testing.assert_allclose(e["proper"], expected, atol=1e-14)
    # d alpha / dR: the third derivative, against alpha of displaced atoms
    for atom, axis in [(0, 0), (4, 2)]:
        plus, minus = distorted.copy(), distorted.copy()
        plus.positions[atom, axis] += h
        minus.positions[atom, axis] -= h
        fd = (calc.get_polarisability(plus) - calc.get_polarisability(minus)) / (2 * h)
        np.testing.assert_allclose(d["dalpha_dR"][:, :, atom, axis], fd, rtol=1e-6, atol=1e-10)


@pytest.mark.parametrize("name", ["rocksalt MgO", "cubic perovskite BaTiO3"])
def test_a_centrosymmetric_crystal_has_no_piezoelectric_response(name):
    from ase.build import bulk
    from ase.spacegroup import crystal

    atoms = bulk("MgO", "rocksalt", a=4.21, cubic=True) if name.startswith("rocksalt") else crystal(
        ["Ba", "Ti", "O"], basis=[(0, 0, 0), (0.5, 0.5, 0.5), (0.5, 0.5, 0)], spacegroup=221,
        cellpar=[4.0, 4.0, 4.0, 90, 90, 90])
    model = tiny_model(sorted(set(atoms.get_atomic_numbers().tolist())))
    out = piezo_tensors(model, atoms)
    d = enthalpy_derivatives(model, atoms)
    assert np.abs(d["becs"]).max() > 1e-3 and np.abs(d["dM_deps"]).max() < 1e-12
    assert np.abs(d["internal_strain"]).max() < 1e-12  # every atom sits on an inversion centre
    for key in ("e_clamped", "e_ion_stable_modes"):
        assert np.abs(out[key]).max() < 1e-10, (key, out[key])
    if not out["unstable_modes_cm"]:
        assert np.abs(out["e_relaxed"]).max() < 1e-10


def assert_point_group_32(voigt, scale):
    """e_11 = -e_12 = -e_26, e_14 = -e_25, every other component 0 (x along a 2-fold axis)."""
    e11, e14 = voigt[0, 0], voigt[0, 3]
    expected = np.zeros((3, 6))
    expected[0, 0], expected[0, 1], expected[1, 5] = e11, -e11, -e11
    expected[0, 3], expected[1, 4] = e14, -e14
    np.testing.assert_allclose(voigt, expected, atol=1e-9 * scale)
    return e11, e14


def test_alpha_quartz_has_the_pattern_of_point_group_32(quartz):
    model = tiny_model([8, 14])
    out = piezo_tensors(model, quartz)
    scale = np.abs(out["e_clamped_voigt"]).max()
    e11, e14 = assert_point_group_32(out["e_clamped_voigt"], scale)
    assert abs(e11) > 1e-4 * scale and abs(e14) > 1e-4 * scale  # both allowed components are there
    ion = out["e_ion_stable_modes_voigt"]
    i11, i14 = assert_point_group_32(ion, np.abs(ion).max())
    assert abs(i11) > 0 and abs(i14) > 0
    # the mirror image (P3_121) has exactly the negative tensor: e is odd under inversion
    mirror = piezo_tensors(model, alpha_quartz(enantiomorph=True), relaxed=False)
    np.testing.assert_allclose(mirror["e_clamped"], -out["e_clamped"], atol=1e-9 * scale)


def test_the_proper_tensor_does_not_depend_on_the_origin_or_on_wrapping(charged_model, distorted):
    moved = distorted.copy()
    moved.positions += np.array([0.37, -1.9, 2.3])
    moved.wrap()
    assert not np.allclose(moved.positions - distorted.positions, [0.37, -1.9, 2.3])  # some atoms wrapped
    a, b = piezo_tensors(charged_model, distorted), piezo_tensors(charged_model, moved)
    assert np.abs(a["polarisation"] - b["polarisation"]).max() > 1e-3  # the branch of P moved
    scale = np.abs(a["e_clamped"]).max()
    for key in ("e_clamped", "e_ion_stable_modes"):
        np.testing.assert_allclose(b[key], a[key], atol=1e-9 * scale, err_msg=key)
    assert np.abs(b["e_clamped_improper"] - a["e_clamped_improper"]).max() > 1e-3 * scale


@pytest.fixture(scope="module")
def relaxed_quartz():
    calc = MACEFieldCalculator(str(SIO2_MODEL))
    atoms = alpha_quartz()
    assert relax_structure(atoms, calc, fmax=1e-5, steps=500)
    return atoms, calc


def test_relaxed_ion_tensor_is_the_finite_difference_of_P_with_the_ions_relaxed(relaxed_quartz):
    atoms, calc = relaxed_quartz
    out = piezo_tensors(calc.model, atoms)
    assert out["flags"] == [] and out["warnings"] == []
    for (j, k), fd in finite_difference_piezo(calc, atoms, pairs=[(0, 0), (1, 2)], h=2e-3, fmax=1e-6).items():
        np.testing.assert_allclose(out["e_relaxed"][:, j, k], fd, atol=2e-4)
    clamped = finite_difference_piezo(calc, atoms, pairs=[(0, 0)], h=1e-5, relax=False)[(0, 0)]
    np.testing.assert_allclose(out["e_clamped_improper"][:, 0, 0], clamped, atol=1e-6)
    assert np.abs(out["e_relaxed"]).max() > 0.05  # a real response, not a trivially small one
    np.testing.assert_allclose(out["e_relaxed_voigt"], to_voigt(out["e_relaxed"]))


def test_unstable_modes_leave_the_relaxed_tensor_empty_and_flagged(quartz):
    model = tiny_model([8, 14])
    squeezed = strained(quartz, -0.12 * np.eye(3))  # far from any minimum of F
    out = piezo_tensors(model, squeezed)
    assert out["unstable_modes_cm"], "expected unstable modes"
    assert np.isnan(out["e_relaxed"]).all() and np.isnan(out["e_ion"]).all()  # never 0, never a partial sum
    assert np.isfinite(out["e_clamped"]).all() and np.isfinite(out["e_ion_stable_modes"]).all()
    assert "unstable_modes" in out["flags"]


def test_a_head_that_never_learned_the_field_response_is_refused(quartz):
    model = tiny_model([8, 14])
    head = model.heads[0]
    model.head_quantities = {head: ["energy", "forces", "stress"]}
    with pytest.raises(UntrainedQuantityError, match="becs or polarisation"):
        piezo_tensors(model, quartz, relaxed=False)
    out = piezo_tensors(model, quartz, relaxed=False, allow_untrained=True)
    assert out["warnings"] and "untrained" in out["flags"]
    model.head_quantities = {head: ["polarisation"]}  # P alone gives the clamped tensor ...
    assert piezo_tensors(model, quartz, relaxed=False)["warnings"] == []
    with pytest.raises(UntrainedQuantityError, match="energy, forces"):  # ... but not the relaxed one
        piezo_tensors(model, quartz, relaxed=True)


# ---------------------------------------------------------------------- mf-predict --piezo and eval.py
def rows_of(path):
    import csv

    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def e_columns(row, kind):
    """A table row's ``e_<kind>_*`` columns as (3, 6), NaN where empty."""
    return np.array([[float(row[f"e_{kind}_{i}{a}"] or "nan") for a in range(1, 7)] for i in "xyz"])


@pytest.fixture(scope="module")
def predict_case(tmp_path_factory, quartz):
    from mf_lightning.model.io import save_model

    root = tmp_path_factory.mktemp("predict_piezo")
    model = tiny_model([8, 14])
    save_model(model, root / "m.pt")
    rattled = quartz.copy()
    rattled.rattle(0.02, seed=3)
    import ase.io

    ase.io.write(root / "two.xyz", [quartz, rattled], format="extxyz")
    return root, model, [quartz, rattled]


@pytest.mark.parametrize("engine", ["ase", "torchsim"])
def test_predict_piezo_columns_units_and_engines(predict_case, tmp_path, engine):
    """Both engines write the API's tensors (C/m^2, Voigt xx yy zz yz xz xy) in 36 columns with
    their units in meta.json; with --ionic the Hessian is shared and the numbers are the same."""
    import json

    from mf_lightning.cli.predict import main as predict

    if engine == "torchsim":
        pytest.importorskip("torch_sim")
    root, model, frames = predict_case
    out = tmp_path / "t.csv"
    base = [str(root / "two.xyz"), "--model", str(root / "m.pt"), "--no-progress", "--engine", engine, "--piezo"]
    assert predict(base + ["--out", str(out)]) == 0
    rows = rows_of(out)
    meta = json.loads(out.with_name("t.meta.json").read_text())
    assert set(meta["columns"]) == set(rows[0]) and meta["options"]["piezo"] is True
    piezo_columns = [c for c in rows[0] if c.startswith("e_")]
    assert len(piezo_columns) == 36 and piezo_columns[0] == "e_clamped_x1" and piezo_columns[-1] == "e_relaxed_z6"
    assert all(meta["columns"][c]["unit"] == "C/m^2" for c in piezo_columns)
    assert "yz" in meta["columns"]["e_relaxed_x4"]["meaning"]
    for row, atoms in zip(rows, frames):
        ref = piezo_tensors(model, atoms)
        for kind in ("clamped", "relaxed"):
            scale = np.abs(ref[f"e_{kind}_voigt"]).max()
            np.testing.assert_allclose(e_columns(row, kind), ref[f"e_{kind}_voigt"], rtol=1e-5, atol=1e-6 * scale)
        assert ("not_at_minimum" in row["flags"]) == (ref["max_force"] > 0.05)
    both = tmp_path / "both.csv"
    assert predict(base + ["--ionic", "--out", str(both)]) == 0
    for row, again in zip(rows, rows_of(both)):
        assert again["eps_ion"] and all(again[c] == row[c] for c in piezo_columns)
        assert again["flags"] == row["flags"]  # each flag once


def test_predict_piezo_on_unstable_modes_is_empty_and_flagged(predict_case, quartz, tmp_path):
    import ase.io

    from mf_lightning.cli.predict import main as predict

    root, _, _ = predict_case
    ase.io.write(tmp_path / "squeezed.cif", strained(quartz, -0.12 * np.eye(3)))
    out = tmp_path / "t.csv"
    assert predict([str(tmp_path / "squeezed.cif"), "--model", str(root / "m.pt"), "--out", str(out),
                    "--no-progress", "--piezo"]) == 0
    row = rows_of(out)[0]
    assert np.isnan(e_columns(row, "relaxed")).all() and np.isfinite(e_columns(row, "clamped")).all()
    assert "unstable_modes" in row["flags"].split(";")


def test_predict_piezo_refuses_a_head_without_forces_before_writing(quartz, tmp_path, capsys):
    import ase.io

    from mf_lightning.cli.predict import main as predict
    from mf_lightning.errors import EXIT_INPUT, EXIT_OK
    from mf_lightning.model.io import save_model

    model = tiny_model([8, 14])
    model.head_quantities = {model.heads[0]: ["becs", "polarisability"]}  # the response, no forces
    save_model(model, tmp_path / "response_only.pt")
    ase.io.write(tmp_path / "q.cif", quartz)
    out = tmp_path / "t.csv"
    base = [str(tmp_path / "q.cif"), "--model", str(tmp_path / "response_only.pt"), "--no-progress", "--piezo"]
    assert predict(base + ["--out", str(out)]) == EXIT_INPUT
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "relaxed-ion piezoelectric tensor" in err[0] and "never learned" in err[0]
    assert "--allow-untrained" in err[0] and not out.exists()
    assert predict(base + ["--out", str(out), "--allow-untrained"]) == EXIT_OK
    assert "untrained" in rows_of(out)[0]["flags"].split(";")
    import json

    warnings = json.loads(out.with_name("t.meta.json").read_text())["warnings"]
    assert any("piezoelectric" in w and "forces" in w for w in warnings)


def test_predict_piezo_of_an_ensemble_gives_the_mean_F_tensor_and_the_members_spread(quartz, tmp_path):
    """The tensors of the mean F (clamped: the members' mean, it is linear in F; relaxed: through
    the ensemble's own forward and Hessian) and ``_std``, the spread of the members' own tensors,
    empty where a member's relaxed tensor does not exist (never a partial spread)."""
    import ase.io

    from mf_lightning.analysis.dielectric import model_hessian
    from mf_lightning.analysis.piezo import piezo_from_derivatives
    from mf_lightning.cli.predict import main as predict
    from mf_lightning.model.ensemble import FieldMACEEnsemble
    from mf_lightning.model.io import save_model

    perturbed = tiny_model([8, 14])  # a second member near the first: both stable at quartz
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for w in perturbed.parameters():
            w.mul_(1 + 0.03 * torch.randn(w.shape, generator=g, dtype=w.dtype))
    unstable = tiny_model([8, 14], seed=1)  # has unstable modes at quartz
    ensembles = {"near": FieldMACEEnsemble([tiny_model([8, 14]), perturbed]),
                 "unstable": FieldMACEEnsemble([tiny_model([8, 14]), unstable])}
    ase.io.write(tmp_path / "q.cif", quartz)
    rows = {}
    for name, ensemble in ensembles.items():
        save_model(ensemble, tmp_path / f"{name}.pt")
        out = tmp_path / f"{name}.csv"
        assert predict([str(tmp_path / "q.cif"), "--model", str(tmp_path / f"{name}.pt"), "--out", str(out),
                        "--no-progress", "--piezo"]) == 0
        rows[name] = rows_of(out)[0]
        header = list(rows[name])
        assert header[header.index("e_relaxed_x1") + 1] == "e_relaxed_x1_std"
        assert np.isfinite(e_columns(rows[name], "relaxed")).all()  # the mean F is stable at quartz
    own = [piezo_tensors(m, quartz) for m in ensembles["near"].members]
    clamped = np.mean([p["e_clamped_voigt"] for p in own], axis=0)
    np.testing.assert_allclose(e_columns(rows["near"], "clamped"), clamped, rtol=1e-5, atol=1e-6 * np.abs(clamped).max())
    ensemble = ensembles["near"]
    mean_f = piezo_from_derivatives(enthalpy_derivatives(ensemble, quartz), model_hessian(ensemble, quartz),
                                    quartz.get_masses())["e_relaxed_voigt"]
    np.testing.assert_allclose(e_columns(rows["near"], "relaxed"), mean_f, rtol=1e-5, atol=1e-6 * np.abs(mean_f).max())
    spread = np.std([p["e_relaxed_voigt"] for p in own], axis=0, ddof=1)
    got = np.array([[float(rows["near"][f"e_relaxed_{i}{a}_std"]) for a in range(1, 7)] for i in "xyz"])
    np.testing.assert_allclose(got, spread, rtol=1e-5, atol=1e-6 * spread.max())
    assert all(rows["unstable"][f"e_relaxed_{i}{a}_std"] == "" for i in "xyz" for a in range(1, 7))
    assert rows["unstable"]["e_clamped_x1_std"] != ""


def test_eval_compares_the_relaxed_ion_tensor_with_REF_piezoelectric_in_vasps_order(quartz, tmp_path, monkeypatch):
    """``ionic=true`` on a file with ``REF_piezoelectric`` (VASP's strain order, as MP-Dielectric's):
    RMSE and MAE of e_relaxed in C/m^2 by hand; a structure with unstable modes is counted as
    invalid, not averaged in."""
    import ase.io

    from mf_lightning.analysis.evaluate import evaluate_datamodule
    from mf_lightning.cli.ensemble import calibration_data
    from mf_lightning.data.quantities import PIEZO_ORDERS, piezo_reference

    monkeypatch.setenv("MF_CACHE_DIR", str(tmp_path / "cache"))
    model = tiny_model([8, 14])
    teacher = MACEFieldCalculator(tiny_model([8, 14], seed=7))
    offset = 0.01 * np.arange(18.0).reshape(3, 6)
    vasp = [PIEZO_ORDERS["voigt"].index(c) for c in PIEZO_ORDERS["vasp"]]
    frames, predicted = [], []
    for atoms in (quartz, strained(quartz, -0.12 * np.eye(3))):  # the second: unstable modes
        a = atoms.copy()
        a.arrays["REF_becs"] = teacher.get_becs(atoms).reshape(len(a), 9)
        e = piezo_tensors(model, atoms)["e_relaxed_voigt"]
        predicted.append(e)
        ref = np.nan_to_num(e) + offset  # Voigt order ...
        a.info["REF_piezoelectric"] = ref[:, vasp].ravel()  # ... written in VASP's
        np.testing.assert_allclose(piezo_reference(a.info["REF_piezoelectric"], "vasp"), ref)
        frames.append(a)
    assert np.isfinite(predicted[0]).all() and np.isnan(predicted[1]).all()
    ase.io.write(tmp_path / "labelled.xyz", frames, format="extxyz")
    dm, split = calibration_data(str(tmp_path / "labelled.xyz"), model)
    metrics = evaluate_datamodule(model, dm, split, tmp_path / "eval", plots=False, ionic=True)
    data = metrics["datasets"]["labelled"]
    assert data["ionic"]["piezo_evaluated"] == 2 and data["ionic"]["evaluated"] == 0
    q = data["quantities"]["piezo_relaxed"]
    assert q["unit"] == "C/m^2" and q["n_invalid"] == 1 and q["n_structures"] == 1
    assert q["all"]["rmse"] == pytest.approx(np.sqrt(np.mean(offset ** 2)), rel=1e-5)
    assert q["all"]["mae"] == pytest.approx(np.mean(offset), rel=1e-5)
    assert "eps_ion_diag" not in data["quantities"]


def test_mf_phonons_of_an_ensemble_writes_the_mean_F_tensor_and_the_members_spread(quartz):
    """mf-phonons' analyse on an ensemble: the tensors of the mean F (those of its own derivatives
    and Hessian) and, as mf-predict --piezo gives them, the spread of the members' own tensors."""
    from mf_lightning.analysis.phonons import analyse
    from mf_lightning.model.ensemble import FieldMACEEnsemble
    from mf_lightning.simulation.calculator import MACEFieldCalculator

    perturbed = tiny_model([8, 14])
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for w in perturbed.parameters():
            w.mul_(1 + 0.03 * torch.randn(w.shape, generator=g, dtype=w.dtype))
    ensemble = FieldMACEEnsemble([tiny_model([8, 14]), perturbed])
    result = analyse(MACEFieldCalculator(ensemble), quartz, piezo=True, raman=False)
    own = [piezo_tensors(m, quartz) for m in ensemble.members]
    for key in ("e_clamped_voigt", "e_relaxed_voigt"):
        np.testing.assert_allclose(result["piezo"][key + "_std"], np.std([p[key] for p in own], axis=0, ddof=1),
                                   rtol=1e-6, atol=1e-12)
    single = analyse(MACEFieldCalculator(ensemble.members[0]), quartz, piezo=True, raman=False)
    assert "e_relaxed_voigt_std" not in single["piezo"]
