"""matbench_dielectric: the local task file, matbench's own folds, the leakage matcher, and the
package's download failing with our message."""

from __future__ import annotations

import pytest

pytest.importorskip("matbench", reason="matbench is installed by `make test`/`make matbench`")

from mf_lightning.analysis import matbench as mb  # noqa: E402
from mf_lightning.data.reader import iter_frames  # noqa: E402
from tests.conftest import shared_file  # noqa: E402


@pytest.fixture(scope="module")
def frame():
    return mb.load_frame(shared_file("matbench", "matbench_dielectric.json.gz"))


def test_local_file_loads_with_matbench_ids(frame):
    assert len(frame) == 4764
    assert frame.index[0] == "mb-dielectric-0001" and frame.index[-1] == "mb-dielectric-4764"
    assert frame["structure"].iloc[0].composition.reduced_formula == "KS"
    assert 1.0 <= frame["n"].min() and frame["n"].max() < 100


def test_fold_assignment_is_matbenchs(frame):
    from matbench.metadata import mbv01_validation

    ours = mb.fold_assignment(frame.index)
    theirs = mbv01_validation.splits[mb.TASK]
    assert list(ours) == list(theirs.keys())
    for key in ours:
        assert ours[key]["test"] == list(theirs[key].test)
        assert ours[key]["train"] == list(theirs[key].train)


def test_leakage_matcher_finds_known_duplicates(frame):
    training = {f: a for f, a in iter_frames(shared_file("mp_dielectric", "dielectric-valid.xyz")) if f in (11, 270, 0)}
    training_list = [training[0], training[11], training[270]]
    entries = {i: frame.loc[i, "structure"] for i in ("mb-dielectric-0008", "mb-dielectric-0040", "mb-dielectric-0001")}
    found = mb.leakage(entries, training_list)
    assert found == {"mb-dielectric-0008": "2", "mb-dielectric-0040": "1"}  # 0001 (KS) matches nothing
    # a strained copy of a duplicate is still the same structure; another polymorph is not
    strained = entries["mb-dielectric-0008"].copy()
    strained.apply_strain(0.02)
    assert mb.leakage({"x": strained}, training_list) == {"x": "2"}


def test_matbench_download_fails_with_clear_message(monkeypatch, tmp_path):
    """Offline, the package's own loader cannot fetch the task; the error says what to do.
    (The URL is pointed at a closed local port so the test never depends on the network.)"""
    import matminer.datasets.dataset_retrieval as retrieval

    d = retrieval._load_dataset_dict()
    d[mb.TASK] = {**d[mb.TASK], "url": "http://127.0.0.1:9/matbench_dielectric.json.gz"}
    monkeypatch.setattr(retrieval, "_dataset_dict", d)
    monkeypatch.setenv("MATMINER_DATA", str(tmp_path))
    with pytest.raises(mb.MatbenchDownloadError, match="Put the task file at"):
        mb.download_frame()
