"""Coupling configuration: layers, L orders, init, and clear errors."""

from __future__ import annotations

import pytest
import torch

from mf_lightning.data import keys
from mf_lightning.model.coupling import COUPLINGS, field_to_irrep
from tests.helpers import batch_of, elements_of, tiny_model

FIELD = (0.03, -0.02, 0.05)


def test_default_layers(dielectric_atoms):
    z = elements_of(dielectric_atoms)
    # the paper's form cannot couple MACE's scalar-only last layer; ours can
    assert tiny_model(z, form="residual_tp").coupling_config["layers"] == [0]
    assert tiny_model(z, form="basis_tp").coupling_config["layers"] == [0, 1]


def test_scalar_last_layer_with_residual_tp_is_a_clear_error(dielectric_atoms):
    with pytest.raises(ValueError, match="layer 1.*no product with the field"):
        tiny_model(elements_of(dielectric_atoms), form="residual_tp", layers=[1])


def test_layer_out_of_range_and_unknown_form(dielectric_atoms):
    z = elements_of(dielectric_atoms)
    with pytest.raises(ValueError, match="out of range"):
        tiny_model(z, form="basis_tp", layers=[2])
    with pytest.raises(ValueError, match="unknown coupling form"):
        tiny_model(z, form="gated")
    with pytest.raises(ValueError, match="init must be"):
        tiny_model(z, form="basis_tp", init="ones")


@pytest.mark.parametrize("form,l_in,l_out", [
    ("residual_tp", [0], [1]),   # scalars -> vectors
    ("residual_tp", [1], [0]),   # vectors -> scalars
    ("basis_tp", [2], [1, 3]),
    ("basis_tp", None, [0]),
])
def test_l_orders_select_paths_and_still_respond(dielectric_atoms, form, l_in, l_out):
    model = tiny_model(elements_of(dielectric_atoms), form=form, l_in=l_in, l_out=l_out)
    for block in model.couplings.values():
        tp = block.residual.tp
        assert all(ir.l in l_out for _, ir in tp.irreps_out)
        if l_in is not None:
            assert all(ir.l in l_in for _, ir in tp.irreps_in1)
    out = model(batch_of(model, [dielectric_atoms], [FIELD]), properties=(keys.POLARISATION, keys.BECS))
    assert out[keys.POLARISATION].abs().max() > 0
    assert out[keys.BECS].sum(0).abs().max() < 1e-10 * out[keys.BECS].abs().max() * len(dielectric_atoms)


def test_impossible_l_selection(dielectric_atoms):
    with pytest.raises(ValueError, match="can couple no layer"):
        tiny_model(elements_of(dielectric_atoms), form="residual_tp", l_in=[0], l_out=[0])


@pytest.mark.parametrize("form", list(COUPLINGS))
def test_zero_init_is_exactly_the_plain_model(dielectric_atoms, form):
    z = elements_of(dielectric_atoms)
    coupled = tiny_model(z, form=form, init="zeros")
    plain = tiny_model(z, form="none")
    plain.backbone.load_state_dict(coupled.backbone.state_dict())
    batch = batch_of(coupled, [dielectric_atoms], [FIELD])
    a = coupled(batch, properties=(keys.ENERGY, keys.FORCES, keys.POLARISATION))
    b = plain(batch, properties=(keys.ENERGY, keys.FORCES, keys.POLARISATION))
    for k in a:
        torch.testing.assert_close(a[k].detach(), b[k].detach(), rtol=0, atol=0)


def test_field_irrep_convention_matches_edge_harmonics():
    """E must enter in the basis MACE's edge spherical harmonics use for l=1 (whatever e3nn's
    ordering; for e3nn 0.4.4 it is Cartesian x, y, z), with its norm."""
    from e3nn import o3

    v = torch.tensor([[0.3, -1.2, 0.7]], dtype=torch.float64)
    sh = o3.spherical_harmonics(1, v, normalize=False, normalization="component")
    torch.testing.assert_close(field_to_irrep(v) * 3 ** 0.5, sh)
    torch.testing.assert_close(field_to_irrep(v).norm(), v.norm())


def test_a_new_form_is_one_class_and_the_defaults_have_one_source(dielectric_atoms):
    """Defining a FieldCoupling subclass with a ``form`` registers it: FieldMACE builds it, P,
    Z* and alpha flow from it, and the test suites parametrised over COUPLINGS pick it up. The
    configs' coupling defaults are the code's (mf_lightning.model.coupling.DEFAULTS)."""
    from omegaconf import OmegaConf

    from mf_lightning.model import coupling as cpl
    from tests.conftest import REPO

    class ScaledResidual(cpl.FieldCoupling):
        form, stage = "toy_scaled_tp", "features"

        def __init__(self, irreps, **kwargs):
            super().__init__()
            self.residual = cpl.FieldTensorProduct(irreps, **kwargs)

        def forward(self, x, field_irrep):
            return x + 0.5 * self.residual(x, field_irrep)

    try:
        assert "toy_scaled_tp" in cpl.coupling_forms() and "toy_scaled_tp" in cpl.COUPLING_FORMS
        model = tiny_model(elements_of(dielectric_atoms), form="toy_scaled_tp")
        out = model(batch_of(model, [dielectric_atoms], fields=[FIELD]),
                    properties=(keys.ENERGY, keys.POLARISATION, keys.BECS, keys.POLARISABILITY))
        assert float(out[keys.POLARISABILITY].abs().max()) > 0 and float(out[keys.BECS].abs().max()) > 0
        with pytest.raises(TypeError, match="stage must be one of"):
            type("BadStage", (cpl.FieldCoupling,), {"form": "toy_bad", "stage": "edges"})
    finally:
        cpl.COUPLINGS.pop("toy_scaled_tp", None)
    for form in cpl.COUPLINGS:
        cfg = OmegaConf.to_container(OmegaConf.load(REPO / "conf" / "model" / "coupling" / f"{form}.yaml"))
        assert cfg["form"] == form
        assert {k: v for k, v in cfg.items() if k != "form"} == {k: v for k, v in cpl.DEFAULTS.items() if k != "form"}
