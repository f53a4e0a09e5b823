"""Your own data in one command (issue 29, item 1): ``train.py data=my.xyz`` trains on a plain
extxyz file (split 80/10/10, the dataset named after the file) and ``eval.py data=my.xyz`` reads it
the same way; parity plots in the format asked for."""

from __future__ import annotations

import json

import ase.io
import numpy as np
import pytest

from tests.conftest import SHARED_DATA
from tests.integration.test_train_config_errors import TOY, run


@pytest.fixture(scope="module")
def own_file(tmp_path_factory):
    root = tmp_path_factory.mktemp("own")
    out = []
    for a in ase.io.read(SHARED_DATA / "md" / "SiO2.xyz", index=":12"):
        b = a.copy()
        b.calc = None
        b.info = {"REF_energy": float(a.info["total_energy"])}
        b.arrays["REF_forces"] = np.array(a.calc.results["forces"])
        b.arrays["REF_becs"] = a.arrays["born_charge"]
        out.append(b)
    ase.io.write(root / "my-quartz.xyz", out)
    return root / "my-quartz.xyz"


def test_train_and_eval_on_a_plain_file_named_after_it(own_file, tmp_path):
    proc = run(tmp_path, "train.py", "experiment=smoke", f"data={own_file}", *TOY, f"hydra.run.dir={tmp_path / 'run'}",
               "figure_format=pdf")
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert list(metrics["n_structures"]) == ["my_quartz"]
    assert sum(metrics["n_structures"]["my_quartz"].values()) == 12 and metrics["n_structures"]["my_quartz"]["val"] > 0
    assert set(metrics["test"]["my_quartz"]) >= {"energy", "forces", "becs_diag"}
    pdfs = sorted((tmp_path / "run" / "parity").glob("*.pdf"))
    assert pdfs and pdfs[0].read_bytes().startswith(b"%PDF")
    proc = run(tmp_path, "eval.py", f"model={tmp_path / 'run' / 'model.pt'}", f"data={own_file}",
               f"hydra.run.dir={tmp_path / 'eval'}", "plots=false")
    assert proc.returncode == 0, proc.stderr[-3000:]
    evaluated = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert list(evaluated["datasets"]) == ["my_quartz"] and evaluated["datasets"]["my_quartz"]["n_structures"] == 12
    bad = run(tmp_path, "train.py", "experiment=smoke", f"data={own_file}", *TOY, f"hydra.run.dir={tmp_path / 'bad'}",
              "figure_format=gif")
    assert bad.returncode == 2 and "figure_format" in bad.stderr
