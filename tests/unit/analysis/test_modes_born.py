"""Issue 31: mode-resolved IR and Raman, phonopy BORN files and the ``mf-phonons`` tool.

* the Raman invariant of known tensors, and d alpha/dQ against finite differences along a mode;
* alpha-quartz's selection rules (A1 IR-silent, A2 Raman-silent) with phonopy's irreps;
* a BORN file read back by phonopy's own reader gives our Z* and eps_inf, and phonopy's LO-TO
  splitting from it equals ours (so its Z* index convention is ours);
* ``mf-phonons`` writes every output, flags unstable modes and refuses untrained heads.
"""

from __future__ import annotations

import csv
import json
import warnings

import numpy as np
import pytest
import torch

from mf_lightning.analysis.born import write_born
from mf_lightning.analysis.dielectric import OMEGA_TO_INVCM, eps_inf_from_alpha, model_hessian
from mf_lightning.analysis.modes import POLARISABILITY_VOLUME, gamma_modes, irrep_labels, mode_rows, raman_activity
from mf_lightning.analysis.phonons import alpha_quartz
from mf_lightning.analysis.response_tensors import enthalpy_derivatives
from mf_lightning.cli.phonons import main as phonons
from mf_lightning.errors import EXIT_INPUT
from mf_lightning.model.io import save_model
from mf_lightning.simulation.calculator import MACEFieldCalculator
from mf_lightning.units import EPS0_E_PER_V_A
from tests.helpers import tiny_model


@pytest.fixture(scope="module")
def quartz_response():
    """A random model with per-element charges (large Z*, so LO-TO splitting shows) on ideal quartz:
    its derivatives, Hessian and modes."""
    atoms = alpha_quartz()
    model = tiny_model([8, 14])
    model.atomic_charges = torch.tensor([-1.0, 2.0], dtype=model.atomic_charges.dtype)
    d = enthalpy_derivatives(model, atoms, raman=True)
    H = model_hessian(model, atoms)
    modes = gamma_modes(H, atoms.get_masses(), d["becs"], d["volume"], dalpha_dR=d["dalpha_dR"])
    return atoms, model, d, H, modes


def test_raman_activity_of_known_tensors():
    assert raman_activity(2.0 * np.eye(3)) == pytest.approx(45 * 4.0)  # isotropic: 45 a^2
    assert raman_activity(np.diag([1.0, -1.0, 0.0])) == pytest.approx(7 * 3.0)  # traceless: 7 g^2, g^2 = 3
    off = np.zeros((3, 3))
    off[0, 1] = off[1, 0] = 1.0
    assert raman_activity(off) == pytest.approx(7 * 3.0)  # g^2 = 3 (xy^2 + ...)
    R = np.linalg.qr(np.random.default_rng(1).normal(size=(3, 3)))[0]
    t = np.random.default_rng(2).normal(size=(3, 3))
    t = t + t.T
    assert raman_activity(R @ t @ R.T) == pytest.approx(raman_activity(t))  # an invariant


def test_raman_derivative_equals_finite_differences_along_the_mode(quartz_response):
    atoms, model, d, H, modes = quartz_response
    calc = MACEFieldCalculator(model)
    m = int(np.argmax(modes["raman_activity"]))
    step = modes["modes"][m] / np.sqrt(atoms.get_masses())[:, None]  # A per unit Q (sqrt(amu) A)
    h = 1e-4
    alpha = []
    for sign in (1, -1):
        a = atoms.copy()
        a.positions += sign * h * step
        alpha.append(calc.get_polarisability(a))
    fd = (alpha[0] - alpha[1]) / (2 * h) * d["volume"] * POLARISABILITY_VOLUME
    np.testing.assert_allclose(modes["dalpha_dQ"][m], fd, rtol=1e-6, atol=1e-9)
    Zm = np.einsum("kia,ka->i", d["becs"], step)
    assert modes["ir_intensity"][m] == pytest.approx((Zm ** 2).sum(), rel=1e-10)


def test_quartz_selection_rules_with_phonopys_irreps(quartz_response):
    pytest.importorskip("phonopy")
    atoms, model, d, H, modes = quartz_response
    labels = irrep_labels(atoms, H, modes["wavenumbers_cm"])
    assert sorted(set(labels)) == ["A1", "A2", "E"] and labels.count("A1") == 4 and labels.count("A2") == 4
    rows = mode_rows(modes, labels)
    ir_max = max(r["ir_intensity_e2_per_amu"] for r in rows)
    raman_max = max(r["raman_activity_A4_per_amu"] for r in rows)
    for r in rows:
        if r["irrep"] == "A1":
            assert r["ir_intensity_e2_per_amu"] < 1e-10 * ir_max and r["raman_activity_A4_per_amu"] > 1e-6 * raman_max
        if r["irrep"] == "A2":
            assert r["raman_activity_A4_per_amu"] < 1e-10 * raman_max and r["ir_intensity_e2_per_amu"] > 1e-6 * ir_max


