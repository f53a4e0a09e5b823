"""The split-backward tensor products compute exactly what e3nn's TorchScript ones compute: the
same outputs, derivatives and parameter gradients bit for bit, and the same state dict; the
rewritten modules copy, pickle and vmap (is_grads_batched) like the originals."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch

from mf_lightning.data import keys
from mf_lightning.model import split_backward
from mf_lightning.model.coupling import COUPLINGS
from tests.helpers import batch_of, elements_of, tiny_model

ALL = (keys.ENERGY, keys.FORCES, keys.STRESS, keys.POLARISATION, keys.BECS, keys.POLARISABILITY)
FIELD = (0.04, -0.03, 0.06)


def loss_and_grads(model, batch, batched=False):
    out = model(batch, properties=ALL, training=True, batched_response=batched)
    loss = sum((out[k] ** 2).sum() for k in ALL)
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return {k: v.detach() for k, v in out.items()}, grads


@pytest.mark.parametrize("form", list(COUPLINGS))
def test_bitwise_equal_to_e3nn(structures, form):
    atoms = structures["BaTiO3"]
    z = elements_of(atoms)
    plain = tiny_model(z, form=form, split_backward=False)
    fast = tiny_model(z, form=form)  # same seed: same weights
    assert plain.state_dict().keys() == fast.state_dict().keys()
    rewritten = [m for m in fast.modules() if isinstance(getattr(m, "_compiled_main_left_right", None), torch.fx.GraphModule)]
    assert len(rewritten) >= 4  # conv_tp and skip_tp of both layers, at least
    assert not any(isinstance(getattr(m, "_compiled_main_left_right", None), torch.fx.GraphModule) for m in plain.modules())
    batch = batch_of(plain, [atoms], [FIELD])
    out_a, grads_a = loss_and_grads(plain, batch)
    out_b, grads_b = loss_and_grads(fast, batch)
    for k in ALL:
        assert torch.equal(out_a[k], out_b[k]), k
    assert all((a is None and b is None) or torch.equal(a, b) for a, b in zip(grads_a, grads_b))
    # the vmapped Z*/alpha rows run through the custom cat's backward too
    out_c, _ = loss_and_grads(fast, batch, batched=True)
    assert torch.allclose(out_c[keys.BECS], out_a[keys.BECS], rtol=0, atol=1e-14)


def test_rewritten_model_copies_pickles_and_loads(structures):
    atoms = structures["SiO2"]
    z = elements_of(atoms)
    model = tiny_model(z)
    batch = batch_of(model, [atoms], [FIELD])
    ref = model(batch, properties=ALL)[keys.BECS].detach()
    for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert torch.equal(clone(batch, properties=ALL)[keys.BECS].detach(), ref)
    other = tiny_model(z, seed=1)
    other.load_state_dict(model.state_dict())
    assert torch.equal(other(batch, properties=ALL)[keys.BECS].detach(), ref)


def test_cat_backward_is_split_and_twice_differentiable():
    a = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    y = split_backward.cat([a, b], dim=1)
    assert torch.equal(y, torch.cat([a, b], dim=1))
    assert torch.autograd.gradcheck(lambda x, w: (split_backward.cat([x, w], dim=1) ** 3).sum(), (a, b))
    assert torch.autograd.gradgradcheck(lambda x, w: (split_backward.cat([x, w], dim=1) ** 3).sum(), (a, b))
