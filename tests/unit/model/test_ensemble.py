"""Deep ensembles (mf_lightning.model.ensemble): the mean is the members' mean exactly, the spread
is 0 for identical members, the file round-trips weights-only with its checksums, mismatched
members are refused in one line, run folders combine with their training ids, and the ASE
calculator gives the mean with the spread beside it."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

import mf_lightning
from mf_lightning.analysis.dielectric import model_hessian
from mf_lightning.data import keys
from mf_lightning.errors import InputError, ModelFileError
from mf_lightning.model.ensemble import (
    ENSEMBLE_FORMAT,
    EnsembleError,
    FieldMACEEnsemble,
    combine,
    trained_ids,
)
from mf_lightning.model.field_mace import FieldMACE
from mf_lightning.model.io import load_model, model_checksum, save_model
from mf_lightning.simulation.calculator import MACEFieldCalculator
from tests.helpers import batch_of, elements_of, tiny_model

PROPS = (keys.ENERGY, keys.FORCES, keys.STRESS, keys.POLARISATION, keys.BECS, keys.POLARISABILITY)
FIELD = np.array([0.01, -0.02, 0.03])


@pytest.fixture(scope="module")
def small(sio2_atoms):
    """Nine quartz atoms in the quartz cell, rattled: periodic, small, no symmetry."""
    atoms = sio2_atoms[:9].copy()
    atoms.rattle(0.02, seed=3)
    return atoms


@pytest.fixture(scope="module")
def members(small):
    return [tiny_model(elements_of(small), seed=s) for s in (0, 1, 2)]


@pytest.fixture(scope="module")
def ensemble(members):
    return FieldMACEEnsemble(members)


def test_the_mean_is_the_members_mean_exactly_with_their_spread(ensemble, members, small):
    batch = batch_of(ensemble, [small, small.copy()], [FIELD, None])
    out = ensemble(batch, properties=PROPS)
    each = [m(batch, properties=PROPS) for m in members]
    for key in PROPS:
        stack = torch.stack([o[key] for o in each])
        assert torch.equal(out[key], stack.mean(0)), key  # bit for bit
        assert torch.equal(out[key + "_members"], stack), key
        np.testing.assert_allclose(out[key + "_std"].numpy(), np.std(stack.detach().numpy(), axis=0, ddof=1), rtol=1e-12,
                                   atol=1e-300)
    assert float(out["becs_std"].abs().max()) > 0  # random members do disagree
    # the mean of F's derivatives is the derivative of the mean F: the ASR holds as for one model
    assert float(out[keys.BECS][:9].sum(0).abs().max()) < 1e-10


def test_identical_members_have_zero_spread(members, small):
    twin = FieldMACEEnsemble([members[0], copy.deepcopy(members[0])])
    out = twin(batch_of(twin, [small], [FIELD]), properties=PROPS)
    for key in PROPS:
        assert float(out[key + "_std"].abs().max()) == 0.0, key


def test_polarisation_of_members_on_another_branch_is_brought_onto_the_first(ensemble, members, small):
    batch = batch_of(ensemble, [small])
    outs = [m(batch, properties=(keys.ENERGY, keys.POLARISATION)) for m in members[:2]]
    quantum = torch.as_tensor(small.cell.array[0] / small.get_volume())  # e a_1 / Omega
    shifted = dict(outs[0], **{keys.POLARISATION: outs[0][keys.POLARISATION] + 2 * quantum})
    out = FieldMACEEnsemble(members[:2]).combine([outs[0], shifted], batch)
    assert torch.allclose(out[keys.POLARISATION], outs[0][keys.POLARISATION], atol=1e-12)
    assert float(out[keys.POLARISATION + "_std"].abs().max()) < 1e-12


def test_hessian_of_the_ensemble_is_the_mean_of_the_members(ensemble, members, small):
    h = model_hessian(ensemble, small, field=FIELD)
    mean = np.mean([model_hessian(m, small, field=FIELD) for m in members], axis=0)
    np.testing.assert_allclose(h, mean, atol=1e-9)


def test_file_round_trip_is_weights_only_and_keeps_everything(tmp_path, members, small):
    ens = FieldMACEEnsemble(members, calibration={"scale": {"becs_diag": 2.0, "becs_offdiag": 3.0, "energy": 1.5},
                                                  "threshold": {"becs": 0.5}, "data": "x.xyz", "split": "all"},
                            training_ids=[{"d": ["a.xyz:0"]}, None, {"d": ["a.xyz:1"]}], sources=["r0", None, "r2"])
    path = tmp_path / "ensemble.pt"
    save_model(ens, path)
    payload = torch.load(path, weights_only=True)  # no pickle
    assert payload["format"] == ENSEMBLE_FORMAT and len(payload["members"]) == 3
    assert next(reversed(payload)) == "record_sha256"
    loaded = load_model(path)
    assert isinstance(loaded, FieldMACEEnsemble) and loaded.n_members == 3
    assert model_checksum(loaded) == model_checksum(ens)
    assert loaded.calibration == ens.calibration and loaded.sources == ["r0", None, "r2"]
    assert trained_ids(loaded) == {"a.xyz:0", "a.xyz:1"}
    batch = batch_of(ens, [small], [FIELD])
    a, b = ens(batch, properties=PROPS), loaded(batch, properties=PROPS)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    factor = ens.sigma_scale("becs")  # diagonal 2, off-diagonal 3
    assert factor[0, 0] == 2.0 and factor[0, 1] == 3.0 and ens.sigma_scale("forces") == 1.0
    raw = np.std(a["becs_members"].numpy(), axis=0, ddof=1)
    np.testing.assert_allclose(a["becs_std"].numpy(), raw * factor, rtol=1e-12)
    # the calibration is part of the identity: the same weights uncalibrated are another model
    assert model_checksum(FieldMACEEnsemble(members)) != model_checksum(ens)
    # single model files load unchanged
    save_model(members[0], tmp_path / "one.pt")
    assert type(load_model(tmp_path / "one.pt")) is FieldMACE
    # another dtype for the whole ensemble
    assert load_model(path, dtype="float32").dtype == torch.float32


def test_a_changed_byte_is_refused(tmp_path, members):
    path = tmp_path / "ensemble.pt"
    save_model(FieldMACEEnsemble(members[:2]), path)

    def damaged(change, name):
        payload = torch.load(path, weights_only=True)
        change(payload)
        torch.save(payload, tmp_path / name)
        return tmp_path / name

    def weight(payload):
        state = payload["members"][1]["state_dict"]
        key = next(k for k in state if k.startswith("backbone.") and state[k].is_floating_point())
        state[key].view(-1)[0] += 1e-3

    with pytest.raises(ModelFileError, match="corrupted"):
        load_model(damaged(weight, "weight.pt"))
    with pytest.raises(ModelFileError, match="corrupted"):
        load_model(damaged(lambda p: p.__setitem__("calibration", {"scale": {"becs_diag": 9.0}}), "cal.pt"))

    def member_only(payload):  # the ensemble's checksum rewritten: the member's own still catches it
        from mf_lightning.files import with_record_checksum

        weight(payload)
        del payload["record_sha256"]
        payload.update(with_record_checksum(payload, "record_sha256"))

    with pytest.raises(ModelFileError, match=r"member 1\).*corrupted"):
        load_model(damaged(member_only, "member.pt"))
    with pytest.raises(ModelFileError, match="checksum entry is missing"):
        load_model(damaged(lambda p: p.pop("record_sha256"), "bare.pt"))


def test_mismatched_members_are_refused_in_one_line(small, members):
    z = elements_of(small)
    cases = [
        (tiny_model(z + [22]), "element table"),
        (tiny_model(z, dtype="float32"), "dtype"),
        (mf_lightning.build_model(atomic_numbers=z, heads=["a", "b"], num_channels=8, max_ell=2, correlation=2,
                                  r_max=4.0, num_bessel=6, radial_MLP=(16, 16), MLP_irreps="8x0e"), "heads"),
        (mf_lightning.build_model(atomic_numbers=z, num_channels=8, max_ell=2, correlation=2, r_max=3.0,
                                  num_bessel=6, radial_MLP=(16, 16), MLP_irreps="8x0e"), "cutoff"),
    ]
    for other, what in cases:
        with pytest.raises(EnsembleError, match=what) as info:
            FieldMACEEnsemble([members[0], other])
        assert "\n" not in str(info.value) and isinstance(info.value, InputError)
    with pytest.raises(EnsembleError, match="at least 2 members"):
        FieldMACEEnsemble(members[:1])


def fake_run(folder, model, train_ids, finished=True):
    (folder / "splits").mkdir(parents=True)
    save_model(model, folder / "model.pt")
    (folder / "splits" / "data.json").write_text(json.dumps({"name": "data", "ids": {"train": train_ids, "val": []}}))
    (folder / "metrics.json").write_text(json.dumps({"finished": finished}))
    return folder


def test_combine_run_folders_sweeps_and_ensemble_files(tmp_path, members, caplog):
    sweep = tmp_path / "sweep"
    for k, m in enumerate(members):
        fake_run(sweep / str(k if k < 2 else 10), m, [f"q.xyz:{k}"])
    ens = combine([sweep])  # every run below, in natural order (2 before 10)
    assert ens.n_members == 3 and [s.split("/")[-2] for s in ens.sources] == ["0", "1", "10"]
    assert ens.training_ids[2] == {"data": ["q.xyz:2"]}
    assert "different splits" in caplog.text  # each member trained on other ids
    save_model(ens, tmp_path / "e.pt")
    again = combine([tmp_path / "e.pt"])  # an ensemble file: its members
    assert model_checksum(again) == model_checksum(ens) and again.training_ids == ens.training_ids
    with pytest.raises(EnsembleError, match="same model"):
        combine([sweep / "0", sweep / "0" / "model.pt"])
    fake_run(tmp_path / "failed", members[0], [], finished=False)
    with pytest.raises(EnsembleError, match="failed"):
        combine([tmp_path / "failed", sweep / "1"])
    with pytest.raises(InputError, match="no model.pt"):
        combine([tmp_path / "failed" / "splits", sweep / "1"])


def test_calculator_gives_the_mean_and_the_spread(ensemble, members, small):
    atoms = small.copy()
    atoms.calc = MACEFieldCalculator(ensemble, electric_field=FIELD)
    becs = atoms.calc.get_becs(atoms)
    spread = atoms.calc.get_uncertainty(atoms)
    each = []
    for m in members:
        c = MACEFieldCalculator(m, electric_field=FIELD)
        each.append((c.get_becs(atoms), c.get_polarisability(atoms)))
    z = np.array([b for b, _ in each])
    alpha = np.array([a for _, a in each])
    np.testing.assert_allclose(becs, z.mean(0), atol=1e-12)
    np.testing.assert_allclose(spread["becs"], z.std(0, ddof=1), rtol=1e-9, atol=1e-14)
    np.testing.assert_allclose(spread["polarisability"], alpha.std(0, ddof=1), rtol=1e-9, atol=1e-16)
    np.testing.assert_allclose(spread["eps_inf"], alpha.std(0, ddof=1) / 0.00552635, rtol=1e-4)
    assert np.ndim(spread["n"]) == 0 and spread["n"] > 0
    assert set(spread) >= {"becs", "polarisability", "eps_inf", "eps_poly", "n", "polarisation", "dipole"}
    assert atoms.calc.get_uncertainty(properties=("forces",))["forces"].shape == (9, 3)
    assert atoms.calc.results["energy_std"] > 0 and atoms.calc.results["stress_std"].shape == (6,)
    with pytest.raises(InputError, match="ensemble"):
        MACEFieldCalculator(members[0]).get_uncertainty(atoms)


def test_calculator_flags_high_uncertainty_above_the_stored_threshold(members, small):
    ens = FieldMACEEnsemble(members, calibration={"scale": {"becs_diag": 1.0}, "threshold": {"becs": 0.0}})
    atoms = small.copy()
    atoms.calc = MACEFieldCalculator(ens)
    assert "high_uncertainty:becs" in atoms.calc.get_flags(atoms)
    ens.calibration["threshold"] = {"becs": 1e9}
    atoms.calc.results = {}
    assert not [f for f in atoms.calc.get_flags(atoms) if f.startswith("high_uncertainty")]


def test_what_the_ensemble_learned_is_what_every_member_learned(members):
    from mf_lightning.errors import UntrainedQuantityError

    a, b, c = (copy.deepcopy(m) for m in members)
    a.head_quantities = {"Default": ["energy", "forces", "becs", "polarisability"]}
    b.head_quantities = {"Default": ["becs", "polarisability", "energy"]}
    a.training_elements, b.training_elements = {8: 10, 14: 2}, {8: 4, 14: 9}
    ens = FieldMACEEnsemble([a, b, c])  # c records nothing: it does not veto
    assert ens.learned_quantities() == frozenset({"energy", "becs", "polarisability"})
    assert ens.resolve_head(None, ["becs"]) == "Default" and ens.heads == ["Default"]
    with pytest.raises(UntrainedQuantityError, match="forces"):
        ens.check_learned(["forces"], "a relaxation")
    assert ens.training_elements == {8: 4, 14: 2}  # the fewest: rare for one member is rare for the ensemble
    assert ens.atomic_numbers == a.atomic_numbers and ens.r_max == a.r_max and ens.dtype == torch.float64
    assert FieldMACEEnsemble(members).learned_quantities() is None  # none records it
