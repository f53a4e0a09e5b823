"""CI is deterministic: under the CI profile two processes draw the same examples for every
property-based test (they are only recorded here, see tests.helpers.only_record)."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.conftest import REPO


def drawn(tmp_path, run: int) -> list:
    record = tmp_path / f"run{run}.txt"
    env = {**os.environ, "HYPOTHESIS_PROFILE": "ci", "MF_FUZZ_RECORD": str(record), "PYTHONWARNINGS": "ignore",
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "fuzz", "-p", "no:cacheprovider", "tests/unit"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "3 passed" in proc.stdout, proc.stdout[-2000:]
    return record.read_text().splitlines()


def test_property_based_tests_draw_the_same_examples_in_every_process(tmp_path):
    first, second = drawn(tmp_path, 1), drawn(tmp_path, 2)
    assert len(first) >= 3 * 150  # the CI profile's 150 per test, and the pinned @examples
    assert first == second
