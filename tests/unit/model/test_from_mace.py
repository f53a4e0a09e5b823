"""Upgrading mace-torch models: at E = 0 FieldMACE.from_mace reproduces the source exactly.

No foundation weights exist on this machine, so each test trains a small mace-torch model for
a few steps on alpha-quartz (so weights are not at their init values), saves it the way mace
does (a pickled module), and upgrades the file."""

from __future__ import annotations

import ase.io
import pytest
import torch

import mf_lightning
from mf_lightning.data import keys
from mf_lightning.data.graphs import atoms_to_graph, collate
from mf_lightning.model.io import ModelFileError, save_model
from tests.conftest import shared_file
from tests.helpers import make_source

HEADS2 = ["pt_head", "dielectric"]


@pytest.fixture(scope="module")
def quartz_frames():
    return ase.io.read(shared_file("md", "SiO2.xyz"), index=":3")


def mace_batch(frames, heads, frame_heads, fields=None):
    fields = fields or [None] * len(frames)
    graphs = [atoms_to_graph(a, [8, 14], 4.0, heads=heads, head=h, electric_field=f)
              for a, h, f in zip(frames, frame_heads, fields)]
    return collate(graphs)


def train_a_few_steps(model, frames, heads):
    """Adam on the mace model's own E/F output against the DFT labels: weights move off init."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    energies = torch.tensor([a.info["total_energy"] / len(a) for a in frames], dtype=torch.float64)
    for _ in range(3):
        out = model(mace_batch(frames, heads, [heads[0]] * len(frames)), training=True)
        loss = ((out["energy"] / 72 - energies) ** 2).mean() + out["forces"].pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


CASES = [
    ("ScaleShiftMACE", ["Default"], False),
    ("ScaleShiftMACE", ["Default"], True),
    ("MACE", ["Default"], False),
    ("ScaleShiftMACE", HEADS2, False),
    ("MACE", HEADS2, True),
]


@pytest.mark.parametrize("kind,heads,reduced", CASES)
def test_from_mace_equals_source_at_zero_field(tmp_path, quartz_frames, kind, heads, reduced):
    source = train_a_few_steps(make_source(kind, heads, reduced), quartz_frames, heads)
    path = tmp_path / "small.model"
    torch.save(source, path)  # mace's own format: a pickled module

    # read by the restricted loader (no code from the file runs): no allow_pickle needed
    fm = mf_lightning.FieldMACE.from_mace(path, form="residual_tp", init="random", init_scale=1.0)
    assert fm.backbone.use_reduced_cg == reduced
    assert fm.heads == heads

    frame_heads = [heads[i % len(heads)] for i in range(len(quartz_frames))]
    ref = source(mace_batch(quartz_frames, heads, frame_heads), compute_stress=True)
    out = fm(mace_batch(quartz_frames, heads, frame_heads), properties=(keys.ENERGY, keys.FORCES, keys.STRESS))
    for key in (keys.ENERGY, keys.FORCES, keys.STRESS):
        scale = ref[key].abs().max().item()
        torch.testing.assert_close(out[key].detach(), ref[key].detach(), rtol=1e-10, atol=1e-10 * scale)

    # ...and the field really couples: a nonzero field changes the energy (random coupling init)
    with_field = fm(mace_batch(quartz_frames, heads, frame_heads, [(0, 0, 0.05)] * 3), properties=(keys.ENERGY,))
    assert not torch.allclose(with_field[keys.ENERGY], out[keys.ENERGY], rtol=0, atol=1e-9)

    # the upgraded model survives a weights-only round trip with its architecture flags
    save_model(fm, tmp_path / "field.pt")
    back = mf_lightning.load_model(tmp_path / "field.pt")
    assert back.backbone.use_reduced_cg == reduced and back.heads == heads
    again = back(mace_batch(quartz_frames, heads, frame_heads), properties=(keys.ENERGY, keys.FORCES, keys.STRESS))
    for key in (keys.ENERGY, keys.FORCES, keys.STRESS):
        torch.testing.assert_close(again[key].detach(), out[key].detach(), rtol=1e-12, atol=1e-12)


def test_from_mace_with_zero_init_matches_source_at_any_field(quartz_frames):
    """init='zeros': the coupling residual is W(h (x) E) with W = 0, so even at E != 0 the
    upgraded model starts exactly at the source's zero-field energies."""
    source = make_source("ScaleShiftMACE", ["Default"], False).eval()
    fm = mf_lightning.FieldMACE.from_mace(source, form="basis_tp", init="zeros")
    ref = source(mace_batch(quartz_frames, ["Default"], ["Default"] * 3))
    out = fm(mace_batch(quartz_frames, ["Default"], ["Default"] * 3, [(0.1, -0.2, 0.05)] * 3),
             properties=(keys.ENERGY, keys.POLARISATION))
    torch.testing.assert_close(out[keys.ENERGY].detach(), ref["energy"].detach(), rtol=1e-10, atol=0)
    assert torch.count_nonzero(out[keys.POLARISATION]) == 0


def test_from_mace_does_not_alias_the_source(quartz_frames):
    source = make_source("ScaleShiftMACE", ["Default"], False)
    fm = mf_lightning.FieldMACE.from_mace(source)
    with torch.no_grad():
        next(fm.backbone.parameters()).add_(1.0)
    assert not torch.equal(next(fm.backbone.parameters()), next(source.parameters()))


def test_from_mace_rejects_other_models(tmp_path):
    with pytest.raises(TypeError, match="MACE or ScaleShiftMACE"):
        mf_lightning.FieldMACE.from_mace(torch.nn.Linear(2, 2))
    torch.save({"not": "a model"}, tmp_path / "x.model")
    with pytest.raises(ModelFileError, match="not a mace-torch model"):
        mf_lightning.FieldMACE.from_mace(tmp_path / "x.model", allow_pickle=True)


def test_from_mace_with_new_heads_copies_the_source_head(quartz_frames):
    """One head per fine-tuning source, each an exact copy of the single source head at E = 0."""
    source = train_a_few_steps(make_source(), quartz_frames, ["Default"])
    heads = ["replay", "dielectric", "ferroelectric"]
    fm = mf_lightning.FieldMACE.from_mace(source, heads=heads, form="basis_tp")
    assert fm.heads == heads
    ref = source(mace_batch(quartz_frames, ["Default"], ["Default"] * 3), compute_stress=True)
    for head in heads:
        out = fm(mace_batch(quartz_frames, heads, [head] * 3), properties=(keys.ENERGY, keys.FORCES, keys.STRESS))
        for key in (keys.ENERGY, keys.FORCES, keys.STRESS):
            scale = ref[key].abs().max().item()
            torch.testing.assert_close(out[key].detach(), ref[key].detach(), rtol=1e-10, atol=1e-10 * scale)
    with pytest.raises(ValueError, match="single-head source"):
        mf_lightning.FieldMACE.from_mace(make_source(heads=HEADS2), heads=["a", "b", "c"])
