"""Per-element Born charges q_Z: F gains -E . sum_i q'_i r_i (q' = q - the structure's mean), the
Z* analogue of MACE's E0s, so an untrained model predicts the per-element Born-charge baseline."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase.build import bulk

import mf_lightning
from mf_lightning.data import keys
from mf_lightning.data.dataset import record_to_graph
from mf_lightning.data.reader import Record
from mf_lightning.model.field_mace import fit_atomic_charges
from mf_lightning.model.io import load_model, save_model
from tests.helpers import TINY, batch_of, elements_of

PROPS = (keys.ENERGY, keys.FORCES, keys.POLARISATION, keys.BECS, keys.POLARISABILITY)
EPS0 = 0.00552635  # e/(V A)


def _projected(atoms, charges: dict) -> np.ndarray:
    q = np.array([charges[int(z)] for z in atoms.get_atomic_numbers()])
    return q - q.mean()


def test_untrained_model_predicts_the_fitted_baseline_exactly(sio2_atoms):
    """W = 0 (init zeros): Z* is the neutrality-projected per-element charge and eps_inf that of the
    atomic polarisabilities, to round-off, at zero and at finite field; P, Z*, alpha remain the
    derivatives of F (the identities hold)."""
    z = elements_of(sio2_atoms)
    q, a = {8: -1.7, 14: 3.1}, [0.011, 0.023]  # not neutral as given: the projection makes them so
    model = mf_lightning.build_model(atomic_numbers=z, coupling={"init": "zeros"}, seed=0,
                                     atomic_charges=q, atomic_polarisabilities=a, **TINY)
    expected = torch.as_tensor(_projected(sio2_atoms, q))
    n = np.bincount([0 if x == 8 else 1 for x in sio2_atoms.get_atomic_numbers()], minlength=2)
    alpha = float(n @ np.array(a)) / sio2_atoms.get_volume()
    for field in ((0.0, 0.0, 0.0), (0.02, -0.01, 0.03)):
        out = model(batch_of(model, [sio2_atoms], [field]), properties=PROPS)
        becs = out[keys.BECS].detach()
        torch.testing.assert_close(becs, expected[:, None, None] * torch.eye(3, dtype=torch.float64), rtol=0, atol=1e-12)
        assert float(becs.sum(0).abs().max()) < 1e-12  # acoustic sum rule
        eye = torch.eye(3, dtype=torch.float64)
        eps = eye + out[keys.POLARISABILITY][0].detach() / EPS0
        torch.testing.assert_close(eps, (1 + alpha / EPS0) * eye, rtol=1e-12, atol=1e-12)
    # P = (1/Omega) sum q' r + alpha E, so Z* = d(Omega P)/dR: check against a finite difference
    field = torch.tensor([0.02, -0.01, 0.03], dtype=torch.float64)
    def omega_p(atoms):
        b = batch_of(model, [atoms], [tuple(field.tolist())])
        return (model(b, properties=(keys.POLARISATION,))[keys.POLARISATION][0] * atoms.get_volume()).detach()
    moved = sio2_atoms.copy()
    moved.positions[3, 1] += 1e-4
    dp = (omega_p(moved) - omega_p(sio2_atoms)) / 1e-4
    torch.testing.assert_close(dp, torch.tensor([0.0, float(expected[3]), 0.0], dtype=torch.float64), rtol=0, atol=1e-8)


def test_charge_term_is_origin_free_and_covariant(sio2_atoms):
    z = elements_of(sio2_atoms)
    model = mf_lightning.build_model(atomic_numbers=z, seed=0, atomic_charges={8: -1.2, 14: 2.4}, **TINY)
    field = np.array([0.01, 0.02, -0.015])
    base = model(batch_of(model, [sio2_atoms], [tuple(field)]), properties=PROPS)
    shifted = sio2_atoms.copy()
    shifted.positions += np.array([0.37, -1.1, 2.3])  # a rigid translation (sum q' = 0: P unchanged)
    out = model(batch_of(model, [shifted], [tuple(field)]), properties=PROPS)
    for k in (keys.ENERGY, keys.POLARISATION, keys.BECS):
        torch.testing.assert_close(out[k], base[k], rtol=1e-9, atol=1e-10)
    from scipy.spatial.transform import Rotation

    rot = Rotation.from_euler("zyx", [0.3, -0.7, 1.1]).as_matrix()
    rotated = sio2_atoms.copy()
    rotated.set_cell(sio2_atoms.cell.array @ rot.T, scale_atoms=True)
    out = model(batch_of(model, [rotated], [tuple(rot @ field)]), properties=PROPS)
    R = torch.as_tensor(rot)
    torch.testing.assert_close(out[keys.ENERGY], base[keys.ENERGY], rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(out[keys.POLARISATION][0], R @ base[keys.POLARISATION][0], rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(out[keys.BECS], R @ base[keys.BECS] @ R.T, rtol=1e-8, atol=1e-9)


def test_fit_recovers_known_charges_and_ignores_a_common_constant(sio2_atoms, batio3_atoms):
    """Least squares on the neutrality-projected composition: charges that hold exactly are
    recovered up to the constant the projection cannot see (q + c gives the same Z*)."""
    true = {8: -2.0, 14: 4.0, 22: 7.1, 56: 2.7}
    z = sorted(true)
    rocksalt = bulk("MgO", "rocksalt", a=4.2)  # no Z* label: not part of the fit
    graphs = []
    for atoms in (sio2_atoms, batio3_atoms, rocksalt):
        atoms = atoms.copy()
        labels = {}
        if 12 not in atoms.get_atomic_numbers():
            zq = _projected(atoms, true)
            labels["becs"] = zq[:, None, None] * np.eye(3)
        rec = Record(atoms=atoms, labels=labels, electric_field=np.zeros(3), file="x.xyz", frame=0)
        graphs.append(record_to_graph(rec, sorted(set(z) | {12}), 4.0, ["Default"], "Default"))
    fitted = fit_atomic_charges(graphs, len(z) + 1)
    zs = sorted(set(z) | {12})
    fitted = dict(zip(zs, fitted))
    assert fitted[12] == 0.0  # never labelled
    for atoms in (sio2_atoms, batio3_atoms):
        np.testing.assert_allclose(_projected(atoms, fitted), _projected(atoms, true), atol=1e-5)
    assert fit_atomic_charges(graphs[2:], len(zs)) is None


def test_plain_mace_has_none_files_keep_them_and_exports_refuse_a_field(tmp_path, sio2_atoms):
    z = elements_of(sio2_atoms)
    with pytest.raises(ValueError, match="no atomic charges"):
        mf_lightning.build_model(atomic_numbers=z, coupling={"form": "none"}, atomic_charges=[0.1, -0.2], **TINY)
    model = mf_lightning.build_model(atomic_numbers=z, atomic_charges={8: -1.0, 14: 2.0}, **TINY)
    save_model(model, tmp_path / "m.pt")
    torch.testing.assert_close(load_model(tmp_path / "m.pt").atomic_charges,
                               torch.tensor([-1.0, 2.0], dtype=torch.float64))
    from mf_lightning.model.export import constant_field_backbone

    with pytest.raises(ValueError, match="zero field only"):
        constant_field_backbone(model, (0.0, 0.0, 0.01))
    payload = torch.load(tmp_path / "m.pt", weights_only=True)
    del payload["state_dict"]["atomic_charges"]  # a file from before the term existed
    del payload["sha256"], payload["record_sha256"]  # (and before checksums)
    torch.save(payload, tmp_path / "old.pt")
    assert float(load_model(tmp_path / "old.pt").atomic_charges.abs().sum()) == 0.0


def test_training_fits_charges_only_where_no_absolute_p_is_labelled(tmp_path):
    """auto: fitted where the training split has Z* labels and no P labels (a file that re-wraps
    atoms, as alpha-quartz's does, would move this term's P by q a / Omega); fit forces it; false
    leaves it out."""
    from omegaconf import OmegaConf

    from mf_lightning.data.datamodules import MDTrajectoryDataModule, MultiSourceDataModule
    from mf_lightning.train.pipeline import resolve_atomic_charges
    from tests.conftest import REPO, SHARED_DATA

    labels = OmegaConf.to_container(OmegaConf.load(REPO / "conf" / "data" / "sio2.yaml").labels)

    def dm_with(wanted):
        src = MDTrajectoryDataModule(name="sio2", file=str(SHARED_DATA / "md" / "SiO2.xyz"), r_max=3.0,
                                     labels={k: v for k, v in labels.items() if k in wanted},
                                     cache_dir=str(tmp_path / "cache"), output_dir=str(tmp_path))
        dm = MultiSourceDataModule({"sio2": src})
        dm.setup()
        return dm

    with_p, without_p = dm_with({"becs", "polarisation"}), dm_with({"becs"})
    assert resolve_atomic_charges(None, "residual_tp", with_p) is None
    q = resolve_atomic_charges(None, "residual_tp", without_p)
    assert q is not None and q[0] < 0 < q[1]  # O negative, Si positive
    assert resolve_atomic_charges("fit", "residual_tp", with_p) is not None
    assert resolve_atomic_charges(False, "residual_tp", without_p) is None
    assert resolve_atomic_charges(None, "none", without_p) is None