def _phonopy_atoms(atoms):
    from phonopy.structure.atoms import PhonopyAtoms

    return PhonopyAtoms(symbols=atoms.get_chemical_symbols(), cell=atoms.cell.array,
                        scaled_positions=atoms.get_scaled_positions(), masses=atoms.get_masses())


def test_born_file_read_back_by_phonopy_gives_our_charges_and_lo_to_splitting(quartz_response, tmp_path):
    pytest.importorskip("phonopy")
    from phonopy import Phonopy
    from phonopy.file_IO import parse_BORN

    atoms, model, d, H, modes = quartz_response
    eps = eps_inf_from_alpha(d["polarisability"])
    record = write_born(tmp_path / "BORN", atoms, d["becs"], eps)
    assert record["independent"].tolist() == [0, 3] and record["max_change"] < 1e-10  # Si, O
    text = (tmp_path / "BORN").read_text().splitlines()
    assert text[0].startswith("#") and len(text) == 4  # phonopy's default factor; eps; 2 atoms
    assert abs(d["becs"][0] - d["becs"][0].T).max() > 1e-3  # asymmetric: a transposed file would show
    cell = _phonopy_atoms(atoms)
    nac = parse_BORN(cell, filename=str(tmp_path / "BORN"))
    np.testing.assert_allclose(nac["born"], d["becs"], atol=2e-8)
    np.testing.assert_allclose(nac["dielectric"], eps, atol=2e-8)
    # phonopy's non-analytic term at Gamma along q uses (q . Z*_k)_a, as ours (field index first)
    n = len(atoms)
    ph = Phonopy(cell, supercell_matrix=np.eye(3, dtype=int))
    ph.force_constants = H.reshape(n, 3, n, 3).transpose(0, 2, 1, 3).copy()
    ph.nac_params = {**nac, "factor": 1.0 / (4 * np.pi * EPS0_E_PER_V_A)}  # e^2/(4 pi eps0) in eV A
    q_frac = np.array([1.0, 0.3, 0.2])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ph.run_qpoints([[0.0, 0.0, 0.0]], nac_q_direction=q_frac)
        theirs = np.sort(ph.get_qpoints_dict()["frequencies"][0]) * 33.35641  # THz -> cm^-1
    q = q_frac @ np.linalg.inv(atoms.cell.array).T
    q /= np.linalg.norm(q)
    Zq = np.einsum("i,kia->ka", q, d["becs"]).reshape(-1)
    nac_term = np.outer(Zq, Zq) / (EPS0_E_PER_V_A * d["volume"] * (q @ eps @ q))
    inv_sqrt_m = np.repeat(1 / np.sqrt(atoms.get_masses()), 3)
    w2 = np.linalg.eigvalsh((H + nac_term) * np.outer(inv_sqrt_m, inv_sqrt_m))
    ours = np.sort(np.sign(w2) * np.sqrt(np.abs(w2)) * OMEGA_TO_INVCM)
    without = np.sort(modes["wavenumbers_cm"])
    assert np.abs(ours[3:] - without).max() > 1.0  # a real LO-TO splitting
    np.testing.assert_allclose(theirs, ours, atol=1e-3)


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("phonons") / "model.pt"
    save_model(tiny_model([8, 14]), path)
    return path


@pytest.fixture(scope="module")
def quartz_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("phonons") / "quartz.xyz"
    alpha_quartz().write(path)
    return path


@pytest.fixture(scope="module")
def squeezed_file(tmp_path_factory):
    """Quartz compressed by 12 %: far from the random model's minimum, with unstable modes."""
    atoms = alpha_quartz()
    atoms.set_cell(0.88 * atoms.cell.array, scale_atoms=True)
    path = tmp_path_factory.mktemp("phonons") / "squeezed.xyz"
    atoms.write(path)
    return path


