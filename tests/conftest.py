"""Shared fixtures. This file sits at the rootdir so pytest (in importlib mode, see
pyproject.toml) imports *our* tests, never the ``tests`` package the mace-torch wheel installs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, settings

# CI is deterministic: under `make test` every property-based test draws the same examples on
# every run (derandomised, no example database). `make fuzz` (HYPOTHESIS_PROFILE=fuzz) draws new
# random examples, 1,000+ per test; any failure it finds is pinned as an explicit @example.
_COMMON = dict(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
settings.register_profile("ci", max_examples=150, derandomize=True, database=None, **_COMMON)
settings.register_profile("fuzz", max_examples=int(os.environ.get("MF_FUZZ_EXAMPLES", "1000")),
                          derandomize=False, **_COMMON)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# Two torch threads are faster on an idle 2-core machine but 9-14x slower when anything else
# runs beside them; tests are many small ops, so one thread is the stable choice.
torch.set_num_threads(int(os.environ.get("MF_TEST_THREADS", "1")))

import ase.io  # noqa: E402

import mf_lightning  # noqa: E402,F401  (import order: mace before e3nn)
from mf_lightning.runtime import tune_malloc  # noqa: E402

tune_malloc()  # what every entry point does (mf_lightning/runtime.py)

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("MF_DATA_DIR", REPO.parent / "shared" / "data"))


def shared_file(*parts: str) -> Path:
    path = SHARED_DATA.joinpath(*parts)
    if not path.is_file():
        pytest.fail(f"shared data file {path} is missing (set MF_DATA_DIR or put ../shared/data beside the repo)")
    return path


@pytest.fixture(scope="session")
def sio2_atoms():
    return ase.io.read(shared_file("md", "SiO2.xyz"), index=0)


@pytest.fixture(scope="session")
def batio3_atoms():
    return ase.io.read(shared_file("md", "BaTiO3.xyz"), index=0)


@pytest.fixture(scope="session")
def dielectric_atoms():
    """A small MP-Dielectric entry (6-atom Th compound, the file's first frame)."""
    return ase.io.read(shared_file("mp_dielectric", "dielectric-valid.xyz"), index=0)


@pytest.fixture(scope="session")
def structures(sio2_atoms, batio3_atoms, dielectric_atoms):
    return {"SiO2": sio2_atoms, "BaTiO3": batio3_atoms, "dielectric": dielectric_atoms}


# ---------------------------------------------------------------- dtypes
DTYPES = ("float64", "float32")


@pytest.fixture(params=DTYPES)
def dtype(request):
    """Model, observable and calculator identities in both precisions (finite-difference checks
    stay float64: a central difference in float32 is dominated by round-off)."""
    return request.param


def tolerance(dtype: str, scale: float = 1.0) -> dict:
    """``assert_close`` tolerances for an identity that holds to round-off: float64 as strict as
    before, float32 relative to the size of the quantity compared (``scale``)."""
    if dtype == "float64":
        return dict(rtol=1e-9, atol=1e-11)
    return dict(rtol=2e-4, atol=2e-4 * float(scale))
