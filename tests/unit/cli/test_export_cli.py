"""mf-export (issue 29 items 3 and 6, issue 26 item 1): ``--model`` as in every tool, a float64
export by default, and no export for MD of a head that never learned energies and forces."""

from __future__ import annotations

import pytest
import torch

from mf_lightning.cli.export import main as export_main
from mf_lightning.errors import EXIT_INPUT
from mf_lightning.model.io import save_model
from tests.helpers import elements_of, tiny_model


@pytest.fixture()
def models(tmp_path, sio2_atoms):
    z = elements_of(sio2_atoms)
    f32 = tiny_model(z, dtype="float32")
    save_model(f32, tmp_path / "f32.pt")
    response_only = tiny_model(z)
    response_only.head_quantities = {response_only.heads[0]: ["becs", "polarisability"]}
    save_model(response_only, tmp_path / "response_only.pt")
    return tmp_path


def test_model_option_and_a_float64_export_by_default(models):
    out = models / "m.model"
    assert export_main(["--model", str(models / "f32.pt"), "--field", "0", "0", "0.01", "--out", str(out)]) == 0
    exported = torch.load(out, weights_only=False, map_location="cpu")
    assert next(exported.parameters()).dtype == torch.float64
    assert export_main(["--model", str(models / "f32.pt"), "--dtype", "float32", "--out", str(out)]) == 0
    assert next(torch.load(out, weights_only=False, map_location="cpu").parameters()).dtype == torch.float32


def test_the_model_once_and_only_a_head_that_learned_forces(models, capsys):
    with pytest.raises(SystemExit) as exit_:
        export_main([str(models / "f32.pt"), "--model", str(models / "f32.pt"), "--out", str(models / "x.model")])
    assert exit_.value.code == EXIT_INPUT
    capsys.readouterr()
    assert export_main(["--model", str(models / "response_only.pt"), "--out", str(models / "x.model")]) == EXIT_INPUT
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "never learned" in err[0] and not (models / "x.model").exists()
    assert export_main(["--model", str(models / "response_only.pt"), "--out", str(models / "x.model"),
                        "--allow-untrained"]) == 0
