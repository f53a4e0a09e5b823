"""Atomic polarisabilities a_Z: F gains -1/2 sum_i a_Z |E|^2 (the alpha analogue of MACE's E0s)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import mf_lightning
from mf_lightning.data import keys
from mf_lightning.data.dataset import record_to_graph
from mf_lightning.data.reader import Record
from mf_lightning.model.field_mace import fit_atomic_polarisabilities
from mf_lightning.model.io import save_model
from tests.helpers import TINY, batch_of, elements_of

PROPS = (keys.ENERGY, keys.FORCES, keys.POLARISATION, keys.BECS, keys.POLARISABILITY)


def test_alpha_of_atomic_polarisabilities_is_exact(sio2_atoms):
    z = elements_of(sio2_atoms)
    a = [0.011, 0.023]  # O, Si; e A^2/V
    with_a = mf_lightning.build_model(atomic_numbers=z, coupling={"init": "zeros"}, atomic_polarisabilities=a, seed=0, **TINY)
    without = mf_lightning.build_model(atomic_numbers=z, coupling={"init": "zeros"}, seed=0, **TINY)
    field = (0.02, -0.01, 0.03)
    out = with_a(batch_of(with_a, [sio2_atoms], [field]), properties=PROPS)
    ref = without(batch_of(without, [sio2_atoms], [field]), properties=PROPS)
    n = np.bincount([0 if x == 8 else 1 for x in sio2_atoms.get_atomic_numbers()], minlength=2)
    alpha = float(n @ np.array(a)) / sio2_atoms.get_volume()
    torch.testing.assert_close(out[keys.POLARISABILITY][0], alpha * torch.eye(3, dtype=torch.float64), rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(out[keys.POLARISATION][0], alpha * torch.tensor(field, dtype=torch.float64), rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(out[keys.FORCES], ref[keys.FORCES], rtol=0, atol=0)  # no force, no Z*
    assert float(out[keys.BECS].detach().abs().max()) == 0.0
    # at E = 0 nothing changes
    zero = with_a(batch_of(with_a, [sio2_atoms]), properties=(keys.ENERGY,))[keys.ENERGY]
    torch.testing.assert_close(zero, without(batch_of(without, [sio2_atoms]), properties=(keys.ENERGY,))[keys.ENERGY], rtol=0, atol=0)


def test_fit_recovers_known_polarisabilities(sio2_atoms, batio3_atoms):
    """NNLS on Omega tr(alpha)/3 = sum_Z n_Z a_Z over structures of different compositions."""
    true = {8: 0.010, 14: 0.020, 22: 0.045, 56: 0.060}
    z = sorted(true)
    graphs = []
    def without(atoms, element, count):  # another composition (rank: each a_Z must be determined)
        drop = [i for i, x in enumerate(atoms.get_atomic_numbers()) if x == element][:count]
        return atoms[[i for i in range(len(atoms)) if i not in drop]]

    for atoms in (sio2_atoms, without(sio2_atoms, 8, 5), batio3_atoms, without(batio3_atoms, 22, 4),
                  without(batio3_atoms, 56, 6)):
        atoms = atoms.copy()
        alpha = sum(true[int(x)] for x in atoms.get_atomic_numbers()) / atoms.get_volume()
        rec = Record(atoms=atoms, labels={"polarisability": alpha * np.eye(3)}, electric_field=np.zeros(3), file="x.xyz", frame=0)
        graphs.append(record_to_graph(rec, z, 4.0, ["Default"], "Default"))
    fitted = fit_atomic_polarisabilities(graphs, len(z))
    np.testing.assert_allclose(fitted, [true[k] for k in z], rtol=1e-8)
    assert fit_atomic_polarisabilities(graphs[:0], len(z)) is None


def test_plain_mace_has_none_and_files_keep_them(tmp_path, sio2_atoms):
    from mf_lightning.model.io import load_model

    z = elements_of(sio2_atoms)
    with pytest.raises(ValueError, match="form 'none'"):
        mf_lightning.build_model(atomic_numbers=z, coupling={"form": "none"}, atomic_polarisabilities=[0.1, 0.2], **TINY)
    model = mf_lightning.build_model(atomic_numbers=z, atomic_polarisabilities={8: 0.01, 14: 0.02}, **TINY)
    save_model(model, tmp_path / "m.pt")
    torch.testing.assert_close(load_model(tmp_path / "m.pt").atomic_polarisabilities,
                               torch.tensor([0.01, 0.02], dtype=torch.float64))
    payload = torch.load(tmp_path / "m.pt", weights_only=True)
    del payload["state_dict"]["atomic_polarisabilities"]  # a file from before the term existed
    del payload["sha256"], payload["record_sha256"]  # (and before checksums)
    torch.save(payload, tmp_path / "old.pt")
    assert float(load_model(tmp_path / "old.pt").atomic_polarisabilities.abs().sum()) == 0.0
