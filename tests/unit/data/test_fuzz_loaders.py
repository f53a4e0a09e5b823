"""Property-based fuzzing of the extxyz loader and label parsers: any corruption of a valid file
either loads correctly (finite values, right shapes) or raises our DataError naming the file (and
the frame and key where one applies). Never a hang, another exception type, or a NaN let through."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from mf_lightning.data.reader import DataError, read_records
from tests.helpers import only_record

LABELS = {
    "energy": {"key": "REF_energy", "unit": "eV"},
    "forces": {"key": "REF_forces", "unit": "eV/A"},
    "stress": {"key": "REF_stress", "unit": "eV/A^3"},
    "polarisation": {"key": "REF_polarisation", "unit": "e*A"},
    "becs": {"key": "REF_becs", "unit": "e"},
    "polarisability": {"key": "REF_polarisability", "unit": "chi/4pi"},
}
FIELD = {"key": "REF_electric_field", "unit": "V/A"}


def frame_text(rng: np.random.Generator, n: int = 3) -> str:
    cell = np.diag(rng.uniform(3.0, 6.0, 3))
    lines = [str(n), (f'Lattice="{" ".join(f"{x:.6f}" for x in cell.ravel())}" '
                      "Properties=species:S:1:pos:R:3:REF_forces:R:3:REF_becs:R:9 "
                      f"REF_energy={rng.normal():.6f} REF_stress=\"{' '.join(f'{x:.5f}' for x in rng.normal(size=6))}\" "
                      f"REF_polarisation=\"{' '.join(f'{x:.5f}' for x in rng.normal(size=3))}\" "
                      f"REF_polarisability=\"{' '.join(f'{x:.5f}' for x in rng.uniform(0, 1, 9))}\" "
                      'REF_electric_field="0.0, 0.0, 0.0" pbc="T T T"')]
    for _ in range(n):
        values = np.concatenate([rng.uniform(0, 3, 3), rng.normal(size=3), rng.normal(size=9)])
        lines.append(rng.choice(["Si", "O"]) + " " + " ".join(f"{v:.6f}" for v in values))
    return "\n".join(lines) + "\n"


VALID = "".join(frame_text(np.random.default_rng(s)) for s in range(3))
TOKENS = ["nan", "NaN", "inf", "-inf", "1e308", "1e400", "-0", "x", "", "é", "∞", "1,5", ";", "\t", '"', "=",
          "Lattice=", "999999999999999999999", "0x10", "--1"]


def _first_value(text: str, after: str, token: str) -> str:
    """``text`` with the number that follows the first ``after`` replaced by ``token``."""
    i = text.index(after) + len(after)
    j = min(k for k in (text.find(" ", i), text.find('"', i)) if k >= 0)
    return text[:i] + token + text[j:]


@st.composite
def corruption(draw):
    text = VALID
    kind = draw(st.sampled_from(["truncate", "token", "drop_line", "dup_line", "count", "swap", "separator",
                                 "bytes", "empty_frame"]))
    lines = text.splitlines(keepends=True)
    if kind == "truncate":
        text = text[: draw(st.integers(0, len(text) - 1))]
    elif kind == "token":
        words = text.split(" ")
        i = draw(st.integers(0, len(words) - 1))
        words[i] = draw(st.sampled_from(TOKENS))
        text = " ".join(words)
    elif kind == "drop_line":
        del lines[draw(st.integers(0, len(lines) - 1))]
        text = "".join(lines)
    elif kind == "dup_line":
        i = draw(st.integers(0, len(lines) - 1))
        lines.insert(i, lines[i])
        text = "".join(lines)
    elif kind == "count":
        text = str(draw(st.sampled_from([0, 1, 2, 4, 100, -1]))) + text[1:]
    elif kind == "swap":  # two columns of one atom line exchanged
        i = draw(st.sampled_from([k for k, l in enumerate(lines) if l[:2] in ("Si", "O ")]))
        cols = lines[i].split()
        a, b = draw(st.integers(0, len(cols) - 1)), draw(st.integers(0, len(cols) - 1))
        cols[a], cols[b] = cols[b], cols[a]
        lines[i] = " ".join(cols) + "\n"
        text = "".join(lines)
    elif kind == "separator":
        text = text.replace(" ", draw(st.sampled_from([",", ";", "\t", "  ", "|"])), draw(st.integers(1, 40)))
    elif kind == "bytes":
        raw = bytearray(text.encode())
        for _ in range(draw(st.integers(1, 5))):
            raw[draw(st.integers(0, len(raw) - 1))] = draw(st.integers(0, 255))
        text = raw.decode("utf-8", errors="replace")
    else:
        text = "0\nProperties=species:S:1:pos:R:3\n" + text
    return kind, text


# Examples (derandomised) and their number come from the profile in tests/conftest.py. Every
# failure a fuzz run has found is pinned here, so CI checks it on every run.
@pytest.mark.fuzz
@given(case=corruption())
@example(case=("token", _first_value(VALID, 'REF_polarisability="', "1e308")))  # overflowed on conversion
@example(case=("token", _first_value(VALID, 'REF_polarisation="', "1e308")))  # finite, huge after / Omega
@example(case=("token", _first_value(VALID, "REF_energy=", "1e39")))  # beyond float32
@example(case=("token", _first_value(VALID, 'REF_electric_field="', "1e39")))
@example(case=("token", _first_value(VALID, "\nSi ", "1e30")))  # 1e30 A positions
@example(case=("token", _first_value(VALID, "\nO ", "1e308")))
def test_corrupted_extxyz_loads_correctly_or_raises_data_error(tmp_path, case):
    if only_record(case):
        return
    kind, text = case
    path = tmp_path / "fuzz.xyz"
    path.write_text(text, encoding="utf-8")
    try:
        records = read_records(path, LABELS, FIELD)
    except DataError as exc:
        message = str(exc)
        assert str(path) in message or path.name in message, message
        return
    for r in records:  # whatever loaded is complete and finite, in internal shapes
        n = len(r.atoms)
        assert n > 0 and np.all(np.isfinite(r.atoms.get_positions()))
        shapes = {"energy": (), "forces": (n, 3), "stress": (3, 3), "polarisation": (3,), "becs": (n, 3, 3),
                  "polarisability": (3, 3)}
        for q, v in r.labels.items():
            assert np.shape(v) == shapes[q], (kind, q)
            assert np.all(np.isfinite(v)), (kind, q)
        assert r.electric_field.shape == (3,) and np.all(np.isfinite(r.electric_field))


def test_the_uncorrupted_file_loads_every_label(tmp_path):
    path = tmp_path / "valid.xyz"
    path.write_text(VALID)
    records = read_records(path, LABELS, FIELD)
    assert len(records) == 3 and all(set(r.labels) == set(LABELS) for r in records)
