"""The screening CLI: a folder with good, corrupt and unpredictable files; resume; values."""

from __future__ import annotations

import csv
import json

import ase.io
import numpy as np
import pytest

from mf_lightning.analysis.dielectric import eps_inf_from_alpha, refractive_index
from mf_lightning.cli.predict import main
from mf_lightning.errors import EXIT_INPUT, EXIT_PARTIAL
from mf_lightning.model.io import save_model
from mf_lightning.simulation.calculator import MACEFieldCalculator
from tests.helpers import elements_of, tiny_model


@pytest.fixture(scope="module")
def screening_case(tmp_path_factory, sio2_atoms, batio3_atoms):
    root = tmp_path_factory.mktemp("screen")
    model = tiny_model(elements_of(sio2_atoms))
    save_model(model, root / "model.pt")
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
    assert main(args) == EXIT_PARTIAL  # some structures failed (listed in table.errors.csv)
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
    assert main(args) == EXIT_PARTIAL
    again = rows_of(out)
    assert len(again) == 4 and len({r["id"] for r in again}) == 4
    assert sorted(r["id"] for r in again) == sorted(r["id"] for r in rows_of(out))


def test_ionic_columns(screening_case, tmp_path):
    root, model, atoms = screening_case
    small = atoms["quartz"][:9].copy()
    ase.io.write(tmp_path / "small.cif", small)
    out = tmp_path / "ion.csv"
    # relaxed first: at a minimum of the model's F (no unstable modes) eps_ion exists
    assert main([str(tmp_path / "small.cif"), "--model", str(root / "model.pt"), "--out", str(out),
                 "--ionic", "--relax", "--fmax", "1e-4", "--no-progress"]) == 0
    row = rows_of(out)[0]
    assert json.loads(row["unstable_modes_cm"]) == [] and row["flags"] == ""
    eps_inf, eps_ion, eps_0 = (np.array(json.loads(row[k])) for k in ("eps_inf", "eps_ion", "eps_0"))
    np.testing.assert_allclose(eps_0, eps_inf + eps_ion, atol=1e-5)
    np.testing.assert_allclose(eps_ion, eps_ion.T, atol=1e-5)


def test_screening_refuses_what_it_would_damage_and_never_mixes(screening_case, tmp_path, capsys):
    """The adversarial probe's cases: ``--out`` a model file or a foreign CSV (refused, untouched),
    the same structures typed another way or listed twice (no duplicate rows), a table written by
    another model (refused), overlapping atoms (an error row, the good rows kept), a second
    writer (refused by the lock), a head that does not exist (exit 2, one line)."""
    from mf_lightning.files import FileLock

    root, model, atoms = screening_case
    quartz = tmp_path / "quartz.cif"
    ase.io.write(quartz, atoms["quartz"])
    model_file = root / "model.pt"
    before = model_file.read_bytes()
    assert main([str(quartz), "--model", str(model_file), "--out", str(model_file), "--no-progress"]) == EXIT_INPUT
    assert model_file.read_bytes() == before
    assert "not a table of this tool" in capsys.readouterr().err
    foreign = tmp_path / "foreign.csv"
    foreign.write_text("a,b\n1,2\n3,")
    assert main([str(quartz), "--model", str(model_file), "--out", str(foreign), "--no-progress"]) == EXIT_INPUT
    assert foreign.read_text() == "a,b\n1,2\n3,"

    out = tmp_path / "t.csv"
    overlapping = atoms["quartz"].copy()
    overlapping.positions[1] = overlapping.positions[0] + 0.01
    ase.io.write(tmp_path / "bad.cif", overlapping)
    args = ["--model", str(model_file), "--out", str(out), "--no-progress"]
    assert main([str(quartz), str(tmp_path / "bad.cif"), str(quartz)] + args) == EXIT_PARTIAL
    assert [r["id"] for r in rows_of(out)] == [str(quartz.resolve())]
    errors = rows_of(tmp_path / "t.errors.csv")
    assert len(errors) == 1 and "bad.cif: atoms 0 and 1 are 0.0" in errors[0]["error"] and "overlapping" in errors[0]["error"]
    import os

    os.chdir(tmp_path)
    assert main(["./quartz.cif", "bad.cif"] + args) == EXIT_PARTIAL  # another spelling: nothing redone
    assert len(rows_of(out)) == 1 and rows_of(out)[0]["model_sha256"]

    other = tiny_model(elements_of(atoms["quartz"]), seed=3)
    save_model(other, tmp_path / "other.pt")
    assert main([str(quartz), "--model", str(tmp_path / "other.pt"), "--out", str(out), "--no-progress"]) == EXIT_INPUT
    assert "another model" in capsys.readouterr().err
    with FileLock(str(out) + ".lock", "held"):
        assert main([str(quartz)] + args) == EXIT_INPUT
    assert "another process is writing this table" in capsys.readouterr().err
    assert main([str(quartz), "--head", "typo"] + ["--model", str(model_file), "--out", str(tmp_path / "h.csv"),
                                                  "--no-progress"]) == EXIT_INPUT
    err = capsys.readouterr().err
    assert "head 'typo' is not one of the model's heads" in err and "Traceback" not in err


