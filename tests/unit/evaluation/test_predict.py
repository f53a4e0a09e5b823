"""The screening CLI: a folder with good, corrupt and unpredictable files; resume; values."""

from __future__ import annotations

import csv
import json

import ase.io
import numpy as np
import pytest

from mf_lightning.calculator import MACEFieldCalculator
from mf_lightning.dielectric import eps_inf_from_alpha, refractive_index
from mf_lightning.predict import main
from tests.helpers import elements_of, tiny_model


@pytest.fixture(scope="module")
def screening_case(tmp_path_factory, sio2_atoms, batio3_atoms):
    root = tmp_path_factory.mktemp("screen")
    model = tiny_model(elements_of(sio2_atoms))
    model.save(root / "model.pt")
    inp = root / "structures"
    (inp / "sub").mkdir(parents=True)
    ase.io.write(inp / "quartz.cif", sio2_atoms)
    rattled = sio2_atoms.copy()
    rattled.rattle(0.05, seed=1)
    ase.io.write(inp / "sub" / "POSCAR", rattled, format="vasp")
    ase.io.write(inp / "two.extxyz", [sio2_atoms, rattled])
    text = (inp / "quartz.cif").read_text()
    (inp / "corrupt.cif").write_text(text[: len(text) // 3])  # truncated mid-file
    ase.io.write(inp / "batio3.cif", batio3_atoms)  # Ba, Ti: not in the model's element table
    return root, model, {"quartz": sio2_atoms, "rattled": rattled}


def rows_of(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_screening_skips_bad_files_and_resumes(screening_case):
    root, model, atoms = screening_case
    out = root / "out" / "table.csv"
    args = [str(root / "structures"), "--model", str(root / "model.pt"), "--out", str(out), "--no-progress"]
    assert main(args) == 3  # some structures failed
    rows = {r["id"].replace(str(root / "structures") + "/", ""): r for r in rows_of(out)}
    assert set(rows) == {"quartz.cif", "sub/POSCAR", "two.extxyz", "two.extxyz@1"}
    errors = {r["id"].rsplit("/", 1)[-1]: r["error"] for r in rows_of(out.with_name("table.errors.csv"))}
    assert set(errors) == {"corrupt.cif", "batio3.cif"}
    assert "cannot read" in errors["corrupt.cif"]
    assert "Ba" in errors["batio3.cif"] and "element table" in errors["batio3.cif"]

    # values: the same as the calculator's, for a batch-predicted structure
    calc = MACEFieldCalculator(model)
    alpha = calc.get_polarisability(atoms["rattled"])
    row = rows["sub/POSCAR"]
    np.testing.assert_allclose(json.loads(row["polarisability"]), alpha, atol=1e-8)
    assert float(row["n"]) == pytest.approx(float(refractive_index(eps_inf_from_alpha(alpha))), rel=1e-5)
    becs = np.array(json.loads(row["becs"])).reshape(-1, 3, 3)
    np.testing.assert_allclose(becs, calc.get_becs(atoms["rattled"]), atol=1e-5)
    assert rows["two.extxyz"]["eps_inf"] == rows["quartz.cif"]["eps_inf"]

    # resume: nothing is recomputed; a line cut short by a kill is dropped and redone
    data = out.read_text()
    lines = data.splitlines(keepends=True)
    out.write_text("".join(lines[:-1]) + lines[-1][: len(lines[-1]) // 2])
    assert main(args) == 3
    again = rows_of(out)
    assert len(again) == 4 and len({r["id"] for r in again}) == 4
    assert sorted(r["id"] for r in again) == sorted(r["id"] for r in rows_of(out))


def test_ionic_columns(screening_case, tmp_path):
    root, model, atoms = screening_case
    small = atoms["quartz"][:9].copy()
    ase.io.write(tmp_path / "small.cif", small)
    out = tmp_path / "ion.csv"
    assert main([str(tmp_path / "small.cif"), "--model", str(root / "model.pt"), "--out", str(out),
                 "--ionic", "--no-progress"]) == 0
    row = rows_of(out)[0]
    eps_inf, eps_ion, eps_0 = (np.array(json.loads(row[k])) for k in ("eps_inf", "eps_ion", "eps_0"))
    np.testing.assert_allclose(eps_0, eps_inf + eps_ion, atol=1e-5)
    np.testing.assert_allclose(eps_ion, eps_ion.T, atol=1e-5)
