"""P along a distortion path: one continuous branch across a quantum jump, aligned model branch,
P_s."""

from __future__ import annotations

import numpy as np

from mf_lightning.data.polarisation import align_branch, polarisation_quanta, unwrap_branch
from mf_lightning.evaluation.paths import spontaneous_polarisation


def synthetic_path(n=6):
    """Cells that strain along the path and a P that grows linearly with the path coordinate."""
    s = np.linspace(0, 1, n)
    cells = np.array([np.diag([4.0, 4.0, 4.0 + 0.2 * x]) + [[0, 0.1 * x, 0], [0, 0, 0], [0, 0, 0]] for x in s])
    p_true = np.outer(s, [0.002, -0.001, 0.05])  # e/A^2; 0.05 e/A^2 = 80 uC/cm^2 > half a quantum
    return s, cells, p_true


def test_unwrap_recovers_a_branch_across_quantum_jumps():
    _, cells, p_true = synthetic_path()
    wrapped = p_true.copy()
    for k in (3, 4, 5):  # Berry-phase labels from a later frame returned on another branch
        Q = polarisation_quanta(cells[k])
        wrapped[k] -= Q @ np.array([0, 1, 1 if k == 5 else -1])
    assert np.abs(np.diff(wrapped[:, 2])).max() > 0.03  # the jump is there
    np.testing.assert_allclose(unwrap_branch(wrapped, cells), p_true, atol=1e-12)


def test_model_branch_aligned_to_reference_and_ps():
    _, cells, p_true = synthetic_path()
    Q0 = polarisation_quanta(cells[0])
    model = p_true + 0.001 + (Q0 @ np.array([2, 0, -1]))[None, :]  # right shape, another branch
    ref = p_true.copy()
    ref[4] += polarisation_quanta(cells[4]) @ np.array([0, 0, 1])
    aligned = align_branch(model, unwrap_branch(ref, cells), cells)
    np.testing.assert_allclose(aligned, p_true + 0.001, atol=1e-12)
    res = spontaneous_polarisation(ref, model, cells)
    np.testing.assert_allclose(res["ps_reference"], p_true[-1] - p_true[0], atol=1e-12)
    np.testing.assert_allclose(res["ps_model"], p_true[-1] - p_true[0], atol=1e-12)