def test_torchsim_engine_gives_the_ase_engines_table(screening_case, tmp_path):
    """``--engine torchsim`` (response batched through TorchSim) writes the rows and errors the
    default engine writes, with the same numbers; with ``--relax`` (batched FIRE) every row says
    whether it converged."""
    root, model, atoms = screening_case
    args = [str(root / "structures"), "--model", str(root / "model.pt"), "--no-progress"]
    assert main(args + ["--out", str(tmp_path / "ase.csv")]) == EXIT_PARTIAL
    assert main(args + ["--out", str(tmp_path / "ts.csv"), "--engine", "torchsim"]) == EXIT_PARTIAL
    ase_rows = {r["id"]: r for r in rows_of(tmp_path / "ase.csv")}
    ts_rows = {r["id"]: r for r in rows_of(tmp_path / "ts.csv")}
    assert set(ase_rows) == set(ts_rows) and len(ts_rows) == 4
    assert ({r["id"] for r in rows_of(tmp_path / "ase.errors.csv")}
            == {r["id"] for r in rows_of(tmp_path / "ts.errors.csv")})
    for ident, row in ase_rows.items():
        for column in ("polarisability", "eps_inf", "becs"):
            np.testing.assert_allclose(np.array(json.loads(ts_rows[ident][column])),
                                       np.array(json.loads(row[column])), rtol=1e-6, atol=1e-9)
    quartz = tmp_path / "quartz.cif"
    ase.io.write(quartz, atoms["rattled"])
    out = tmp_path / "relaxed.csv"
    assert main([str(quartz), "--model", str(root / "model.pt"), "--out", str(out), "--no-progress",
                 "--engine", "torchsim", "--relax", "--fmax", "0.05"]) == 0
    row = rows_of(out)[0]
    unrelaxed = next(r for i, r in ase_rows.items() if i.endswith("POSCAR"))  # the same rattled structure
    assert row["relaxed"] == "True" and row["eps_inf"] != unrelaxed["eps_inf"]


@pytest.mark.parametrize("engine", ["ase", "torchsim"])
def test_a_structure_whose_neighbour_list_would_not_finish_is_an_error_row(screening_case, tmp_path, engine):
    """Checked before either engine builds a list (mace's or TorchSim's vesin): one quartz cell
    stretched to 1e5 A would need ~1e12 bins."""
    root, model, atoms = screening_case
    good, huge = tmp_path / "quartz.cif", tmp_path / "huge.cif"
    ase.io.write(good, atoms["quartz"])
    stretched = atoms["quartz"].copy()
    stretched.set_cell(stretched.cell * 1e4, scale_atoms=True)
    ase.io.write(huge, stretched)
    out = tmp_path / f"{engine}.csv"
    assert main([str(good), str(huge), "--model", str(root / "model.pt"), "--out", str(out), "--no-progress",
                 "--engine", engine]) == EXIT_PARTIAL
    assert [r["id"] for r in rows_of(out)] == [str(good.resolve())]
    errors = rows_of(tmp_path / f"{engine}.errors.csv")
    assert len(errors) == 1 and "huge.cif" in errors[0]["error"] and "neighbour list" in errors[0]["error"]
