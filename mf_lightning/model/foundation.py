"""MACE foundation models by name or URL: ``model.source=mace-mp-0:medium`` (train.py),
``--model mace-mpa-0`` (distill), or any ``https://`` / ``file://`` URL.

Names and URLs are mace-torch's own (``mace.calculators.foundations_models``: ``mace_mp_urls``
and ``mace_off_urls``), and files are fetched and cached by mace's own
``download_mace_mp_checkpoint`` (in mace's cache folder, ``$XDG_CACHE_HOME/mace`` or
``~/.cache/mace``), so a model a user already fetched with ``mace_mp(...)`` is reused and the list
of names grows with mace-torch. On top of mace's cache we pin each file: its SHA-256 is recorded
on its first successful load (``mf_lightning-sha256.json`` beside the files) and checked on every
later one, so a truncated, replaced or corrupted file is an error instead of a silently different
model. Pinning cannot vouch for a file planted in the cache before its first use: no file, named
or not, is trusted to run code; :func:`mf_lightning.model.backbone.load_mace_pickle` reads each
without running anything in it.

Our names are ``<family>:<size>`` for mace's size-keyed entries (``small-0b2`` is
``mace-mp-0b2:small``, ``medium-mpa-0`` is ``mace-mpa-0:medium``, ``small`` is
``mace-mp-0:small``, MACE-OFF23 is ``mace-off23:<size>``) and ``mace-<key>`` for the rest
(``mh-1`` is ``mace-mh-1``); a family with a single size may omit it (``mace-mpa-0``).
``mf-foundation`` lists them.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Dict, Tuple

from mf_lightning.errors import InputError
from mf_lightning.files import sha256_of

SIZES = ("small", "medium", "large")
URL_SCHEMES = ("https://", "http://", "file://")
REGISTRY = "mf_lightning-sha256.json"


def _name_of(key: str, family_default: str) -> str:
    """Our name for one of mace's dictionary keys."""
    if key in SIZES:
        return f"{family_default}:{key}"
    m = re.fullmatch(r"(small|medium|large)-(.+)", key)
    if m:
        size, suffix = m.groups()
        return f"mace-mp-{suffix}:{size}" if suffix.startswith("0b") else f"mace-{suffix}:{size}"
    return key if key.startswith("mace-") else f"mace-{key}"


def foundation_models() -> Dict[str, Tuple[str, str]]:
    """{our name: (mace's key, URL)} for every foundation model mace-torch knows (MP family and
    MACE-OFF23), plus ``<family>`` alone for a family with one size."""
    from mace.calculators import foundations_models as fm

    names: Dict[str, Tuple[str, str]] = {}
    for key, url in fm.mace_mp_urls.items():
        names[_name_of(key, "mace-mp-0")] = (key, url)
    for key, url in getattr(fm, "mace_off_urls", {}).items():
        names[_name_of(key, "mace-off23")] = (key, url)
    families: Dict[str, list] = {}
    for name in names:
        if ":" in name:
            families.setdefault(name.split(":")[0], []).append(name)
    for family, members in families.items():
        if len(members) == 1 and family not in names:
            names[family] = names[members[0]]
    return names


def url_of(source: str) -> str:
    source = str(source)
    if source.startswith(URL_SCHEMES):
        return source
    names = foundation_models()
    if source not in names:
        close = [n for n in names if source.split(":")[0] in n] or sorted(names)
        raise InputError(f"{source!r} is neither a model file nor a foundation model mace-torch knows; "
                         f"names: {', '.join(close)} (or an https:// or file:// URL)")
    return names[source][1]


def cache_path_of(url: str) -> Path:
    """Where mace's downloader keeps ``url`` (its own naming rule: the URL's file name with
    everything but letters, digits and ``_`` dropped)."""
    from mace.tools.utils import get_cache_dir

    name = "".join(c for c in os.path.basename(url) if c.isalnum() or c in "_")
    return Path(get_cache_dir()) / name


def _check_pinned(path: Path, url: str, record: bool = True) -> str:
    """Check ``path``'s SHA-256 against the one recorded for it; record it if there is none
    (``record``; False: only check, :func:`pin` records it once the file has loaded)."""
    from mf_lightning.files import FileLock, atomic_write_text, dumps_json

    registry = path.parent / REGISTRY
    digest = sha256_of(path)
    with FileLock(registry.with_name(registry.name + ".lock"), blocking=True):
        pins = json.loads(registry.read_text()) if registry.is_file() else {}
        pinned = pins.get(path.name)
        if pinned is None:
            if record:
                pins[path.name] = {"url": url, "sha256": digest}
                atomic_write_text(registry, dumps_json(pins))
        elif pinned["sha256"] != digest:
            raise InputError(
                f"{path}: SHA-256 {digest[:16]}... differs from the {pinned['sha256'][:16]}... recorded when it "
                f"was first fetched from {pinned['url']}: the file was replaced or corrupted. Delete it (and its "
                f"entry in {registry}) to fetch it again.")
    return digest


def pin(path: Path, url: str) -> None:
    """Record the SHA-256 of ``path`` (fetched from ``url``) if none is recorded yet: called once
    the file has loaded, so a file that fails to load (corrupted, or refused) is never pinned."""
    _check_pinned(Path(path), url, record=True)


def resolve_source(source: str, record: bool = True) -> Tuple[Path, bool]:
    """(local file, official) for a model file, a foundation-model name or a URL; ``official``: a
    name from mace-torch's own list. Neither that nor a pin is a reason to let the file run code:
    a file planted in mace's cache under an official name before its first use carries the real
    one's name, and a pin says only that the file has not changed since. ``record=False``: check an
    existing pin, record none (:func:`pin` records it once the file has loaded)."""
    source = str(source)
    if Path(source).exists() and not source.startswith(URL_SCHEMES):
        return Path(source), False
    from mace.calculators.foundations_models import download_mace_mp_checkpoint

    url = url_of(source)
    target = cache_path_of(url)
    try:
        path = Path(download_mace_mp_checkpoint(url))
    except OSError as exc:  # urllib's URLError, a socket timeout, a refused connection
        raise InputError(
            f"could not fetch {source} from {url} ({getattr(exc, 'reason', exc)}). Offline? Download that URL "
            f"on a machine with internet and put the file at {target}; its SHA-256 is recorded on first use. "
            f"Or pass a local file: model.source=/path/to/file.model") from exc
    except RuntimeError as exc:  # mace: the server answered with an HTML page
        raise InputError(f"could not fetch {source} from {url}: {exc}") from exc
    _check_pinned(path, url, record=record)
    return path, not source.startswith(URL_SCHEMES)
