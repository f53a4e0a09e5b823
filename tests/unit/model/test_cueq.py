"""cuEquivariance: the backbone rebuilt on cuequivariance-torch (mace-torch's own converters)
gives the e3nn model's F, forces, P, Z* and alpha, for both coupling forms, in float64 to 1e-10
and in float32 to its round-off; it survives save, load and a Lightning checkpoint round trip.
Without CUDA, cuequivariance-torch runs in plain torch (slow, exact), so this is checked on CPU;
without the package the tests of the conversion are skipped and a request for it is one clear
error. The GPU speed is bench/gpu_check.sh's."""

from __future__ import annotations

import ase.io
import pytest
import torch

from mf_lightning.data import keys
from mf_lightning.errors import CueqUnavailableError
from mf_lightning.model import backbone as bb
from mf_lightning.model.io import load_model, save_model
from tests.conftest import shared_file, tolerance
from tests.helpers import batch_of, elements_of, tiny_model

PROPS = (keys.ENERGY, keys.FORCES, keys.STRESS, keys.POLARISATION, keys.BECS, keys.POLARISABILITY)
needs_cueq = pytest.mark.skipif(not bb.cueq_available(), reason="cuequivariance-torch not installed (pip install '.[cueq]')")


@pytest.fixture(scope="module")
def quartz():
    return ase.io.read(shared_file("md/SiO2.xyz"), index=0)


def outputs(model, atoms, dtype):
    batch = batch_of(model, [atoms], fields=[[0.01, -0.02, 0.03]], dtype=getattr(torch, dtype))
    return {k: v.detach() for k, v in model(batch, properties=PROPS).items() if k in PROPS}


@needs_cueq
@pytest.mark.parametrize("form", ["residual_tp", "basis_tp"])
def test_cueq_backbone_gives_the_e3nn_observables(quartz, form, dtype):
    model = tiny_model(elements_of(quartz), form=form, dtype=dtype)
    ref = outputs(model, quartz, dtype)
    model.use_cueq()
    assert model.cueq and type(model.backbone).__name__ == "ScaleShiftMACE"
    got = outputs(model, quartz, dtype)
    for k in PROPS:
        scale = float(ref[k].abs().max())
        tol = dict(rtol=0, atol=1e-10 * max(scale, 1.0)) if dtype == "float64" else tolerance(dtype, scale)
        torch.testing.assert_close(got[k], ref[k], **tol, msg=lambda m: f"{form} {k}: {m}")
    model.use_cueq(False)  # and back: the e3nn weights again
    back = outputs(model, quartz, dtype)
    for k in PROPS:
        torch.testing.assert_close(back[k], ref[k], **tolerance(dtype, float(ref[k].abs().max())))


@needs_cueq
def test_cueq_survives_save_load_and_checkpoints(quartz, tmp_path, monkeypatch):
    model = tiny_model(elements_of(quartz))
    ref = outputs(model, quartz, "float64")
    model.use_cueq()
    save_model(model, tmp_path / "m.pt")
    loaded = load_model(tmp_path / "m.pt")  # as saved: on cuEquivariance
    assert loaded.cueq
    e3nn = load_model(tmp_path / "m.pt", cueq=False)  # the file holds e3nn weights: loads anywhere
    assert not e3nn.cueq
    for m in (loaded, e3nn):
        got = outputs(m, quartz, "float64")
        for k in PROPS:
            torch.testing.assert_close(got[k], ref[k], rtol=0, atol=1e-10 * max(float(ref[k].abs().max()), 1.0))
    # a Lightning checkpoint holds the module's state as it trains (cuEquivariance weights): a
    # model rebuilt with cueq from the same config takes it strictly (what resume does)
    state = loaded.state_dict()
    rebuilt = tiny_model(elements_of(quartz), seed=1).use_cueq()
    rebuilt.load_state_dict(state, strict=True)
    got = outputs(rebuilt, quartz, "float64")
    torch.testing.assert_close(got[keys.BECS], ref[keys.BECS], rtol=0, atol=1e-10)
    # where cuEquivariance is missing, a cueq file runs on e3nn (the same numbers)
    monkeypatch.setattr(bb, "cueq_available", lambda: False)
    monkeypatch.setattr("mf_lightning.model.io.cueq_available", lambda: False)
    assert not load_model(tmp_path / "m.pt").cueq


@needs_cueq
def test_exports_of_a_cueq_model_are_e3nn_mace_models(quartz):
    from mf_lightning.model.export import zero_field_backbone

    model = tiny_model(elements_of(quartz))
    batch = batch_of(model, [quartz])
    ref = model(batch, properties=(keys.ENERGY,))[keys.ENERGY].detach()
    exported = zero_field_backbone(model.use_cueq())
    assert not any("cuequivariance" in type(m).__module__ for m in exported.modules())
    energy = exported(dict(batch), compute_force=False)["energy"].detach()
    torch.testing.assert_close(energy, ref, rtol=0, atol=1e-10)


def test_asking_for_cueq_without_the_package_is_one_clear_error(quartz, monkeypatch):
    monkeypatch.setattr(bb, "cueq_available", lambda: False)
    model = tiny_model(elements_of(quartz))
    with pytest.raises(CueqUnavailableError, match=r"pip install '\.\[gpu\]'"):
        model.use_cueq()
    assert not model.cueq  # unchanged
    model.use_cueq(False)  # e3nn asked for, e3nn there: nothing to do, no error
