"""Physical constants and unit conversions (internal units: eV, A, e, V; SPEC section 1)."""

from __future__ import annotations

# The elementary charge (C) of ASE's units (CODATA 2014), which every conversion from ASE's
# own units in this package uses; here as a number so that importing the units needs no ASE.
_E_CHARGE_C = 1.6021766208e-19

# Vacuum permittivity in e/(V A): eps0 = 8.8541878128e-12 F/m = C/(V m);
# divided by e (C) and by 1e10 A/m -> 0.0055263 e/(V A).
EPS0_E_PER_V_A = 8.8541878128e-12 / _E_CHARGE_C / 1e10

# Polarisation: 1 e/A^2 = 1.602176634e-19 C / 1e-16 cm^2 = 1602.18 uC/cm^2.
E_PER_A2_TO_UC_PER_CM2 = _E_CHARGE_C * 1e6 / 1e-16

# Piezoelectric stress constants (and any polarisation per unit strain): 1 e/A^2 = 1.602e-19 C /
# 1e-20 m^2 = 16.0218 C/m^2.
E_PER_A2_TO_C_PER_M2 = _E_CHARGE_C / 1e-20

# Stress: 1 GPa = 1/160.2177 eV/A^3.
EV_PER_A3_PER_GPA = 1.0 / 160.21766208

# Field: 1 V/A = 1e8 V/cm = 100 MV/cm.
MV_PER_CM_PER_V_PER_A = 100.0
