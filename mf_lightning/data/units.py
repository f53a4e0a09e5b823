"""Unit conversions of labels to the internal units of SPEC section 1, done once, on load.

Each quantity has an internal unit and a table of accepted file units. A conversion may need the
structure (cell volume Omega) because several sources store extensive quantities:

========================  ==============  =====================================================
quantity                  internal unit   accepted file units -> how converted
========================  ==============  =====================================================
energy                    eV              ``eV``
forces                    eV/A            ``eV/A``
stress                    eV/A^3          ``eV/A^3`` (3x3 or Voigt-6 xx yy zz yz xz xy), ``GPa``
polarisation              e/A^2           ``e/A^2``; ``e*A`` (cell dipole Omega P: / Omega);
                                          ``uC/cm^2`` (/ 1602.18)
becs                      e               ``e`` (9 per atom, row-major Z*[i, j], i = field)
polarisability            e/(V*A)         ``e/(V*A)``; ``e*A^2/V`` (Omega alpha: / Omega);
                                          ``chi/4pi`` ((eps_inf - 1)/(4 pi): x 4 pi eps0)
electric_field            V/A             ``V/A``; ``MV/cm`` (/ 100)
========================  ==============  =====================================================

Checked against known materials in the tests: MP-Dielectric's ``REF_polarisability`` is
chi/(4 pi) (GaN gives eps_inf = 6.09), alpha-quartz's ``polarizability`` is Omega alpha
(eps_inf ~ 2.4).
"""

from __future__ import annotations

import math
from typing import Callable, Dict

import numpy as np

from mf_lightning.units import E_PER_A2_TO_UC_PER_CM2, EPS0_E_PER_V_A

EV_PER_A3_PER_GPA = 1.0 / 160.21766208

# per quantity: internal shape of one label ("graph" labels carry a leading 1) and per-atom flag
SHAPES = {
    "energy": ((), False),
    "forces": ((3,), True),
    "stress": ((3, 3), False),
    "polarisation": ((3,), False),
    "becs": ((3, 3), True),
    "polarisability": ((3, 3), False),
    "electric_field": ((3,), False),
}


def _identity(v, volume):
    return v


def _per_volume(v, volume):
    return v / volume


CONVERSIONS: Dict[str, Dict[str, Callable[[np.ndarray, float], np.ndarray]]] = {
    "energy": {"eV": _identity},
    "forces": {"eV/A": _identity},
    "stress": {"eV/A^3": _identity, "GPa": lambda v, vol: v * EV_PER_A3_PER_GPA},
    "polarisation": {
        "e/A^2": _identity,
        "e*A": _per_volume,
        "uC/cm^2": lambda v, vol: v / E_PER_A2_TO_UC_PER_CM2,
    },
    "becs": {"e": _identity},
    "polarisability": {
        "e/(V*A)": _identity,
        "e*A^2/V": _per_volume,
        "chi/4pi": lambda v, vol: v * 4.0 * math.pi * EPS0_E_PER_V_A,
    },
    "electric_field": {"V/A": _identity, "MV/cm": lambda v, vol: v / 100.0},
}

NEEDS_VOLUME = {("polarisation", "e*A"), ("polarisability", "e*A^2/V")}


def check_unit(quantity: str, unit: str) -> None:
    if quantity not in CONVERSIONS:
        raise ValueError(f"unknown quantity {quantity!r}; known: {sorted(CONVERSIONS)}")
    if unit not in CONVERSIONS[quantity]:
        raise ValueError(f"unit {unit!r} not accepted for {quantity}; accepted: {sorted(CONVERSIONS[quantity])}")


def voigt6_to_3x3(v: np.ndarray) -> np.ndarray:
    """ASE Voigt order xx, yy, zz, yz, xz, xy -> symmetric 3x3."""
    xx, yy, zz, yz, xz, xy = v
    return np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])


def to_internal(quantity: str, unit: str, value: np.ndarray, volume: float) -> np.ndarray:
    """Convert a label already in its internal *shape* to internal units."""
    check_unit(quantity, unit)
    return np.asarray(CONVERSIONS[quantity][unit](np.asarray(value, dtype=float), volume), dtype=float)