def test_mf_phonons_writes_modes_piezo_born_and_summary(model_file, quartz_file, tmp_path, capsys):
    pytest.importorskip("spglib")  # the BORN file's symmetry (the phonons extra)
    out = tmp_path / "out"
    code = phonons([str(quartz_file), "--model", str(model_file), "--piezo", "--born", str(tmp_path / "born"),
                    "--out", str(out), "--format", "svg", "--dpi", "50"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "e_relaxed" in printed and "optical modes" in printed
    rows = list(csv.DictReader(open(out / "modes.csv")))
    assert len(rows) == 24 and set(rows[0]) == {"mode", "wavenumber_cm", "ir_intensity_e2_per_amu",
                                                 "raman_activity_A4_per_amu", "irrep", "unstable"}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["units"]["ir_intensity_e2_per_amu"] == "e^2/amu" and summary["model_sha256"]
    assert summary["ir_peaks"] and summary["strongest_ir"][0]["ir_intensity_e2_per_amu"] > 0
    piezo = json.loads((out / "piezo.json").read_text())
    assert np.array(piezo["e_clamped_voigt"]).shape == (3, 6) and piezo["units"]["e_clamped"] == "C/m^2"
    assert (out / "modes.svg").is_file() and (tmp_path / "born" / "BORN").is_file()


def test_mf_phonons_flags_unstable_modes_and_leaves_the_relaxed_tensor_empty(model_file, squeezed_file, tmp_path):
    out = tmp_path / "out"
    assert phonons([str(squeezed_file), "--model", str(model_file), "--piezo", "--out", str(out)]) == 0
    rows = list(csv.DictReader(open(out / "modes.csv")))
    summary = json.loads((out / "summary.json").read_text())
    piezo = json.loads((out / "piezo.json").read_text())
    unstable = [r for r in rows if r["unstable"] == "True"]
    assert unstable and all(float(r["wavenumber_cm"]) < 0 for r in unstable)
    assert "unstable_modes" in summary["flags"] and summary["unstable_modes_cm"]
    assert all(v is None for v in sum(piezo["e_relaxed_voigt"], []))  # empty, never 0
    assert all(v is not None for v in sum(piezo["e_clamped_voigt"], []))
    csv_rows = list(csv.DictReader(open(out / "piezo.csv")))
    assert all(r["e_xx_C_per_m2"] == "" for r in csv_rows if r["tensor"] == "relaxed")


def test_mf_phonons_refuses_a_head_that_never_learned_the_forces(quartz_file, tmp_path, capsys):
    model = tiny_model([8, 14])
    model.head_quantities = {model.heads[0]: ["becs", "polarisability"]}
    path = tmp_path / "response_only.pt"
    save_model(model, path)
    code = phonons([str(quartz_file), "--model", str(path), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == EXIT_INPUT and len(err) == 1 and "energy, forces" in err[0] and "never learned" in err[0]
    assert not (tmp_path / "out" / "modes.csv").exists()
    assert phonons([str(quartz_file), "--model", str(path), "--out", str(tmp_path / "out2"),
                    "--allow-untrained"]) == 0
    assert "untrained" in json.loads((tmp_path / "out2" / "summary.json").read_text())["flags"]


@pytest.mark.parametrize("bad", ["missing", "garbage", "nan_position", "overlap", "missing_model", "pickled_model",
                                 "relax_cell_alone", "out_is_a_file"])
def test_mf_phonons_bad_input_is_one_line_exit_2(bad, model_file, quartz_file, tmp_path, capsys):
    structure, model, out = tmp_path / "s.xyz", model_file, tmp_path / "out"
    extra = []
    if bad == "garbage":
        structure.write_text("this is not a structure\n\x01 at all\n")
    elif bad in ("nan_position", "overlap"):
        atoms = alpha_quartz()
        atoms.positions[1] = np.nan if bad == "nan_position" else atoms.positions[0]
        atoms.write(structure)
    elif bad != "missing":
        structure = quartz_file
    if bad == "missing_model":
        model = tmp_path / "nothing.pt"
    elif bad == "pickled_model":
        model = tmp_path / "pickled.pt"
        torch.save({"a": ValueError("x")}, model)
    elif bad == "relax_cell_alone":
        extra = ["--relax-cell"]
    elif bad == "out_is_a_file":
        out.write_text("x")
    try:
        code = phonons([str(structure), "--model", str(model), "--out", str(out), *extra])
    except SystemExit as exc:  # argparse's usage errors
        code = exc.code
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == EXIT_INPUT and len(err) == 1 and err[0].startswith("mf-phonons: error: "), (code, err)
    assert "Traceback" not in err[0]



def test_a_one_atom_cell_has_no_optical_mode_to_label():
    """An elemental primitive cell (Cu) has only acoustic modes: no labels, no phonopy call on nothing."""
    from ase.build import bulk

    from mf_lightning.analysis.modes import irrep_labels

    assert irrep_labels(bulk("Cu", "fcc", a=3.6), np.zeros((3, 3)), np.zeros(0)) == []
