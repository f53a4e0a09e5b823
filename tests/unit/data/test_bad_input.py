"""Bad input raises DataError naming file, frame and key; good frames are not lost silently."""

from __future__ import annotations

import numpy as np
import pytest

from mf_lightning.data.graphs import UnknownElementError, atoms_to_graph
from mf_lightning.data.reader import DataError, read_records
from tests.conftest import shared_file

LABELS = {"polarisation": {"key": "REF_polarisation", "unit": "e/A^2"},
          "becs": {"key": "REF_becs", "unit": "e"}}

GOOD = """2
Lattice="4.0 0.0 0.0 0.0 4.0 0.0 0.0 0.0 4.0" Properties=species:S:1:pos:R:3:REF_becs:R:9 REF_polarisation="0.01 0.0 -0.02" pbc="T T T"
Na 0.0 0.0 0.0 1 0 0 0 1 0 0 0 1
Cl 2.0 2.0 2.0 -1 0 0 0 -1 0 0 0 -1
"""


def write(tmp_path, text, name="bad.xyz"):
    path = tmp_path / name
    path.write_text(text)
    return path


def expect(path, frame, key, match, labels=LABELS, **kw):
    with pytest.raises(DataError) as info:
        read_records(path, labels, **kw)
    err = info.value
    assert err.path == str(path) and err.frame == frame and err.key == key, str(err)
    assert path.name in str(err) and (frame is None or f"frame {frame}" in str(err))
    assert match in str(err), str(err)


def test_good_file_reads(tmp_path):
    records = read_records(write(tmp_path, GOOD + GOOD), LABELS)
    assert len(records) == 2 and records[1].frame == 1
    np.testing.assert_allclose(records[0].labels["polarisation"], [0.01, 0.0, -0.02])


def test_truncated_file(tmp_path):
    text = GOOD + GOOD.rsplit("\n", 2)[0] + "\n"  # second frame loses its last atom line
    expect(write(tmp_path, text), 1, None, "malformed or truncated")


def test_malformed_line(tmp_path):
    text = GOOD + GOOD.replace("Cl 2.0 2.0 2.0", "Cl 2.0 abc 2.0")
    expect(write(tmp_path, text), 1, None, "malformed or truncated")


def test_nan_label(tmp_path):
    text = GOOD + GOOD.replace('REF_polarisation="0.01 0.0 -0.02"', 'REF_polarisation="0.01 nan -0.02"')
    expect(write(tmp_path, text), 1, "REF_polarisation", "NaN/inf")


def test_inf_per_atom_label(tmp_path):
    text = GOOD.replace("-1 0 0 0 -1 0 0 0 -1", "-1 0 0 0 inf 0 0 0 -1")
    expect(write(tmp_path, text), 0, "REF_becs", "NaN/inf")


def test_wrong_label_shape(tmp_path):
    text = GOOD.replace('REF_polarisation="0.01 0.0 -0.02"', 'REF_polarisation="0.01 0.0"')
    expect(write(tmp_path, text), 0, "REF_polarisation", "expected 3 values")
    six = GOOD.replace(":REF_becs:R:9", ":REF_becs:R:6").replace("1 0 0 0 1 0 0 0 1", "1 0 0 0 1 0").replace(
        "-1 0 0 0 -1 0 0 0 -1", "-1 0 0 0 -1 0")
    expect(write(tmp_path, six, "b2.xyz"), 0, "REF_becs", "per atom")


def test_comma_separated_vectors_load(tmp_path):
    text = GOOD.replace('REF_polarisation="0.01 0.0 -0.02"', 'REF_polarisation="0.01, 0.0, -0.02"')
    r = read_records(write(tmp_path, text), LABELS)[0]
    np.testing.assert_allclose(r.labels["polarisation"], [0.01, 0.0, -0.02])


def test_singular_cell_and_non_periodic(tmp_path):
    text = GOOD.replace('Lattice="4.0 0.0 0.0 0.0 4.0 0.0 0.0 0.0 4.0"', 'Lattice="4.0 0.0 0.0 4.0 0.0 0.0 0.0 0.0 4.0"')
    expect(write(tmp_path, text), 0, "Lattice", "singular")
    text = GOOD.replace('pbc="T T T"', 'pbc="T T F"')
    expect(write(tmp_path, text, "np.xyz"), 0, "pbc", "periodic")


def test_missing_required_label_and_empty_file(tmp_path):
    text = GOOD.replace(' REF_polarisation="0.01 0.0 -0.02"', "")
    assert "polarisation" not in read_records(write(tmp_path, text), LABELS)[0].labels  # absent = weight 0
    expect(write(tmp_path, text, "req.xyz"), 0, "REF_polarisation", "required label missing", required=["polarisation"])
    expect(write(tmp_path, "", "empty.xyz"), None, None, "no structures")
    expect(tmp_path / "missing.xyz", None, None, "no such file")


def test_field_spec_must_be_key_or_value(tmp_path):
    with pytest.raises(ValueError, match="both 'key' and 'value'"):
        read_records(write(tmp_path, GOOD), LABELS, {"key": "REF_electric_field", "unit": "V/A", "value": [0, 0, 0]})


def test_unknown_units_are_config_errors(tmp_path):
    with pytest.raises(ValueError, match="not accepted for polarisation"):
        read_records(write(tmp_path, GOOD), {"polarisation": {"key": "REF_polarisation", "unit": "C/m^2"}})


def test_unknown_element_names_the_structure():
    import ase.io

    atoms = ase.io.read(shared_file("md", "BaTiO3.xyz"), index=0)
    with pytest.raises(UnknownElementError, match=r"BaTiO3.xyz:0: element\(s\) Ba not in the model's element table"):
        atoms_to_graph(atoms, [8, 22], 5.0, source="BaTiO3.xyz:0")
