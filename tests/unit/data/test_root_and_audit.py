"""Finding data (no network in tests) and the label audit."""

from __future__ import annotations

import io
import urllib.error

import pytest

from mf_lightning.cli.audit import main as audit_main
from mf_lightning.data import audit, root
from mf_lightning.data.reader import read_records
from tests.conftest import SHARED_DATA


def test_resolution_order(tmp_path, monkeypatch):
    explicit, env = tmp_path / "explicit", tmp_path / "env"
    for d in (explicit, env):
        (d / "md").mkdir(parents=True)
        (d / "md" / "SiO2.xyz").write_text("x")
    monkeypatch.setenv("MF_DATA_DIR", str(env))
    assert root.resolve_file("md/SiO2.xyz", str(explicit)) == (explicit / "md" / "SiO2.xyz").resolve()
    assert root.resolve_file("md/SiO2.xyz") == (env / "md" / "SiO2.xyz").resolve()
    monkeypatch.delenv("MF_DATA_DIR")
    assert root.resolve_file("md/SiO2.xyz") == (SHARED_DATA / "md" / "SiO2.xyz").resolve()
    direct = tmp_path / "any.xyz"
    direct.write_text("x")
    assert root.resolve_file(str(direct)) == direct.resolve()


def _no_shared(monkeypatch, tmp_path):
    monkeypatch.delenv("MF_DATA_DIR", raising=False)
    monkeypatch.setenv("MF_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(root, "REPO_ROOT", tmp_path / "nowhere" / "repo")


def test_offline_download_failure_says_url_and_where(monkeypatch, tmp_path):
    _no_shared(monkeypatch, tmp_path)

    def offline(*a, **k):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(root.urllib.request, "urlopen", offline)
    name = "mp_dielectric/dielectric-valid.xyz"
    with pytest.raises(root.DataNotFoundError) as info:
        root.resolve_file(name)
    msg = str(info.value)
    assert root.PUBLIC_FILES[name][0] in msg and str(tmp_path / "cache" / "data" / name) in msg
    with pytest.raises(root.DataNotFoundError, match="not found under"):
        root.resolve_file("md/not-registered.xyz")


def test_download_places_only_a_file_with_the_pinned_checksum(tmp_path):
    import hashlib

    source = tmp_path / "remote.xyz"
    source.write_bytes(b"1\nLattice=\"1 0 0 0 1 0 0 0 1\"\nH 0 0 0\n" * 1000)
    good = hashlib.sha256(source.read_bytes()).hexdigest()
    dest = tmp_path / "cache" / "sub" / "file.xyz"
    with pytest.raises(root.DataNotFoundError, match="SHA-256 mismatch"):
        root.download(source.as_uri(), dest, "0" * 64)
    assert not dest.exists() and list(dest.parent.iterdir()) == []  # nothing placed, no temporary left
    assert root.download(source.as_uri(), dest, good) == dest
    assert dest.read_bytes() == source.read_bytes() and list(dest.parent.iterdir()) == [dest]


def test_checksum_mismatch_keeps_nothing(monkeypatch, tmp_path):
    _no_shared(monkeypatch, tmp_path)
    monkeypatch.setattr(root.urllib.request, "urlopen", lambda *a, **k: io.BytesIO(b"tampered"))
    name = "mp_ferroelectric/ferroelectric-valid.xyz"
    with pytest.raises(root.DataNotFoundError, match="SHA-256 mismatch"):
        root.resolve_file(name)
    assert not any((tmp_path / "cache").rglob("*.xyz")) and not any((tmp_path / "cache").rglob("*.part"))


def test_checked_download_succeeds(monkeypatch, tmp_path):
    _no_shared(monkeypatch, tmp_path)
    name = "mp_ferroelectric/ferroelectric-valid.xyz"
    payload = (SHARED_DATA / name).read_bytes()
    monkeypatch.setattr(root.urllib.request, "urlopen", lambda *a, **k: io.BytesIO(payload))
    path = root.resolve_file(name)
    assert path.read_bytes() == payload and path.is_relative_to(tmp_path / "cache")


def test_audit_flags_known_asr_violations(tmp_path):
    path = SHARED_DATA / "mp_dielectric" / "dielectric-valid.xyz"
    records = read_records(path, audit.labels_for(path, None))
    rows = audit.audit_records(records)
    by_id = {r["id"]: r for r in rows}
    gese = by_id["dielectric-valid.xyz:41"]
    assert gese["formula"] == "GeSe" and gese["asr_violation"] == pytest.approx(0.79, abs=0.01)
    assert "asr" in gese["flags"]
    flagged = [r for r in rows if "asr" in r["flags"]]
    assert 10 < len(flagged) < 60  # a few percent of the file, not everything
    assert all(r["alpha_min_eig"] > 0 for r in rows)


def test_audit_cli_and_cross_file_duplicates(tmp_path, capsys):
    src = SHARED_DATA / "md" / "SiO2.xyz"
    copy = tmp_path / "again.xyz"
    copy.write_bytes(src.read_bytes())
    assert audit_main([str(src), str(copy), "--out", str(tmp_path / "out")]) == 0
    csv_text = (tmp_path / "out" / "audit.csv").read_text()
    md = (tmp_path / "out" / "audit.md").read_text()
    assert "| duplicate | 201 |" in md
    assert "again.xyz,0,again.xyz:0,SiO2" in csv_text and "SiO2.xyz:0" in csv_text


def test_audit_flags_a_branch_jump_but_not_a_sparse_path(tmp_path):
    """An interior path frame shifted by one whole quantum is flagged, and folding puts it back.
    The shipped file's paths, with steps of more than half a quantum between sparse frames
    (SPEC 4: each path is on one branch), are not flagged."""
    import numpy as np
    from ase.io import read, write

    from mf_lightning.data.polarisation import fold_onto, path_coordinates, polarisation_quanta

    spec = {"polarisation": {"key": "REF_polarisation", "unit": "e/A^2"}}
    source = SHARED_DATA / "mp_ferroelectric" / "ferroelectric-valid.xyz"
    all_rows = audit.audit_records(read_records(source, spec, meta_keys=("nonpolar_mpid", "polar_mpid")))
    assert not any("p_branch" in r["flags"] for r in all_rows)
    frames = read(source, index=":")
    ids = sorted({f.info["polar_mpid"] for f in frames})
    for path_id in ids:  # a path of >= 3 frames
        members = [f for f in frames if f.info["polar_mpid"] == path_id]
        if len(members) >= 3:
            break
    write(tmp_path / "path.xyz", members)
    records = read_records(tmp_path / "path.xyz", spec, meta_keys=("polar_mpid",))
    middle = int(np.argsort(path_coordinates(records))[1])
    Q = polarisation_quanta(members[middle].cell.array)
    members[middle].info["REF_polarisation"] = members[middle].info["REF_polarisation"] + Q[:, 2]
    write(tmp_path / "path.xyz", members)
    shifted = read_records(tmp_path / "path.xyz", spec, meta_keys=("polar_mpid",))
    rows = audit.audit_records(shifted)
    assert [i for i, r in enumerate(rows) if "p_branch" in r["flags"]] == [middle]
    assert rows[middle]["p_off_branch"] > 0.75
    folded, x = fold_onto(shifted[middle].labels["polarisation"], records[middle].labels["polarisation"],
                          shifted[middle].atoms.cell.array)
    np.testing.assert_allclose(x, [0, 0, 1], atol=1e-9)
    np.testing.assert_allclose(folded, records[middle].labels["polarisation"], atol=1e-12)
