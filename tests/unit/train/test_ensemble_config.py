"""``train.py ... ensemble=N`` (mf_lightning.train.ensemble): each member gets its own run folder
and seed on the data split of the run's seed, in every source of the data config; the key is
checked up front and does not stop older runs from resuming."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from mf_lightning.train.config_check import ConfigError, check_train_config
from mf_lightning.train.ensemble import member_config
from mf_lightning.train.run_folder import config_differences
from tests.conftest import REPO


def composed(*overrides):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides))


@pytest.mark.parametrize("data", ["sio2", "finetune_sio2_replay"])
def test_members_share_the_split_of_the_run_seed(tmp_path, data):
    cfg = composed(f"data={data}", "seed=5", "ensemble=3")
    member = member_config(cfg, 2, tmp_path)
    assert member.seed == 7 and member.ensemble == 0
    assert member.paths.output_dir == str(tmp_path / "member_2")
    seeds = [v for k, v in _flat(OmegaConf.to_container(member.data, resolve=False)).items() if k.endswith("seed")]
    assert seeds and all(s == 5 for s in seeds), seeds  # pinned in every source, not following seed=7
    assert cfg.seed == 5 and cfg.ensemble == 3  # the run's config is not changed


def _flat(node, prefix=""):
    out = {}
    for k, v in node.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def test_ensemble_is_checked_and_steers_only():
    check_train_config(composed("ensemble=0"))
    check_train_config(composed("ensemble=4"))
    for bad in ("1", "-2", "2.5"):
        with pytest.raises(ConfigError, match="ensemble"):
            check_train_config(composed(f"ensemble={bad}"))
    # a run recorded before the key existed still resumes (the key only steers the run)
    with_key = composed()
    old = OmegaConf.create(OmegaConf.to_container(with_key, resolve=False))
    del old["ensemble"]
    assert "ensemble" not in config_differences(old, with_key)
