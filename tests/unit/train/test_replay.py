"""Replay mixing: the ratio holds in every batch, an epoch covers the main set, seeded."""

from __future__ import annotations

import pytest

from mf_lightning.data.datamodules.replay import ReplayBatchSampler


def test_ratio_holds_and_main_set_covered_once():
    s = ReplayBatchSampler(n_main=30, n_replay=7, batch_size=4, replay_fraction=0.5, seed=3)
    batches = list(s)
    assert len(batches) == len(s) == 15
    main = [i for b in batches for i in b if i < 30]
    replay = [i for b in batches for i in b if i >= 30]
    assert sorted(main) == list(range(30))
    assert all(sum(i >= 30 for i in b) == 2 for b in batches)
    assert len(replay) / (len(main) + len(replay)) == pytest.approx(0.5)
    assert set(replay) == set(range(30, 37))  # replay cycles through all of its structures


def test_ratio_per_epoch():
    s = ReplayBatchSampler(n_main=30, n_replay=7, batch_size=4, replay_fraction=0.25, seed=3, per="epoch")
    batches = list(s)
    flat = [i for b in batches for i in b]
    assert sorted(i for i in flat if i < 30) == list(range(30))
    assert sum(i >= 30 for i in flat) == 10  # 0.25 / 0.75 * 30
    assert len(batches) == len(s) == 10 and all(len(b) == 4 for b in batches)
    assert len({sum(i >= 30 for i in b) for b in batches}) > 1  # the mix varies between batches


def test_seeded_by_epoch_and_resumable():
    a = ReplayBatchSampler(20, 10, 5, 0.4, seed=1)
    b = ReplayBatchSampler(20, 10, 5, 0.4, seed=1)
    a.set_epoch(3)
    b.set_epoch(3)
    assert list(a) == list(b)
    b.set_epoch(4)
    assert list(a) != list(b)


def test_bad_fractions():
    with pytest.raises(ValueError, match="in \\[0, 1\\)"):
        ReplayBatchSampler(10, 5, 4, 1.0)
    with pytest.raises(ValueError, match="replay set is empty"):
        ReplayBatchSampler(10, 0, 4, 0.5)
    with pytest.raises(ValueError, match="per 'batch' or per 'epoch'"):
        ReplayBatchSampler(10, 5, 4, 0.5, per="step")
    with pytest.raises(ValueError, match="no room"):
        ReplayBatchSampler(10, 5, 1, 0.6)
