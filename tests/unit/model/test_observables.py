"""Physics identities of the response observables, on random-weight models of every coupling
form and on real structures from ../shared/data. Each check is to float64 round-off or, for
finite differences, to the truncation error of a central difference."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from mf_lightning.data import keys
from mf_lightning.model.coupling import COUPLINGS
from tests.conftest import DTYPES, tolerance
from tests.helpers import batch_of, elements_of, tiny_model

ALL = (keys.ENERGY, keys.FORCES, keys.STRESS, keys.POLARISATION, keys.BECS, keys.POLARISABILITY)
FORMS = tuple(COUPLINGS)  # every registered form, with no test edit
FIELD = (0.04, -0.03, 0.06)  # V/A: large enough that nonlinear field terms matter


@pytest.fixture(scope="module")
def models_by_dtype(structures):
    z = elements_of(*structures.values())
    return {dt: {form: tiny_model(z, form=form, dtype=dt) for form in FORMS} for dt in DTYPES}


@pytest.fixture(scope="module")
def models(models_by_dtype):
    return models_by_dtype["float64"]


def run(model, atoms, field=FIELD, props=ALL):
    out = model(batch_of(model, [atoms], [field], dtype=model.dtype), properties=props)
    return {k: v.detach().cpu() for k, v in out.items()}  # on the CPU: compared with numpy-made expectations


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("name", ["SiO2", "BaTiO3", "dielectric"])
def test_acoustic_sum_rule_and_symmetric_alpha(models_by_dtype, structures, form, name, dtype):
    out = run(models_by_dtype[dtype][form], structures[name])
    becs, alpha = out[keys.BECS].double(), out[keys.POLARISABILITY][0].double()
    eps = 1e-10 if dtype == "float64" else 1e-5  # relative round-off of a sum over atoms
    scale = becs.abs().max()
    assert scale > 1e-8, "Z* vanished: the test would be vacuous"
    assert becs.sum(0).abs().max() <= eps * scale * len(becs)
    assert alpha.abs().max() > 0
    assert torch.allclose(alpha, alpha.T, rtol=0, atol=eps * 1e-2 * alpha.abs().max() if dtype == "float64"
                          else eps * alpha.abs().max())


def _rotated(atoms, R):
    a = atoms.copy()
    a.set_cell(atoms.get_cell().array @ R.T, scale_atoms=False)
    a.set_positions(atoms.get_positions() @ R.T)
    return a


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("inversion", [False, True])
def test_o3_covariance(models_by_dtype, structures, form, inversion, dtype):
    atoms = structures["SiO2"]
    R = Rotation.random(random_state=7).as_matrix()
    if inversion:
        R = -R  # improper: E is a polar vector, so it flips with the structure
    E = np.array(FIELD)
    ref = {k: v.double() for k, v in run(models_by_dtype[dtype][form], atoms, E).items()}
    rot = {k: v.double() for k, v in run(models_by_dtype[dtype][form], _rotated(atoms, R), R @ E).items()}
    Rt = torch.as_tensor(R)
    for key, expected in ((keys.ENERGY, ref[keys.ENERGY]), (keys.FORCES, ref[keys.FORCES] @ Rt.T),
                          (keys.POLARISATION, ref[keys.POLARISATION] @ Rt.T),
                          (keys.BECS, Rt @ ref[keys.BECS] @ Rt.T),
                          (keys.POLARISABILITY, Rt @ ref[keys.POLARISABILITY] @ Rt.T),
                          (keys.STRESS, Rt @ ref[keys.STRESS] @ Rt.T)):
        torch.testing.assert_close(rot[key], expected, **tolerance(dtype, expected.abs().max()), msg=key)


def test_rotating_structure_alone_changes_the_answer(models, structures):
    """Guard against a vacuous covariance test: with the field held fixed, rotating only the
    structure must change F (the field couples)."""
    atoms = structures["SiO2"]
    R = Rotation.random(random_state=7).as_matrix()
    ref = run(models["residual_tp"], atoms)
    rot = run(models["residual_tp"], _rotated(atoms, R))
    assert not torch.allclose(rot[keys.ENERGY], ref[keys.ENERGY], rtol=0, atol=1e-12)


@pytest.mark.parametrize("form", FORMS)
def test_translation_and_permutation_invariance(models_by_dtype, structures, form, dtype):
    model = models_by_dtype[dtype][form]
    atoms = structures["dielectric"]
    ref = run(model, atoms)
    moved = atoms.copy()
    moved.translate([0.37, -1.1, 2.3])
    out = run(model, moved)
    for k in (keys.ENERGY, keys.POLARISATION, keys.POLARISABILITY, keys.FORCES, keys.BECS):
        torch.testing.assert_close(out[k], ref[k], **tolerance(dtype, ref[k].abs().max()), msg=k)
    perm = np.random.default_rng(0).permutation(len(atoms))
    out = run(model, atoms[perm])
    for k in (keys.ENERGY, keys.POLARISATION, keys.POLARISABILITY):
        torch.testing.assert_close(out[k], ref[k], **tolerance(dtype, ref[k].abs().max()), msg=k)
    for k in (keys.FORCES, keys.BECS):
        torch.testing.assert_close(out[k], ref[k][perm], **tolerance(dtype, ref[k].abs().max()), msg=k)


# --------------------------------------------------------------- finite differences
H = 1e-4  # central difference: error ~ H^2 * third derivative, well under the tolerances below


def _fd_field(model, atoms, key, i):
    Ep, Em = np.array(FIELD), np.array(FIELD)
    Ep[i] += H
    Em[i] -= H
    return (run(model, atoms, Ep, (keys.ENERGY, key))[key] - run(model, atoms, Em, (keys.ENERGY, key))[key]) / (2 * H)


def _fd_position(model, atoms, key, k, j):
    plus, minus = atoms.copy(), atoms.copy()
    plus.positions[k, j] += H
    minus.positions[k, j] -= H
    return (run(model, plus, props=(keys.ENERGY, key))[key] - run(model, minus, props=(keys.ENERGY, key))[key]) / (2 * H)


@pytest.mark.parametrize("form", FORMS)
def test_finite_differences(models, structures, form):
    model, atoms = models[form], structures["dielectric"]
    out = run(model, atoms)
    volume = float(atoms.get_volume())
    close = dict(rtol=1e-6, atol=1e-9)
    for i in range(3):
        # P = -(1/Omega) dF/dE
        dF = _fd_field(model, atoms, keys.ENERGY, i)
        torch.testing.assert_close(out[keys.POLARISATION][0, i], -dF[0] / volume, **close)
        # alpha_ij = dP_i/dE_j  (column j = i here)
        dP = _fd_field(model, atoms, keys.POLARISATION, i)
        torch.testing.assert_close(out[keys.POLARISABILITY][0, :, i], dP[0], **close)
        # Z*_{k,ij} = d f_kj / dE_i
        dforce = _fd_field(model, atoms, keys.FORCES, i)
        torch.testing.assert_close(out[keys.BECS][:, i, :], dforce, **close)
    for k, j in [(0, 0), (1, 2), (3, 1)]:
        # forces = -dF/dR
        dF = _fd_position(model, atoms, keys.ENERGY, k, j)
        torch.testing.assert_close(out[keys.FORCES][k, j], -dF[0], **close)
        # Z*_{k,ij} = d(Omega P_i)/dR_kj
        dP = _fd_position(model, atoms, keys.POLARISATION, k, j)
        torch.testing.assert_close(out[keys.BECS][k, :, j], volume * dP[0], **close)


def test_stress_finite_difference(models, structures):
    """sigma = (1/Omega) dF/d(strain), checked against a strained cell."""
    model, atoms = models["basis_tp"], structures["dielectric"]
    out = run(model, atoms)
    volume = float(atoms.get_volume())
    for a, b in [(0, 0), (1, 2)]:
        energies = []
        for s in (H, -H):
            eps = np.zeros((3, 3))
            eps[a, b] += s / 2
            eps[b, a] += s / 2
            strained = atoms.copy()
            strained.set_cell(atoms.get_cell().array @ (np.eye(3) + eps), scale_atoms=True)
            energies.append(run(model, strained, props=(keys.ENERGY,))[keys.ENERGY][0])
        fd = (energies[0] - energies[1]) / (2 * H) / volume
        torch.testing.assert_close(out[keys.STRESS][0, a, b], fd, rtol=1e-6, atol=1e-9)


# --------------------------------------------------------------- batching
@pytest.mark.parametrize("form", FORMS)
def test_batch_invariance_with_different_fields(models, structures, form):
    model = models[form]
    a, b = structures["dielectric"], structures["SiO2"]
    fa, fb = (0.02, 0.0, -0.05), (-0.03, 0.07, 0.01)
    both = model(batch_of(model, [a, b], [fa, fb]), properties=ALL)
    alone = [run(model, a, fa), run(model, b, fb)]
    n_a = len(a)
    for g, single in enumerate(alone):
        for k in (keys.ENERGY, keys.POLARISATION, keys.POLARISABILITY, keys.STRESS):
            torch.testing.assert_close(both[k][g], single[k][0], rtol=1e-10, atol=1e-12)
        atoms_slice = slice(0, n_a) if g == 0 else slice(n_a, None)
        for k in (keys.FORCES, keys.BECS):
            torch.testing.assert_close(both[k][atoms_slice], single[k], rtol=1e-10, atol=1e-12)


def test_batched_response_equals_loop(models, structures):
    model = models["basis_tp"]
    batch = batch_of(model, [structures["dielectric"], structures["SiO2"]], [FIELD, (0.0, 0.0, 0.1)])
    loop = model(batch, properties=ALL)
    vmapped = model(batch, properties=ALL, batched_response=True)
    for k in ALL:
        torch.testing.assert_close(vmapped[k], loop[k], rtol=1e-12, atol=1e-14)


def test_only_requested_properties_and_no_graph_at_inference(models, structures):
    model = models["residual_tp"]
    out = model(batch_of(model, [structures["dielectric"]]), properties=(keys.ENERGY, keys.POLARISATION))
    assert set(out) == {keys.ENERGY, keys.VOLUME, keys.POLARISATION}
    assert not out[keys.POLARISATION].requires_grad or out[keys.POLARISATION].grad_fn is not None
    resp = model(batch_of(model, [structures["dielectric"]]), properties=(keys.BECS,))
    assert resp[keys.BECS].grad_fn is None  # inference: no graph kept through Z*


def test_training_mode_keeps_graph_through_response(models, structures):
    model = models["basis_tp"]
    out = model(batch_of(model, [structures["dielectric"]], [FIELD]), properties=ALL, training=True)
    loss = sum(out[k].pow(2).sum() for k in (keys.FORCES, keys.POLARISATION, keys.BECS, keys.POLARISABILITY))
    grads = torch.autograd.grad(loss, [p for p in model.parameters() if p.requires_grad], allow_unused=True)
    coupling_grads = [g for (n, _), g in zip(model.named_parameters(), grads) if n.startswith("couplings") and g is not None]
    assert coupling_grads and any(g.abs().sum() > 0 for g in coupling_grads)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_float32_and_float64(structures, dtype):
    """Both precisions run end to end; float32 agrees with the same weights in float64 to
    float32 accuracy."""
    atoms = structures["dielectric"]
    ref_model = tiny_model(elements_of(atoms), dtype="float64")
    model = tiny_model(elements_of(atoms), dtype=dtype)
    model.load_state_dict(ref_model.state_dict())  # same weights, cast to this dtype
    torch_dtype = getattr(torch, dtype)
    out = model(batch_of(model, [atoms], [FIELD], dtype=torch_dtype), properties=ALL)
    for k in ALL:
        assert out[k].dtype == torch_dtype and torch.isfinite(out[k]).all()
    ref = ref_model(batch_of(ref_model, [atoms], [FIELD]), properties=ALL)
    tol = 1e-4 if dtype == "float32" else 1e-12
    for k in (keys.ENERGY, keys.FORCES, keys.POLARISATION, keys.BECS, keys.POLARISABILITY):
        scale = ref[k].abs().max().item()
        torch.testing.assert_close(out[k].double(), ref[k].detach(), rtol=tol, atol=tol * scale)


def test_coupling_none_gives_zero_response(structures):
    atoms = structures["BaTiO3"]
    model = tiny_model(elements_of(atoms), form="none")
    assert len(model.couplings) == 0
    out = run(model, atoms)
    for k in (keys.POLARISATION, keys.BECS, keys.POLARISABILITY):
        assert torch.count_nonzero(out[k]) == 0
    at_zero = run(model, atoms, field=(0.0, 0.0, 0.0))
    torch.testing.assert_close(out[keys.ENERGY], at_zero[keys.ENERGY], rtol=0, atol=0)


def test_zero_volume_cell_is_refused(structures):
    atoms = structures["dielectric"].copy()
    model = tiny_model(elements_of(atoms))
    atoms.set_pbc(False)
    atoms.set_cell(np.zeros((3, 3)))
    with pytest.raises(ValueError, match="no structure of the batch has a periodic cell"):
        run(model, atoms)


def test_a_molecule_batched_with_a_crystal_gets_finite_zero_response(structures):
    """A molecule with E/F labels in a crystal file used to stop the whole batch (a batch index
    in the error, not a file and frame): its per-volume outputs are now 0 and the crystal's are
    unchanged."""
    from mf_lightning.data.graphs import atoms_to_graph, collate

    crystal = structures["dielectric"]
    molecule = crystal.copy()
    molecule.set_pbc(False)
    molecule.set_cell(np.zeros((3, 3)))
    model = tiny_model(elements_of(crystal))
    props = (keys.ENERGY, keys.FORCES, keys.STRESS, keys.POLARISATION, keys.BECS, keys.POLARISABILITY)
    graphs = [atoms_to_graph(a, model.atomic_numbers, model.r_max, electric_field=[0, 0, 0.01])
              for a in (crystal, molecule)]
    both = model(collate(graphs), properties=props)
    alone = model(collate(graphs[:1]), properties=props)
    for k in (keys.POLARISATION, keys.STRESS, keys.POLARISABILITY):
        torch.testing.assert_close(both[k][:1], alone[k], rtol=1e-10, atol=1e-12)
        assert torch.all(both[k][1] == 0)
    assert torch.isfinite(both[keys.BECS]).all() and torch.isfinite(both[keys.FORCES]).all()
