"""Every field-dependent label can be learned from the first step.

For each coupling form, init and L selection that a shipped experiment uses, the loss of P, of
Z* and of alpha each has a non-zero gradient with respect to the coupling parameters at step 0.
(E, F and S do not depend on the coupling at E = 0 by construction: their gradient is zero.)
The bilinear coupling alone (``field_order=1``) puts alpha on an exact saddle at W = 0, and a
factorised W = A B with A = 0 does not lift it; the field-squared term does (model/coupling.py).
"""

from __future__ import annotations

import pytest
import torch

import mf_lightning
from mf_lightning.data import keys
from mf_lightning.data.dataset import ref_key, weight_key
from mf_lightning.model.io import save_model
from mf_lightning.train.losses import MultiTaskLoss
from tests.helpers import TINY, batch_of, elements_of

FIELD_TASKS = ("polarisation", "becs", "polarisability")


def labelled_batch(model, atoms):
    """Two zero-field frames with made-up non-zero P, Z*, alpha labels (the model predicts ~0)."""
    b = batch_of(model, atoms)
    n_graphs, n_atoms = len(atoms), sum(len(a) for a in atoms)
    g = torch.Generator().manual_seed(0)
    shapes = {"polarisation": (n_graphs, 3), "becs": (n_atoms, 3, 3), "polarisability": (n_graphs, 3, 3)}
    for task, shape in shapes.items():
        b[ref_key(task)] = torch.randn(*shape, generator=g, dtype=torch.float64) * 1e-2
        b[weight_key(task)] = torch.ones(n_graphs, dtype=torch.float64)
    return b


def coupling_gradients(model, batch, task):
    loss = MultiTaskLoss({task: 1.0}, scales={task: 1e-2})
    out = model(batch, properties=(keys.ENERGY, task), training=True)
    value, _ = loss(out, batch)
    params = list(model.couplings.parameters())
    grads = torch.autograd.grad(value, params, allow_unused=True)
    return float(sum(gr.abs().sum() for gr in grads if gr is not None))


def build(z, **coupling):
    return mf_lightning.build_model(atomic_numbers=z, coupling=coupling, seed=0, dtype="float64",
                                    atomic_inter_scale=2.0, **TINY)


# (form, init, l_in, layers): the settings of conf/experiment/* (default coupling, ablations,
# the fine-tune's zero init)
SHIPPED = [
    ("residual_tp", "random", None, None),
    ("residual_tp", "zeros", None, None),
    ("basis_tp", "random", None, None),
    ("basis_tp", "zeros", None, None),
    ("residual_tp", "random", [0], None),
    ("residual_tp", "random", [1], None),
    ("basis_tp", "random", None, [0]),
    ("basis_tp", "random", None, [1]),
]


@pytest.mark.parametrize("form,init,l_in,layers", SHIPPED)
def test_every_field_label_has_a_coupling_gradient_at_step_0(sio2_atoms, form, init, l_in, layers):
    atoms = [sio2_atoms, sio2_atoms.copy()]
    atoms[1].rattle(0.05, seed=1)
    model = build(elements_of(sio2_atoms), form=form, init=init, l_in=l_in, layers=layers)
    batch = labelled_batch(model, atoms)
    for task in FIELD_TASKS:
        assert coupling_gradients(model, batch, task) > 0, (form, init, l_in, layers, task)


def test_zero_init_keeps_zero_field_behaviour_for_every_field(sio2_atoms):
    """What an upgraded foundation model needs at step 0: F(R, E) = F(R, 0) for every E, so P,
    Z* and alpha are exactly zero, while (test above) each still has a gradient."""
    model = build(elements_of(sio2_atoms), form="residual_tp", init="zeros")
    out = model(batch_of(model, [sio2_atoms], [(0.1, -0.2, 0.3)]),
                properties=(keys.ENERGY, keys.POLARISATION, keys.BECS, keys.POLARISABILITY))
    for k in (keys.POLARISATION, keys.BECS, keys.POLARISABILITY):
        assert float(out[k].detach().abs().max()) == 0.0


def test_bilinear_coupling_puts_alpha_on_a_saddle_at_zero(sio2_atoms):
    """Why the field-squared term exists: with field_order=1 and W = 0, alpha's loss has exactly
    zero gradient; with a factorised W = A B (A = 0, B random) it still has (alpha ~ (AB)^2)."""
    model = build(elements_of(sio2_atoms), form="residual_tp", init="zeros", field_order=1)
    batch = labelled_batch(model, [sio2_atoms])
    assert coupling_gradients(model, batch, "polarisability") == 0.0
    assert coupling_gradients(model, batch, "becs") > 0  # linear in W: fine

    # factorised: W = A B with A = 0 and B random, written out on the coupling's linear map
    block = model.couplings["0"].residual
    w_shape = block.linear.weight.shape
    B = torch.randn(w_shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    A = torch.zeros((), dtype=torch.float64, requires_grad=True)  # the scalar stand-in for A
    original = block.linear.weight
    try:
        del block.linear.weight

        def grad_A(task):
            block.linear.weight = A * B
            loss = MultiTaskLoss({task: 1.0}, scales={task: 1e-2})
            value, _ = loss(model(batch, properties=(keys.ENERGY, task), training=True), batch)
            return float(torch.autograd.grad(value, [A])[0])

        assert grad_A("becs") != 0.0  # A is live in the graph: Z* is linear in it
        assert grad_A("polarisability") == 0.0
    finally:
        block.linear.weight = original


def test_field_order_2_is_the_default_and_old_files_load_bilinear(tmp_path, sio2_atoms):
    from mf_lightning.model.io import load_model

    model = build(elements_of(sio2_atoms), form="residual_tp")
    assert model.coupling_config["field_order"] == 2
    assert any(name.endswith("linear2.weight") for name, _ in model.named_parameters())
    old = build(elements_of(sio2_atoms), form="residual_tp", field_order=1)
    path = tmp_path / "old.pt"
    save_model(old, path)
    payload = torch.load(path, weights_only=True)
    del payload["coupling"]["field_order"], payload["record_sha256"]  # as written before the term existed
    torch.save(payload, path)
    assert load_model(path).coupling_config["field_order"] == 1
