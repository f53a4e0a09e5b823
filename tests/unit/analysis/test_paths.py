"""P along a distortion path: the reference stays on the file's branch, the model's P is aligned
once by a whole quantum, P_s = P[last] - P[first]; folding takes the nearest lattice image."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from mf_lightning.analysis.paths import spontaneous_polarisation
from mf_lightning.data.polarisation import align_branch, fold_onto, nearest_image, polarisation_quanta


def sparse_path(n=3):
    """Cells that strain along the path and a P that grows by more than half a quantum per frame."""
    s = np.linspace(0, 1, n)
    cells = np.array([np.diag([4.0, 4.0, 4.0 + 0.2 * x]) + [[0, 0.1 * x, 0], [0, 0, 0], [0, 0, 0]] for x in s])
    p_true = np.outer(s, [0.002, -0.001, 0.12])  # e/A^2; 0.06 per step > half the z quantum (~0.031)
    return s, cells, p_true


def test_sparse_path_keeps_the_files_ps():
    """Frames more than half a quantum apart: refolding frame to frame would alias the step."""
    _, cells, p_ref = sparse_path()
    half_quantum = 0.5 * polarisation_quanta(cells[1])[2, 2]
    assert np.abs(np.diff(p_ref[:, 2])).min() > half_quantum
    Q0 = polarisation_quanta(cells[0])
    model = p_ref + 0.001 + (Q0 @ np.array([2, 0, -1]))[None, :]  # right shape, another branch
    res = spontaneous_polarisation(p_ref, model, cells)
    np.testing.assert_array_equal(res["reference"], p_ref)
    np.testing.assert_allclose(res["ps_reference"], p_ref[-1] - p_ref[0], atol=1e-15)
    np.testing.assert_allclose(res["model"], p_ref + 0.001, atol=1e-12)  # one whole-quantum shift
    np.testing.assert_allclose(res["ps_model"], p_ref[-1] - p_ref[0], atol=1e-12)


def test_align_branch_shifts_the_series_once():
    _, cells, p = sparse_path(5)
    Q0 = polarisation_quanta(cells[0])
    shifted = p + (Q0 @ np.array([1, -3, 2]))[None, :]
    aligned = align_branch(shifted, p[0] + 1e-3, cells[0])
    np.testing.assert_allclose(aligned, p, atol=1e-12)
    np.testing.assert_allclose(np.diff(aligned, axis=0), np.diff(shifted, axis=0), atol=1e-12)  # no refolding


def rhombohedral(a, angle_deg):
    c = np.cos(np.radians(angle_deg))
    cz = np.sqrt(1 + 2 * c ** 3 - 3 * c ** 2) / np.sqrt(1 - c ** 2)
    return a * np.array([[1, 0, 0], [c, np.sqrt(1 - c ** 2), 0], [c, (c - c * c) / np.sqrt(1 - c ** 2), cz]])


def brute_force(dP, cell, reach=4):
    Q = polarisation_quanta(cell)
    images = [dP - Q @ np.array(n) for n in itertools.product(range(-reach, reach + 1), repeat=3)]
    return min(images, key=np.linalg.norm)


@pytest.mark.parametrize("cell", [rhombohedral(5.0, 30.0), rhombohedral(4.0, 60.0), rhombohedral(6.0, 100.0),
                                  np.array([[4.0, 0, 0], [3.5, 2.0, 0], [1.0, 1.5, 6.0]]),  # monoclinic-ish
                                  np.diag([3.0, 5.0, 9.0])], ids=["rh30", "rh60", "rh100", "skewed", "ortho"])
def test_folding_takes_the_nearest_image_in_skewed_cells(cell):
    rng = np.random.default_rng(0)
    Q = polarisation_quanta(cell)
    dP = (rng.uniform(-3, 3, (200, 3)) @ Q.T)  # up to 3 quanta along every lattice vector
    folded = nearest_image(torch.tensor(dP), torch.tensor(cell).expand(200, 3, 3)).numpy()
    expected = np.array([brute_force(d, cell) for d in dP])
    np.testing.assert_allclose(np.linalg.norm(folded, axis=1), np.linalg.norm(expected, axis=1), atol=1e-12)
    np.testing.assert_allclose(folded, expected, atol=1e-12)
    # fold_onto (metrics, audit) and the loss share it
    np.testing.assert_allclose(fold_onto(dP[0] + 1.0, np.ones(3), cell)[0] - 1.0, expected[0], atol=1e-12)


def test_rounding_fractional_coordinates_is_not_the_nearest_image():
    """The reason for the neighbour search: in a 30 degree rhombohedral cell, rounding misses."""
    cell = rhombohedral(5.0, 30.0)
    Q = polarisation_quanta(cell)
    rng = np.random.default_rng(1)
    dP = rng.uniform(-3, 3, (200, 3)) @ Q.T
    x = np.linalg.solve(Q, dP.T).T
    rounded = dP - (np.round(x) @ Q.T)
    nearest = np.array([brute_force(d, cell) for d in dP])
    assert (np.linalg.norm(rounded, axis=1) > np.linalg.norm(nearest, axis=1) + 1e-9).mean() > 0.05


def test_the_paths_tool_computes_only_p_in_batches_of_the_given_size(tmp_path, monkeypatch):
    """The 254-frame held-out file was killed for memory (16.7 GB) when the tool computed Z* and
    alpha it does not use: P only, in batches of at most ``batch_atoms`` atoms (or one structure)."""
    import ase.io

    from mf_lightning.analysis import paths, screening
    from tests.conftest import SHARED_DATA
    from tests.helpers import tiny_model

    frames = ase.io.read(SHARED_DATA / "mp_ferroelectric" / "ferroelectric-valid.xyz", index=":")
    group = frames[0].info["polar_mpid"]
    chosen = [a for a in frames if a.info["polar_mpid"] == group][:3]
    ase.io.write(tmp_path / "path.xyz", chosen, format="extxyz")
    model = tiny_model(sorted({int(z) for a in chosen for z in a.numbers}), dtype="float32")
    calls = []
    real = screening.predict_response

    def spy(model, structures, **kwargs):
        calls.append((kwargs.get("quantities"), sum(len(a) for a in structures), len(structures)))
        return real(model, structures, **kwargs)

    monkeypatch.setattr(screening, "predict_response", spy)
    limit = max(len(a) for a in chosen)
    paths.evaluate_paths(model, tmp_path / "path.xyz", tmp_path / "out", batch_atoms=limit)
    assert calls and all(q == ("polarisation",) for q, _, _ in calls)
    assert all(atoms <= limit or n == 1 for _, atoms, n in calls)
    assert sum(n for _, _, n in calls) == len(chosen) and (tmp_path / "out" / "summary.json").is_file()
