"""One record per quantity: everything the data, loss, metrics, evaluation and audit need to know
about a labelled quantity (as nequip's field registry in ``data/_keys.py``).

A :class:`Quantity` holds its shape and whether it is per atom; its internal unit (SPEC
section 1), the units a file may store it in and how each converts; whether a label needs a
3D-periodic cell; how the loss normalises its residual; its metric unit and whether metrics split
diagonal and off-diagonal components; and the file keys that name it in the known data sets.
Adding a quantity is one :func:`register` call: the reader converts it, every graph carries its
``ref_``/``weight_`` slots, the loss has a term and a scale for it, and the metrics, evaluation
tables and audit report it (``tests/unit/data/test_quantities.py`` registers a toy quantity and
follows it through). The model must of course return it under its name.

Units (internal <- accepted file units):

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
from dataclasses import dataclass, field
from typing import Callable, Dict, Mapping, Tuple

import numpy as np

from mf_lightning.units import E_PER_A2_TO_UC_PER_CM2, EPS0_E_PER_V_A, EV_PER_A3_PER_GPA, MV_PER_CM_PER_V_PER_A

Conversion = Callable[[np.ndarray, float], np.ndarray]  # (value, cell volume) -> internal unit


def _identity(v, volume):
    return v


def _per_volume(v, volume):
    return v / volume


def _scaled(factor: float) -> Conversion:
    return lambda v, volume: v * factor


def _divided(divisor: float) -> Conversion:
    return lambda v, volume: v / divisor


@dataclass(frozen=True)
class Quantity:
    name: str
    shape: Tuple[int, ...]  # one label, without the leading (atoms,) or (1,) axis
    per_atom: bool
    unit: str  # internal unit
    file_units: Mapping[str, Conversion]  # accepted file unit -> conversion to ``unit``
    needs_volume: bool = False  # a label needs a structure periodic in 3D with a finite volume
    label: bool = True  # a learned label (loss term, metrics); False: an input (the field)
    divide_by_atoms: bool = False  # loss/metrics compare it per atom (the energy: extensive)
    modulo_quantum: bool = False  # defined modulo the polarisation quantum: residuals are folded
    metric_unit: str = ""
    metric_scale: float = 1.0  # internal unit -> metric unit
    split_diagonal: bool = False  # 3x3: metrics for diagonal and off-diagonal components apart
    voigt6: bool = False  # symmetric 3x3 that files may store as Voigt-6 (xx yy zz yz xz xy)
    file_keys: Mapping[str, str] = field(default_factory=dict)  # known file key -> its unit (audit)

    def metric_names(self) -> Tuple[str, ...]:
        return (f"{self.name}_diag", f"{self.name}_offdiag") if self.split_diagonal else (self.name,)


QUANTITIES: Dict[str, Quantity] = {}


def register(quantity: Quantity) -> Quantity:
    """Add a quantity (its name must be new). Labels are learned in registration order."""
    if quantity.name in QUANTITIES:
        raise ValueError(f"quantity {quantity.name!r} is already registered")
    QUANTITIES[quantity.name] = quantity
    return quantity


def unregister(name: str) -> None:
    QUANTITIES.pop(name)


def tasks() -> Tuple[str, ...]:
    """The learned labels: one loss term, one ``ref_``/``weight_`` slot in every graph each."""
    return tuple(name for name, q in QUANTITIES.items() if q.label)


# metrics derived from a label rather than labels themselves (evaluation only)
DERIVED_METRIC_UNITS = {"n": "", "eps_ion_diag": "", "eps_ion_offdiag": "", "piezo_relaxed": "C/m^2"}

# The strain-component order of the columns of a file's 3 x 6 piezoelectric stress tensor (C/m^2,
# rows the polarisation direction x y z; eval.py's ``piezo_order``). MP-Dielectric's
# ``REF_piezoelectric`` (DFPT "total", relaxed-ion) is in VASP's OUTCAR order: read so, 209 of the
# file's 211 tensors with a component above 0.02 C/m^2 are invariant (to 5 % of their largest
# component) under their crystal's point group (spglib, symprec 1e-3 A); read in Voigt's order, 20.
PIEZO_ORDERS = {"vasp": ("xx", "yy", "zz", "xy", "yz", "xz"),  # VASP's OUTCAR, Materials Project's files
                "voigt": ("xx", "yy", "zz", "yz", "xz", "xy")}  # Voigt's: mf-predict's, pymatgen's Tensor.voigt


def piezo_reference(values, order: str = "vasp") -> np.ndarray:
    """A file's 18 numbers of a piezoelectric tensor (row-major 3 x 6, columns in ``order`` of
    :data:`PIEZO_ORDERS`) as (3, 6) in Voigt order (xx yy zz yz xz xy)."""
    if order not in PIEZO_ORDERS:
        raise ValueError(f"unknown piezo_order {order!r}; choose from {', '.join(PIEZO_ORDERS)}")
    e = np.asarray(values, dtype=float).reshape(3, 6)
    return e[:, [PIEZO_ORDERS[order].index(c) for c in PIEZO_ORDERS["voigt"]]]


def metric_units() -> Dict[str, str]:
    """{metric quantity: unit}: the names in ``{stage}/{dataset}/{quantity}_{rmse|mae}``."""
    out = {m: q.metric_unit for q in QUANTITIES.values() if q.label for m in q.metric_names()}
    return {**out, **DERIVED_METRIC_UNITS}


def get(name: str) -> Quantity:
    if name not in QUANTITIES:
        raise ValueError(f"unknown quantity {name!r}; known: {sorted(QUANTITIES)}")
    return QUANTITIES[name]


def check_unit(quantity: str, unit: str) -> None:
    q = get(quantity)
    if unit not in q.file_units:
        raise ValueError(f"unit {unit!r} not accepted for {quantity}; accepted: {sorted(q.file_units)}")


def voigt6_to_3x3(v: np.ndarray) -> np.ndarray:
    """ASE Voigt order xx, yy, zz, yz, xz, xy -> symmetric 3x3."""
    xx, yy, zz, yz, xz, xy = v
    return np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])


def to_internal(quantity: str, unit: str, value: np.ndarray, volume: float) -> np.ndarray:
    """Convert a label already in its internal *shape* to internal units."""
    check_unit(quantity, unit)
    return np.asarray(get(quantity).file_units[unit](np.asarray(value, dtype=float), volume), dtype=float)


# ---------------------------------------------------------------------- the quantities
register(Quantity("energy", (), False, "eV", {"eV": _identity}, divide_by_atoms=True, metric_unit="eV/atom"))
register(Quantity("forces", (3,), True, "eV/A", {"eV/A": _identity}, metric_unit="eV/A"))
register(Quantity("stress", (3, 3), False, "eV/A^3", {"eV/A^3": _identity, "GPa": _scaled(EV_PER_A3_PER_GPA)},
                  needs_volume=True, metric_unit="eV/A^3", voigt6=True))
register(Quantity("polarisation", (3,), False, "e/A^2",
                  {"e/A^2": _identity, "e*A": _per_volume, "uC/cm^2": _divided(E_PER_A2_TO_UC_PER_CM2)},
                  needs_volume=True, modulo_quantum=True, metric_unit="uC/cm^2",
                  metric_scale=E_PER_A2_TO_UC_PER_CM2, file_keys={"REF_polarisation": "e/A^2"}))
register(Quantity("becs", (3, 3), True, "e", {"e": _identity}, needs_volume=True, metric_unit="e",
                  split_diagonal=True, file_keys={"REF_becs": "e", "born_charge": "e"}))
register(Quantity("polarisability", (3, 3), False, "e/(V*A)",
                  {"e/(V*A)": _identity, "e*A^2/V": _per_volume, "chi/4pi": _scaled(4.0 * math.pi * EPS0_E_PER_V_A)},
                  needs_volume=True, metric_unit="e/(V*A)", split_diagonal=True,
                  file_keys={"REF_polarisability": "chi/4pi", "polarizability": "e*A^2/V"}))
register(Quantity("electric_field", (3,), False, "V/A", {"V/A": _identity, "MV/cm": _divided(MV_PER_CM_PER_V_PER_A)},
                  label=False))
