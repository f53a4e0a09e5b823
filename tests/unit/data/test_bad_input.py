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


def test_a_molecule_far_from_the_origin_builds_the_same_small_graph():
    """mace sizes a non-periodic direction by max |x|: a 3-atom molecule at x = 1e5 A took 12 s
    and 7.5 GB. Built centred, it is the same graph (edges, shifts) as at the origin, and the
    graph keeps the positions it was given."""
    from ase import Atoms

    near = Atoms("H3", positions=[[0, 0, 0], [1.0, 0, 0], [0, 1.2, 0]], pbc=False)
    far = near.copy()
    far.translate([1e5, -3e4, 2e3])
    import time

    start = time.perf_counter()
    a, b = atoms_to_graph(near, [1], 5.0), atoms_to_graph(far, [1], 5.0)
    assert time.perf_counter() - start < 3.0  # not the 12 s (and 7.5 GB) of the uncentred list
    assert a.edge_index.tolist() == b.edge_index.tolist()
    assert a.shifts.abs().max() == 0 and b.shifts.abs().max() == 0
    np.testing.assert_array_equal(b.positions.numpy(), far.get_positions())


@pytest.mark.parametrize("case,message", [
    ("spread", "atoms spread over 400 x 0 x 0 A: its neighbour list"),
    ("dense", r"1 atoms in 1e-06 A\^3 .* neighbour pairs"),
    ("huge_cell", "a periodic cell of 1e\\+05 x 1e\\+05 x 1e\\+05 A: its neighbour list"),
])
def test_a_neighbour_list_that_would_not_finish_is_refused_before_it_starts(case, message):
    """matscipy holds the GIL, so no timer can stop it once started: the cost is predicted first."""
    import time

    from ase import Atoms

    from mf_lightning.data.graphs import GeometryError

    atoms = {"spread": Atoms("H2", positions=[[0, 0, 0], [400, 0, 0]], pbc=False),
             "dense": Atoms("H", cell=np.eye(3) * 0.01, pbc=True),
             "huge_cell": Atoms("H", cell=np.eye(3) * 1e5, pbc=True)}[case]
    start = time.perf_counter()
    with pytest.raises(GeometryError, match=message):
        atoms_to_graph(atoms, [1], 5.0, source="x.xyz:3")
    assert time.perf_counter() - start < 1.0


def test_isolated_atoms_are_warned_about_once(caplog):
    """An atom with no neighbour within r_max has zero response (eps_inf = 1, Z* = 0 there):
    said once per source, not at every MD step."""
    from ase import Atoms

    atoms = Atoms("H3", positions=[[0, 0, 0], [1.0, 0, 0], [20.0, 0, 0]], cell=np.eye(3) * 40, pbc=True)
    with caplog.at_level("WARNING"):
        atoms_to_graph(atoms, [1], 5.0, source="lonely.xyz:0")
        atoms_to_graph(atoms, [1], 5.0, source="lonely.xyz:0")
    lines = [r.getMessage() for r in caplog.records if "no neighbour" in r.getMessage()]
    assert lines == ["lonely.xyz:0: 1 of 3 atoms have no neighbour within the cutoff: their field response is "
                     "zero (eps_inf = 1, Z* = 0 there)"]


# A nearly singular cell: a3 almost in the plane of a1 and a2 (0.025 A^3 for 3 atoms). It passed
# every guard, and both neighbour lists then looped over thousands of periodic images per atom:
# ASE's overlap check (GBs within a minute) and matscipy's list (~1e11 bin visits).
THIN_CELL = [[5.0, 0.0, 0.0], [0.0, 5.0, 0.0], [2.5, 2.5, 1e-3]]
THIN_CELL_SCRIPT = """
import time
import numpy as np
from ase import Atoms
from mf_lightning.data.graphs import GeometryError, atoms_to_graph, check_geometry
atoms = Atoms("H3", scaled_positions=[[0, 0, 0], [0.3, 0.3, 0.5], [0.6, 0.2, 0.7]], cell=np.array(CELL), pbc=True)
for name, check in (("geometry", lambda: check_geometry(atoms, "thin.xyz:0")),
                    ("graph", lambda: atoms_to_graph(atoms, [1], 5.0, source="thin.xyz:0"))):
    start = time.perf_counter()
    try:
        check()
    except GeometryError as exc:
        print(name, "refused in", round(time.perf_counter() - start, 3), "s:", exc)
"""


def limited_memory(gib: float = 4.0):
    """A subprocess memory ceiling (a regression fails with MemoryError instead of taking the machine)."""
    import resource

    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (int(gib * 2 ** 30), int(gib * 2 ** 30)))

    return limit


def test_a_nearly_singular_cell_is_refused_quickly_by_both_neighbour_lists():
    """Run in a subprocess with a timeout and a memory ceiling, so a regression fails instead of hanging:
    both the overlap check (ASE's list, which every loader runs) and the graph's own list
    (matscipy, atoms_to_graph: training, eval, the calculator and MD) refuse it in milliseconds,
    naming the structure and the thin direction."""
    import os
    import subprocess
    import sys

    from tests.conftest import REPO

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", THIN_CELL_SCRIPT.replace("CELL", repr(THIN_CELL))], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=120, preexec_fn=limited_memory())
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    assert [line.split()[0] for line in lines] == ["geometry", "graph"], proc.stdout
    for line in lines:
        assert float(line.split()[3]) < 1.0, line
        assert "thin.xyz:0: a periodic cell only 0.001 A thick along a3" in line and "nearly singular" in line, line
    assert "overlap check would search" in lines[0] and "neighbour list (r_max = 5 A) would visit" in lines[1]


def test_real_cells_pass_the_neighbour_list_cost_guard(structures):
    """The bound is far from any real crystal: the shared structures, a 4x4x4 quartz supercell
    (4608 atoms) and a strongly sheared (unreduced) but valid quartz cell all pass."""
    from mf_lightning.data.graphs import geometry_problem, neighbour_list_problem

    quartz = structures["SiO2"]
    sheared = quartz.copy()
    cell = sheared.cell.array.copy()
    cell[2] += 3 * cell[0]  # the same lattice, a cell 3 vectors skewed
    sheared.set_cell(cell)
    for atoms in (*structures.values(), quartz.repeat((4, 4, 4)), sheared):
        assert geometry_problem(atoms) is None
        assert neighbour_list_problem(atoms.get_positions(), atoms.get_cell().array, (True,) * 3, 6.0) is None
