"""Foundation models by name or URL: mace-torch's own names, URLs and downloader; a SHA-256
pinned on first use; clear errors offline. No test touches the network: a small mace model is
served as a file:// URL or placed in mace's cache as a user without internet would."""

from __future__ import annotations

import shutil

import pytest
import torch

from mf_lightning.errors import InputError
from mf_lightning.model import foundation
from tests.helpers import make_source


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))  # mace's get_cache_dir reads it
    return tmp_path / "xdg" / "mace"


@pytest.fixture
def small_model(tmp_path):
    path = tmp_path / "served" / "tiny-mace.model"
    path.parent.mkdir()
    torch.save(make_source(), path)
    return path


def test_names_are_mace_torchs_own():
    from mace.calculators.foundations_models import mace_mp_urls, mace_off_urls

    names = foundation.foundation_models()
    assert foundation.url_of("mace-mp-0:medium") == mace_mp_urls["medium"]
    assert foundation.url_of("mace-mp-0b3:medium") == mace_mp_urls["medium-0b3"]
    assert foundation.url_of("mace-mpa-0") == foundation.url_of("mace-mpa-0:medium") == mace_mp_urls["medium-mpa-0"]
    assert foundation.url_of("mace-omat-0:small") == mace_mp_urls["small-omat-0"]
    assert foundation.url_of("mace-mh-1") == mace_mp_urls["mh-1"]
    assert foundation.url_of("mace-off23:large") == mace_off_urls["large"]
    assert {url for _, url in names.values()} == set(mace_mp_urls.values()) | set(mace_off_urls.values())
    with pytest.raises(InputError, match="mace-mp-0:small, mace-mp-0b2"):
        foundation.url_of("mace-mp-7:small")


def test_a_url_is_fetched_by_maces_downloader_and_pinned(cache, small_model):
    url = f"file://{small_model}"
    path, trusted = foundation.resolve_source(url)
    assert path == foundation.cache_path_of(url) and path.parent == cache and not trusted
    assert path.read_bytes() == small_model.read_bytes()
    pins = (cache / foundation.REGISTRY).read_text()
    assert foundation.sha256_of(path) in pins and url in pins
    assert foundation.resolve_source(url)[0] == path  # the cached copy, checked
    path.write_bytes(path.read_bytes()[:-10])  # a truncated or replaced file
    with pytest.raises(InputError, match="differs from the .* recorded when it was first fetched"):
        foundation.resolve_source(url)


def test_urls_and_named_official_models_load_through_the_restricted_reader(cache, small_model):
    from mf_lightning.model.backbone import load_mace_pickle

    assert isinstance(load_mace_pickle(f"file://{small_model}"), torch.nn.Module)
    assert isinstance(load_mace_pickle(f"file://{small_model}", allow_pickle=True), torch.nn.Module)
    # a user without internet puts the official file where mace keeps it: no download, loads
    target = foundation.cache_path_of(foundation.url_of("mace-mp-0:small"))
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(small_model, target)
    module = load_mace_pickle("mace-mp-0:small")
    assert type(module).__name__ == "ScaleShiftMACE"


def test_offline_the_error_names_the_url_and_where_to_put_the_file(cache, tmp_path):
    url = f"file://{tmp_path / 'nowhere' / 'mace-mp-x.model'}"
    with pytest.raises(InputError) as err:
        foundation.resolve_source(url)
    assert url in str(err.value) and str(foundation.cache_path_of(url)) in str(err.value)
    with pytest.raises(InputError, match="neither a model file nor a foundation model"):
        from mf_lightning.model.backbone import load_mace_pickle

        load_mace_pickle("mace-mp-9")
