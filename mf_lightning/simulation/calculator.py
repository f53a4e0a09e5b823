"""ASE calculator for field-aware MACE models.

Properties (ASE units: eV, eV/A, eV/A^3; response properties in our internal units):

* ``energy``, ``free_energy``: the electric enthalpy F(R, E) at the current field, eV
* ``forces``: -dF/dR (including the field term), eV/A
* ``stress``: Voigt 6, eV/A^3 (periodic cells only)
* ``polarisation``: P, e/A^2 (3,)
* ``dipole``: Omega P, e A (3,): ASE's ``atoms.get_dipole_moment()``, as IR workflows read it
* ``becs``: Born effective charges Z*, e, (n_atoms, 3, 3), ``becs[k, i, j] = d(Omega P_i)/dR_kj``
* ``polarisability``: alpha, e/(V A), (3, 3)

With an ensemble model (:mod:`mf_lightning.model.ensemble`) every property is the member mean and
the results also hold its spread, ``<property>_std`` (``energy_std``, ``forces_std``,
``stress_std``, ``polarisation_std``, ``dipole_std``, ``becs_std``, ``polarisability_std`` and,
from the members' alpha, ``eps_inf_std``, ``eps_poly_std``, ``n_std``; calibrated where the
ensemble is, see ``calc.model.uncertainty_metadata()``), read with :meth:`MACEFieldCalculator.get_uncertainty`.

Asking for energy/forces/stress also returns P from the same backward pass (a few per cent more
than forces alone, bench/RESULTS.md; ``compute_polarisation=False`` skips it for field-free
runs); Z* and alpha need second derivatives and are computed only when asked for.
The field may be a constant 3-vector (V/A), changed between calls with :meth:`set_field`, or a
function ``f(t) -> 3-vector`` of the time ``calc.time`` (fs), which an MD driver advances.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence, Union

import numpy as np
import torch
from ase.calculators.calculator import Calculator, all_changes
from ase.stress import full_3x3_to_voigt_6_stress

from mf_lightning.data import keys
from mf_lightning.data.graphs import atoms_to_graph, collate
from mf_lightning.model.io import load_model
from mf_lightning.utils import resolve_dtype

FieldLike = Union[Sequence[float], np.ndarray, Callable[[float], Sequence[float]]]


class MACEFieldCalculator(Calculator):
    implemented_properties = [
        "energy", "free_energy", "forces", "stress", "dipole",
        keys.POLARISATION, keys.BECS, keys.POLARISABILITY,
    ]

    def __init__(
        self,
        model: Union[str, torch.nn.Module],
        device: Optional[str] = None,
        dtype: Optional[str] = None,
        electric_field: FieldLike = (0.0, 0.0, 0.0),
        head: Optional[str] = None,
        compute_polarisation: bool = True,
        allow_untrained: bool = False,
        **kwargs,
    ):
        """``device``/``dtype``: default to a module's own (it is used as given, moved or cast in
        place only if they are set and differ), and to cpu / float64 for a model file.

        A property the head never learned (``model.learned_quantities``: forces of a head trained
        on Z* and alpha only, Z* of a replay head) is refused when asked for
        (:class:`~mf_lightning.errors.UntrainedQuantityError`), so a relaxation, an MD run or a
        Hessian never runs silently on meaningless forces. ``allow_untrained=True`` computes it
        anyway, with a warning; the warnings are kept in ``untrained_warnings`` for the caller's
        output metadata."""
        super().__init__(**kwargs)
        if isinstance(model, torch.nn.Module):  # a FieldMACE or an ensemble of them
            if not hasattr(model, "resolve_head"):
                raise TypeError(f"MACEFieldCalculator takes a FieldMACE, an ensemble of them or a model file, not a "
                                f"{type(model).__name__}: upgrade a mace model with FieldMACE.from_mace first")
            device = device or str(next(model.parameters()).device)
            self.torch_dtype = resolve_dtype(dtype) if dtype is not None else model.dtype
            self.model = model.to(device=device, dtype=self.torch_dtype).eval()
        else:
            device = device or "cpu"
            self.torch_dtype = resolve_dtype(dtype or "float64")
            self.model = load_model(model, device=device, dtype=self.torch_dtype)
        self.device = device
        self.compute_polarisation = bool(compute_polarisation)
        # energy and forces always, the response when asked: one head must have been trained on all
        wanted = ["energy", "forces"] + (["polarisation", "becs", "polarisability"] if compute_polarisation else [])
        self.head = self.model.resolve_head(head, wanted)
        self.allow_untrained = bool(allow_untrained)
        self.untrained_warnings: list = []  # one sentence per quantity let through by allow_untrained
        self._checked: set = set()
        self.time = 0.0  # fs; read by a time-dependent field
        self._field = None
        self._field_used: Optional[np.ndarray] = None  # the field of the cached results
        self.set_field(electric_field)

    # ------------------------------------------------------------------ field
    def set_field(self, electric_field: FieldLike) -> None:
        """Set a constant field (V/A) or a function of time ``f(t_fs)``; clears cached results."""
        if not callable(electric_field):
            electric_field = self._as_field(electric_field)
        self._field = electric_field
        self.results = {}

    @staticmethod
    def _as_field(value) -> np.ndarray:
        field = np.asarray(value, dtype=float).reshape(-1)
        if field.shape != (3,) or not np.all(np.isfinite(field)):
            raise ValueError(f"electric field must be 3 finite numbers in V/A, got {value!r}")
        return field

    def field_now(self) -> np.ndarray:
        """The field (V/A) at the calculator's current ``time``."""
        return self._as_field(self._field(self.time)) if callable(self._field) else self._field

    def check_state(self, atoms, tol=1e-15):
        changes = super().check_state(atoms, tol)
        used = self._field_used
        if self.results and used is not None and not np.array_equal(used, self.field_now()):
            changes = list(changes) + ["electric_field"]
        return changes

    # ------------------------------------------------------------------ trust
    # ASE property -> the labelled quantity it needs the head to have learned
    LEARNED_AS = {"energy": "energy", "free_energy": "energy", "forces": "forces", "stress": "stress",
                  "dipole": keys.POLARISATION,
                  keys.POLARISATION: keys.POLARISATION, keys.BECS: keys.BECS,
                  keys.POLARISABILITY: keys.POLARISABILITY}

    def require_learned(self, quantities, what: str) -> None:
        """Refuse (or, with ``allow_untrained``, warn once and record) ``quantities`` the head
        never learned; ``what`` names the use in the message."""
        missing = [q for q in quantities if q not in self._checked]
        if not missing:
            return
        note = self.model.check_learned(missing, what, head=self.head, allow_untrained=self.allow_untrained)
        if note and note not in self.untrained_warnings:
            self.untrained_warnings.append(note)
        self._checked.update(missing)

    def get_property(self, name, atoms=None, allow_calculation=True):
        if name in self.LEARNED_AS:
            self.require_learned([self.LEARNED_AS[name]], f"the calculator's {name}")
        return super().get_property(name, atoms, allow_calculation)

    # ------------------------------------------------------------------ compute
    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        want = {keys.ENERGY, keys.FORCES}
        if self.compute_polarisation or {keys.POLARISATION, "dipole"} & set(properties):
            want.add(keys.POLARISATION)
        periodic = bool(np.all(self.atoms.pbc)) and abs(self.atoms.get_volume()) > 1e-12
        if periodic:
            want.add(keys.STRESS)
        elif set(properties) & {"stress", "dipole", *keys.RESPONSE_PROPERTIES}:
            raise ValueError("stress, P, Z* and alpha need a periodic structure with a non-singular cell")
        else:
            want.discard(keys.POLARISATION)
        if set(properties) & {keys.BECS, keys.POLARISABILITY}:
            want |= {keys.BECS, keys.POLARISABILITY}
        field = self.field_now()
        graph = atoms_to_graph(
            self.atoms, self.model.atomic_numbers, self.model.r_max, heads=self.model.heads,
            head=self.head, electric_field=field, source="MACEFieldCalculator",
        )
        batch = collate([graph], dtype=self.torch_dtype, device=self.device)
        out = self.model(batch, properties=sorted(want))

        def np_(key):
            return out[key].detach().cpu().numpy().astype(float)

        energy = float(np_(keys.ENERGY)[0])
        self.results = {"energy": energy, "free_energy": energy, "forces": np_(keys.FORCES)}
        self._field_used = field.copy()
        if keys.STRESS in out:
            self.results["stress"] = full_3x3_to_voigt_6_stress(np_(keys.STRESS)[0])
        if keys.POLARISATION in out:
            self.results[keys.POLARISATION] = np_(keys.POLARISATION)[0]
            self.results["dipole"] = self.results[keys.POLARISATION] * abs(self.atoms.get_volume())
        if keys.BECS in out:
            self.results[keys.BECS] = np_(keys.BECS)
            self.results[keys.POLARISABILITY] = np_(keys.POLARISABILITY)[0]
        if keys.ENERGY + "_std" in out:
            self._spread(out, np_)

    def _spread(self, out, np_) -> None:
        """An ensemble's ``<property>_std`` results (module docstring)."""
        from mf_lightning.model.uncertainty import derived_spreads

        per_atom = (keys.FORCES, keys.BECS)
        for key in (keys.ENERGY, keys.FORCES, keys.STRESS, keys.POLARISATION, keys.BECS, keys.POLARISABILITY):
            if key + "_std" in out:
                value = np_(key + "_std")
                self.results[key + "_std"] = value if key in per_atom else value[0]
        self.results["free_energy_std"] = self.results["energy_std"]
        if "stress_std" in self.results:
            self.results["stress_std"] = full_3x3_to_voigt_6_stress(self.results["stress_std"])
        if "polarisation_std" in self.results:
            self.results["dipole_std"] = self.results["polarisation_std"] * abs(self.atoms.get_volume())
        if keys.BECS + "_members" in out:  # each member's Z* and alpha (eps_0 of each member: dielectric)
            self.results[keys.BECS + "_members"] = np_(keys.BECS + "_members")
            self.results[keys.POLARISABILITY + "_members"] = np_(keys.POLARISABILITY + "_members")[:, 0]
        if keys.POLARISABILITY + "_members" in out:
            members = np_(keys.POLARISABILITY + "_members")[:, 0]
            for name, value in derived_spreads(members, self.model.sigma_scale(keys.POLARISABILITY)).items():
                self.results[name + "_std"] = value

    # convenience accessors, as ASE's get_dipole_moment etc.
    def _get(self, name, atoms):
        if atoms is None and self.atoms is None:
            raise ValueError(f"get_{name}: pass the Atoms (the calculator has not computed any yet)")
        return self.get_property(name, atoms)

    def get_polarisation(self, atoms=None) -> np.ndarray:
        """P (e/A^2), shape (3,)."""
        return self._get(keys.POLARISATION, atoms)

    def get_becs(self, atoms=None) -> np.ndarray:
        """Z* (e), shape (n_atoms, 3, 3), ``[k, i, j] = d(Omega P_i)/dR_kj``."""
        return self._get(keys.BECS, atoms)

    def get_polarisability(self, atoms=None) -> np.ndarray:
        """alpha (e/(V A)), shape (3, 3)."""
        return self._get(keys.POLARISABILITY, atoms)

    # what get_uncertainty computes for each property asked for
    SPREAD_OF = {keys.POLARISABILITY: (keys.POLARISABILITY, "eps_inf", "eps_poly", "n"),
                 keys.POLARISATION: (keys.POLARISATION, "dipole"), "energy": ("energy",), "forces": ("forces",),
                 "stress": ("stress",), keys.BECS: (keys.BECS,)}

    def get_uncertainty(self, atoms=None, properties=(keys.BECS, keys.POLARISABILITY, keys.POLARISATION)) -> dict:
        """An ensemble's spread of ``properties`` (and what derives from them: eps_inf, eps_poly
        and n from alpha, the dipole from P) as {name: sigma}, each shaped as its property
        (Z*: (n_atoms, 3, 3), eps_inf: (3, 3), n: a number); calibrated where the ensemble is
        (``calc.model.uncertainty_metadata()``). A single model has no spread: an error."""
        if not hasattr(self.model, "members"):
            from mf_lightning.errors import InputError

            raise InputError("get_uncertainty needs an ensemble model (mf-ensemble combines trained runs into one)")
        found = {}
        for name in properties:
            self._get(name, atoms)
            found.update({k: self.results[k + "_std"] for k in self.SPREAD_OF[name] if k + "_std" in self.results})
        return found

    def get_flags(self, atoms=None) -> list:
        """Why the response of ``atoms`` must not be trusted, as mf-predict's ``flags`` column
        (:func:`mf_lightning.model.validity.response_flags`: eps_inf < 1, alpha asymmetric,
        the acoustic sum rule, Born-charge signs, unseen elements; ``untrained`` after
        ``allow_untrained`` let anything through). Empty: nothing found."""
        from mf_lightning.model.validity import response_flags

        becs, alpha = self.get_becs(atoms), self.get_polarisability(atoms)
        sigmas = thresholds = None
        if hasattr(self.model, "members"):  # an ensemble: high_uncertainty
            from mf_lightning.model.uncertainty import structure_sigmas

            spread = {k: self.results.get(k + "_std") for k in (keys.BECS, keys.POLARISABILITY, keys.POLARISATION)}
            sigmas, thresholds = structure_sigmas(spread, len(self.atoms)), self.model.thresholds()
        return response_flags(self.atoms.get_atomic_numbers(), becs=becs, polarisability=alpha,
                              training_elements=getattr(self.model, "training_elements", None),
                              untrained=bool(self.untrained_warnings), uncertainty=sigmas,
                              uncertainty_thresholds=thresholds)
