"""What ``mf-predict`` gives a user (issue 29, item 2): a summary table with units, each column's
unit and meaning in ``<stem>.meta.json``, Z* per atom with one column per component in
``<stem>.becs.csv``, the relaxed structures on request, a progress total, no empty errors file."""

from __future__ import annotations

import csv
import json

import ase.io
import numpy as np
import pytest

from mf_lightning.cli.predict import main as predict
from mf_lightning.data.structures import count_structures
from mf_lightning.model.io import save_model
from tests.helpers import elements_of, tiny_model


def rows_of(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def case(tmp_path_factory, sio2_atoms):
    root = tmp_path_factory.mktemp("outputs")
    model = tiny_model(elements_of(sio2_atoms))
    save_model(model, root / "m.pt")
    small = sio2_atoms[:9].copy()
    rattled = small.copy()
    rattled.rattle(0.03, seed=2)
    ase.io.write(root / "two.xyz", [small, rattled])
    ase.io.write(root / "q.cif", small)
    return root, small


def test_summary_units_and_per_atom_charges(case, capsys):
    root, small = case
    out = root / "run1" / "t.csv"
    assert predict([str(root / "two.xyz"), str(root / "q.cif"), "--model", str(root / "m.pt"), "--out", str(out),
                    "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "| formula | eps_inf | aniso | n | eps_0 | Z* (e) | flags |" in printed
    assert "Si +" in printed or "Si -" in printed
    assert "t.meta.json" in printed and "t.becs.csv" in printed
    meta = json.loads((root / "run1" / "t.meta.json").read_text())
    table_columns = list(rows_of(out)[0])
    assert set(meta["columns"]) == set(table_columns)
    assert meta["columns"]["polarisability"]["unit"] == "e/(V*A)" and meta["columns"]["becs"]["unit"] == "e"
    per_atom = rows_of(root / "run1" / "t.becs.csv")
    assert len(per_atom) == 3 * len(small)
    main_row = rows_of(out)[0]
    z = np.array(json.loads(main_row["becs"])).reshape(-1, 3, 3)
    first = [r for r in per_atom if r["id"] == main_row["id"]]
    assert [int(r["atom"]) for r in first] == list(range(len(small)))
    assert first[0]["element"] == small[0].symbol
    np.testing.assert_allclose([float(first[0][f"Z_{i}{j}"]) for i in "xyz" for j in "xyz"], z[0].ravel(),
                               atol=1e-5)
    assert not (root / "run1" / "t.errors.csv").exists() and not (root / "run1" / "t.csv.lock").exists()


def test_relaxed_structures_and_resume_keep_one_copy_each(case):
    root, _ = case
    out = root / "run2" / "t.csv"
    relaxed = root / "run2" / "relaxed.xyz"
    args = [str(root / "two.xyz"), "--model", str(root / "m.pt"), "--out", str(out), "--no-progress", "--relax",
            "--fmax", "0.5", "--write-relaxed", str(relaxed)]
    assert predict(args) == 0
    frames = ase.io.read(relaxed, index=":")
    assert [f.info["id"] for f in frames] == [r["id"] for r in rows_of(out)]
    # a kill after the side files but before the main row: the resume writes that structure again once
    lines = out.read_text().splitlines(keepends=True)
    out.write_text("".join(lines[:-1]))
    assert predict(args) == 0
    ids = [r["id"] for r in rows_of(out)]
    assert len(ids) == 2 and [f.info["id"] for f in ase.io.read(relaxed, index=":")] == ids
    assert sorted({r["id"] for r in rows_of(root / "run2" / "t.becs.csv")}) == sorted(ids)
    assert len(rows_of(root / "run2" / "t.becs.csv")) == 18


def test_the_progress_total_counts_frames_without_parsing(case):
    root, _ = case
    assert count_structures([str(root / "two.xyz"), str(root / "q.cif"), str(root / "missing.cif")]) == 4
