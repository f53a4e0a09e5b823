"""Finding the data: ``data.root`` resolves, in order, to

1. an explicit path (config ``data.root`` or a file path given directly),
2. ``$MF_DATA_DIR``,
3. ``../shared/data`` beside the repository, if it exists,
4. a download of the paper's public files into a user cache (``$MF_CACHE_DIR`` or
   ``~/.cache/mf-lightning/data``), each checked against its SHA-256.

Nothing downloads at import time; :func:`resolve_file` downloads only when a registered file is
missing everywhere else and ``allow_download`` is true.
"""

from __future__ import annotations

import hashlib
import os
import urllib.request
from pathlib import Path
from typing import Optional

from mf_lightning.errors import InputError
from mf_lightning.files import atomic_open

REPO_ROOT = Path(__file__).resolve().parents[2]
_PAPER = "https://raw.githubusercontent.com/mdi-group/2025-04-mace-field"

# relative path under the data root -> (url, sha256). The hashes are those of the copies the
# project was developed on (../shared/data); a changed upstream file fails the check rather than
# being trusted. The MD sets (BaTiO3, alpha-quartz) have no registered public URL: give their path.
PUBLIC_FILES = {
    "mp_dielectric/dielectric-valid.xyz": (
        f"{_PAPER}/c26ef89c0c189cc3b18c55ffbc4609834efd7545/scripts/Dielectrics/dielectric-valid.xyz",
        "546d8a4a398d0d0a0d267dbfccdc97a64dc6f47aa46c6c8f7fe096351bb93045",
    ),
    "mp_ferroelectric/ferroelectric-valid.xyz": (
        f"{_PAPER}/5f97d941a436186a8b2a7d57062e8503b7c397a7/scripts/Ferroelectrics/ferroelectric-valid.xyz",
        "ea86ec27c9e16d872f6b86620c23c45a4922f60c12bd209b4ee6109a3f520c11",
    ),
}


class DataNotFoundError(InputError, FileNotFoundError):
    """A data file found under none of the data roots."""


def user_cache_dir() -> Path:
    return Path(os.environ.get("MF_CACHE_DIR", Path.home() / ".cache" / "mf-lightning")) / "data"


def candidate_roots(root: Optional[str] = None) -> list[Path]:
    """The data roots in search order. A root the user named (``root``, ``MF_DATA_DIR``) that does
    not exist is an error: silently falling back to ../shared/data would read other data."""
    roots = []
    for given, what in ((root, "data root"), (os.environ.get("MF_DATA_DIR"), "MF_DATA_DIR")):
        if given:
            path = Path(given).expanduser()
            if not path.is_dir():
                raise DataNotFoundError(f"{what} {path} is not an existing folder")
            roots.append(path)
    shared = REPO_ROOT.parent / "shared" / "data"
    if shared.is_dir():
        roots.append(shared)
    roots.append(user_cache_dir())
    return roots




def download(url: str, dest: Path, sha256: str, timeout: float = 60.0) -> Path:
    """Download into ``dest`` atomically (:func:`~mf_lightning.files.atomic_open`), hashing the
    bytes as they arrive: on a SHA-256 mismatch ``dest`` is never created."""
    digest = hashlib.sha256()
    with atomic_open(dest, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310
        for chunk in iter(lambda: resp.read(1 << 20), b""):
            digest.update(chunk)
            out.write(chunk)
        if digest.hexdigest() != sha256:
            raise DataNotFoundError(f"{url}: SHA-256 mismatch (got {digest.hexdigest()}, expected {sha256}); "
                                    "file not used")
    return dest


def resolve_file(name: str, root: Optional[str] = None, allow_download: bool = True) -> Path:
    """Absolute path of a data file: ``name`` itself if it exists, else ``<root>/name`` for the
    first root (see module doc) that has it, else a checked download of a registered file."""
    direct = Path(name).expanduser()
    if direct.is_absolute() or direct.is_file():
        if direct.is_file():
            return direct.resolve()
        raise DataNotFoundError(f"{direct}: no such data file")
    roots = candidate_roots(root)
    for r in roots:
        if (r / name).is_file():
            return (r / name).resolve()
    looked = ", ".join(str(r) for r in roots)
    if name in PUBLIC_FILES and allow_download:
        url, sha = PUBLIC_FILES[name]
        dest = user_cache_dir() / name
        try:
            return download(url, dest, sha)
        except DataNotFoundError:
            raise
        except Exception as exc:  # noqa: BLE001 - network errors of every kind
            raise DataNotFoundError(
                f"data file {name!r} not found under {looked}, and downloading it from {url} failed "
                f"({type(exc).__name__}: {exc}). Put the file at {dest} or under $MF_DATA_DIR/{name}."
            ) from exc
    raise DataNotFoundError(
        f"data file {name!r} not found under {looked}. Set data.root or $MF_DATA_DIR to the folder "
        f"that holds it, or give its full path."
    )
