"""Trivial baselines (mf_lightning.analysis.baselines): the numbers a model must beat."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mf_lightning.analysis.baselines import compare, table
from mf_lightning.data.dataset import ref_key
from mf_lightning.units import EPS0_E_PER_V_A
from tests.conftest import SHARED_DATA


@pytest.fixture(scope="module")
def sio2_dm(tmp_path_factory):
    from omegaconf import OmegaConf

    from mf_lightning.data.datamodules import MDTrajectoryDataModule, MultiSourceDataModule
    from tests.conftest import REPO

    labels = OmegaConf.to_container(OmegaConf.load(REPO / "conf" / "data" / "sio2.yaml").labels)
    tmp = tmp_path_factory.mktemp("bl")
    src = MDTrajectoryDataModule(name="sio2", file=str(SHARED_DATA / "md" / "SiO2.xyz"), labels=labels, r_max=3.0,
                                 cache_dir=str(tmp / "cache"), output_dir=str(tmp))
    dm = MultiSourceDataModule({"sio2": src})
    dm.setup()
    return dm


def test_zero_and_mean_baselines_by_hand(sio2_dm):
    result = compare(sio2_dm, "test")
    test = sio2_dm.sources["sio2"].datasets["test"]
    forces = torch.cat([g[ref_key("forces")] for g in test])
    assert result["forces_rmse"]["zero"] == pytest.approx(float(forces.pow(2).mean().sqrt()), rel=1e-10)
    # per-element mean Z*: fitted on the training split, scored on the test split
    train = sio2_dm.train_graphs()
    z_of = lambda g: g["node_attrs"].argmax(1)  # noqa: E731
    means = {e: torch.cat([g[ref_key("becs")][z_of(g) == e] for g in train]).mean(0) for e in (0, 1)}
    err = torch.cat([g[ref_key("becs")] - torch.stack([means[int(e)] for e in z_of(g)]) for g in test])
    diag = torch.diagonal(err, dim1=-2, dim2=-1)
    assert result["becs_diag_rmse"]["mean"] == pytest.approx(float(diag.pow(2).mean().sqrt()), rel=1e-8)
    assert result["becs_diag_rmse"]["mean"] < 0.2 * result["becs_diag_rmse"]["zero"]
    # eps_inf: the labels' mean, and the zero model's eps_inf is exactly 1
    alpha = torch.cat([g[ref_key("polarisability")].reshape(-1, 3, 3) for g in test]).double()
    eps = 1.0 + torch.diagonal(alpha, dim1=-2, dim2=-1).sum(-1) / (3.0 * EPS0_E_PER_V_A)  # tr(eps_inf)/3
    assert result["eps_inf_mean"]["reference"] == pytest.approx(float(eps.mean()), rel=1e-10)
    assert result["eps_inf_mean"]["zero"] == pytest.approx(1.0)
    assert 2.2 < result["eps_inf_mean"]["reference"] < 2.6  # alpha-quartz, SPEC: eps_inf ~ 2.4
    assert "| becs_diag_rmse |" in table(result)


def test_a_model_is_scored_beside_the_baselines(sio2_dm):
    from tests.helpers import tiny_model

    model = tiny_model(sio2_dm.atomic_numbers)
    result = compare(sio2_dm, "val", model=model)
    assert set(result["forces_rmse"]) == {"zero", "mean", "per_element", "model"}
    assert np.isfinite(result["becs_diag_rmse"]["model"])


def test_an_untrained_model_starts_exactly_at_the_per_element_baseline(sio2_dm):
    """The fitted per-element Born charges (projected onto the charge-sum rule) and additive
    alpha enter F (model.atomic_charges, model.atomic_polarisabilities): with the coupling at
    W = 0 the model's Z*, alpha and eps_inf errors are the ``per_element`` baseline's, to
    round-off, and that baseline beats predicting zero."""
    import mf_lightning
    from mf_lightning.model.field_mace import fit_atomic_charges, fit_atomic_polarisabilities
    from tests.helpers import TINY

    train, n = sio2_dm.train_graphs(), len(sio2_dm.atomic_numbers)
    model = mf_lightning.build_model(atomic_numbers=sio2_dm.atomic_numbers, coupling={"init": "zeros"}, seed=0,
                                     atomic_charges=fit_atomic_charges(train, n).tolist(),
                                     atomic_polarisabilities=fit_atomic_polarisabilities(train, n).tolist(),
                                     **{**TINY, "r_max": 3.0})
    result = compare(sio2_dm, "test", model=model)
    for metric in ("becs_diag_rmse", "becs_offdiag_rmse", "polarisability_diag_rmse", "eps_inf_mae", "eps_inf_mean"):
        assert result[metric]["model"] == pytest.approx(result[metric]["per_element"], rel=1e-9, abs=1e-12), metric
    assert result["becs_diag_rmse"]["per_element"] < 0.2 * result["becs_diag_rmse"]["zero"]
