"""Model files of the format before the record checksum (``record_sha256``) still load, with one
warning per load that names the file as unverified; files of the current format load silently."""

from __future__ import annotations

import logging

import pytest
import torch

import mf_lightning
from mf_lightning.model.io import save_model
from tests.helpers import elements_of, tiny_model


@pytest.mark.parametrize("strip", [("record_sha256",), ("record_sha256", "sha256")],
                         ids=["weights-checksum-only", "no-checksum"])
def test_a_model_file_without_the_record_checksum_loads_with_a_warning(tmp_path, dielectric_atoms, caplog, strip):
    model = tiny_model(elements_of(dielectric_atoms))
    current = tmp_path / "current.pt"
    save_model(model, current)
    payload = torch.load(current, weights_only=True)
    for key in strip:
        del payload[key]
    old = tmp_path / "old.pt"
    torch.save(payload, old)  # what save_model wrote before the record checksum (or before any)

    with caplog.at_level(logging.WARNING, logger="mf_lightning.model.io"):
        mf_lightning.load_model(current)
    assert not [r for r in caplog.records if "unverified" in r.getMessage()]

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="mf_lightning.model.io"):
        loaded = mf_lightning.load_model(old)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and str(old) in warnings[0].getMessage() and "unverified" in warnings[0].getMessage()
    assert ("weights are checked" in warnings[0].getMessage()) == ("sha256" not in strip)
    for name, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name].cpu(), value.cpu()), name
