"""How a uniform electric field enters MACE's equivariant node features.

The field E (V/A, one 3-vector per structure) is an l=1, odd-parity irrep (``1x1o``). Each form
below is a residual that is *bilinear* in (features, E), so it vanishes identically at E = 0:
an upgraded MACE checkpoint keeps its zero-field energies and forces exactly, whatever the
coupling weights are.

Forms (the ablation axis ``model.coupling.form``):

``none``
    Plain MACE. F does not depend on E, so P, Z* and alpha are identically zero.

``residual_tp`` (the paper's)
    After the product block of a coupled layer,
    ``h~ = h + W(h (x) E)``: a channel-wise Clebsch-Gordan product of the selected irreps of h
    with E, then an irrep-wise linear map W mixing channels back into h's irreps. Readouts and
    later layers see h~. Because h~ is linear in E at that layer, the field reaches the energy
    with E-powers > 1 only through later layers; and because MACE's last layer keeps only
    scalars (``0e (x) 1o`` has no ``0e`` output), that layer cannot be coupled this way.

``basis_tp`` (ours; the richer variant)
    The same residual, applied to the many-body atomic basis A (the interaction block's output)
    *before* the symmetric contraction: ``A~ = A + W(A (x) E)``. The product block then raises
    A~ to powers up to the correlation order nu, so a single layer already carries E-dependence
    up to E^nu (genuine nonlinear, environment-dependent polarisability from one layer, in the
    spirit of Allegro-pol where the field is an input of the many-body features), and it works on
    every layer including the last, whose A still has all L <= max_ell even though its output is
    scalar-only. Cost: one extra channel-wise TP on A per coupled layer.

Which L orders take part is configurable: ``l_in`` (L's of the features entering the product with
E) and ``l_out`` (L's of the product that are added back). ``init`` is ``zeros`` (W = 0: an
upgraded foundation model starts exactly at its zero-field behaviour for *all* E) or ``random``
(e3nn's default init scaled by ``init_scale``).

The field-squared term (``field_order=2``, the default)
    Every form above is bilinear in (x, E), so the polarisability alpha = d^2F/dE^2 is at least
    *quadratic* in the coupling weights W: at W = 0 a loss on alpha has exactly zero gradient
    (a saddle), and even from a small random W it starts with a gradient of order W. A
    factorised W = A B (one factor zero, the other random, as in LoRA) does not help: alpha is
    then quadratic in A, and its gradient at A = 0 is again exactly zero (checked by
    ``tests/unit/model/test_coupling_gradients.py``). What does help is a residual that is
    quadratic in E but *linear* in its own weights:

        x~ = x + W1(x (x) E) + W2(x (x) [E (x) E])

    with [E (x) E] = (|E|^2 as 0e, E's l=2 part as 2e), the symmetric square of the field. W2
    enters alpha linearly (on the scalars it is a per-atom, environment-dependent isotropic
    polarisability; through the L>0 features and later layers it is anisotropic), so alpha has
    a gradient from the first step even at W1 = W2 = 0, and an upgraded foundation model
    (``init: zeros``) still starts exactly at its zero-field behaviour for every E. Measured on
    alpha-quartz (experiments/README.md, "learning every label"): without it alpha's loss did
    not move in the quickstart (eps_inf 0.99); with it eps_inf is learned. ``field_order=1``
    keeps the purely bilinear coupling (models saved before the term existed load as such).
"""

from __future__ import annotations

import math
from typing import Iterable, Optional, Sequence

import torch
from mace.modules.irreps_tools import reshape_irreps, tp_out_irreps_with_instructions

from mf_lightning._deps import o3

FIELD_IRREPS = o3.Irreps("1x1o")
INIT_MODES = ("zeros", "random")
# The one source of the coupling's defaults: FieldMACE, build_model and conf/model/coupling/*.yaml
# (checked by tests/unit/model/test_coupling.py) use these. ``init`` is for a model trained
# from scratch; an upgraded checkpoint (FieldMACE.from_mace) starts from UPGRADE_INIT, so it
# keeps the source's zero-field behaviour for every E.
DEFAULTS = {"form": "residual_tp", "layers": None, "l_in": None, "l_out": None, "init": "random",
            "init_scale": 1e-2, "field_order": 2}
UPGRADE_INIT = "zeros"
FIELD_SQUARED_IRREPS = o3.Irreps("1x0e + 1x2e")


def field_to_irrep(field: torch.Tensor) -> torch.Tensor:
    """Cartesian field (..., 3) -> the ``1o`` basis of MACE's edge spherical harmonics.

    Taking it from e3nn's own l=1 harmonic (linear for l=1) keeps E in whatever component order
    and sign convention the node features use, rather than assuming one. Norm-preserving."""
    return o3.spherical_harmonics(1, field, normalize=False, normalization="component") / math.sqrt(3.0)


class FieldSquare(torch.nn.Module):
    """``E -> [E (x) E]`` as ``0e + 2e`` (the symmetric square; its ``1e`` part vanishes)."""

    def __init__(self):
        super().__init__()
        self.tp = o3.TensorProduct(FIELD_IRREPS, FIELD_IRREPS, FIELD_SQUARED_IRREPS,
                                   [(0, 0, 0, "uuu", False), (0, 0, 1, "uuu", False)])

    def forward(self, field_irrep: torch.Tensor) -> torch.Tensor:
        return self.tp(field_irrep, field_irrep)


def _selected(irreps: o3.Irreps, ls: Optional[Iterable[int]]) -> list[int]:
    keep = None if ls is None else {int(l) for l in ls}
    return [i for i, (_, ir) in enumerate(irreps) if keep is None or ir.l in keep]


class FieldTensorProduct(torch.nn.Module):
    """``x -> W1(x[l_in] (x) E)[l_out] (+ W2(x[l_in] (x) [E (x) E])[l_out])``: the residual
    shared by every form.

    Channel-wise ('uvu') Clebsch-Gordan products of the selected irreps of x with the field (and,
    for ``field_order=2``, with its symmetric square), then irrep-wise e3nn ``Linear`` maps back
    to ``irreps`` (channels mix, irreps do not). Both terms vanish at E = 0.
    """

    def __init__(
        self,
        irreps: o3.Irreps,
        l_in: Optional[Sequence[int]] = None,
        l_out: Optional[Sequence[int]] = None,
        init: str = DEFAULTS["init"],
        init_scale: float = DEFAULTS["init_scale"],
        where: str = "",
        field_order: int = DEFAULTS["field_order"],
    ):
        super().__init__()
        if field_order not in (1, 2):
            raise ValueError(f"coupling field_order must be 1 or 2, got {field_order!r}")
        if init not in INIT_MODES:
            raise ValueError(f"coupling init must be one of {INIT_MODES}, got {init!r}")
        irreps = o3.Irreps(irreps)
        self.irreps = irreps
        self.in_idx = _selected(irreps, l_in)
        irreps_in = o3.Irreps([irreps[i] for i in self.in_idx])
        target = o3.Irreps([irreps[i] for i in _selected(irreps, l_out)])
        irreps_mid, instructions = tp_out_irreps_with_instructions(irreps_in, FIELD_IRREPS, target)
        if len(instructions) == 0:
            raise ValueError(
                f"field coupling {where}: features {irreps} restricted to l_in={l_in} give no "
                f"product with the field (1x1o) into l_out={l_out}. Parity and |l1-l2|<=l<=l1+l2 "
                "rule it out (e.g. MACE's last layer is scalar-only: use form 'basis_tp' there, "
                "or do not couple that layer)."
            )
        # Weights live in the linear map W, not in the product (has_weight=False).
        instructions = [(i, j, k, "uvu", False) for i, j, k, _, _ in instructions]
        self.tp = o3.TensorProduct(irreps_in, FIELD_IRREPS, irreps_mid, instructions)
        self.linear = o3.Linear(irreps_mid, irreps, internal_weights=True, shared_weights=True)
        linears = [self.linear]
        self.square = None
        mid2, instr2 = tp_out_irreps_with_instructions(irreps_in, FIELD_SQUARED_IRREPS, target)
        if field_order == 2 and instr2:  # (no path, e.g. l_in=[1] into l_out=[0]: bilinear only)
            instr2 = [(i, j, k, "uvu", False) for i, j, k, _, _ in instr2]
            self.square = FieldSquare()
            self.tp2 = o3.TensorProduct(irreps_in, FIELD_SQUARED_IRREPS, mid2, instr2)
            self.linear2 = o3.Linear(mid2, irreps, internal_weights=True, shared_weights=True)
            linears.append(self.linear2)
        with torch.no_grad():
            for linear in linears:
                if init == "zeros":
                    linear.weight.zero_()
                else:
                    linear.weight.mul_(init_scale)
        slices = irreps.slices()
        self._full = len(self.in_idx) == len(irreps)
        self.register_buffer(
            "in_columns",
            torch.cat([torch.arange(slices[i].start, slices[i].stop) for i in self.in_idx]),
            persistent=False,
        )

    def forward(self, x: torch.Tensor, field_irrep: torch.Tensor) -> torch.Tensor:
        x_in = x if self._full else x.index_select(-1, self.in_columns)
        out = self.linear(self.tp(x_in, field_irrep))
        if self.square is not None:
            out = out + self.linear2(self.tp2(x_in, self.square(field_irrep)))
        return out


STAGES = ("features", "basis")
COUPLINGS: dict = {}  # form name -> FieldCoupling subclass, filled as the classes are defined


def coupling_forms() -> tuple:
    """Every form: ``none`` (plain MACE) and each registered :class:`FieldCoupling` subclass."""
    return ("none", *COUPLINGS)


def __getattr__(name):  # COUPLING_FORMS stays current when a form is registered later
    if name == "COUPLING_FORMS":
        return coupling_forms()
    raise AttributeError(name)


class FieldCoupling(torch.nn.Module):
    """Base class: one coupling block for one interaction layer.

    ``stage`` says where ``FieldMACE`` calls it: ``"features"`` (node features after the
    product block, flat e3nn layout) or ``"basis"`` (the atomic basis A before the product,
    MACE's ``[n_nodes, channels, sum(2L+1)]`` layout).
    """

    stage: str = "features"
    form: str = ""

    def __init_subclass__(cls, **kwargs):
        """A subclass that names its ``form`` is a coupling form: registered in
        :data:`COUPLINGS`, so configs, FieldMACE and the tests (parametrised over the registry)
        know it with no other edit. Its ``stage`` says where FieldMACE calls it."""
        super().__init_subclass__(**kwargs)
        if cls.form:
            if cls.stage not in STAGES:
                raise TypeError(f"coupling form {cls.form!r}: stage must be one of {STAGES}, not {cls.stage!r}")
            COUPLINGS[cls.form] = cls

    def forward(self, x: torch.Tensor, field_irrep: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError


class ResidualTPCoupling(FieldCoupling):
    """The paper's coupling, after the product block: ``h~ = h + W(h (x) E)``."""

    stage = "features"
    form = "residual_tp"

    def __init__(self, irreps: o3.Irreps, **kwargs):
        super().__init__()
        self.residual = FieldTensorProduct(irreps, **kwargs)

    def forward(self, x: torch.Tensor, field_irrep: torch.Tensor) -> torch.Tensor:
        return x + self.residual(x, field_irrep)


class BasisTPCoupling(FieldCoupling):
    """Field into the atomic basis before the symmetric contraction: ``A~ = A + W(A (x) E)``."""

    stage = "basis"
    form = "basis_tp"

    def __init__(self, irreps: o3.Irreps, **kwargs):
        super().__init__()
        irreps = o3.Irreps(irreps)
        self.residual = FieldTensorProduct(irreps, **kwargs)
        self.to_channels = reshape_irreps(irreps)  # flat -> [n, mul, dim], as MACE's interaction
        self._blocks = [(mul, ir.dim) for mul, ir in irreps]

    def _flatten(self, a: torch.Tensor) -> torch.Tensor:
        """Inverse of ``reshape_irreps``: [n, mul, sum(dim)] -> flat e3nn [n, sum(mul*dim)]."""
        out, ix = [], 0
        for mul, dim in self._blocks:
            out.append(a[:, :, ix : ix + dim].reshape(a.shape[0], mul * dim))
            ix += dim
        return torch.cat(out, dim=-1)

    def forward(self, x: torch.Tensor, field_irrep: torch.Tensor) -> torch.Tensor:
        return x + self.to_channels(self.residual(self._flatten(x), field_irrep))


def make_coupling(form: str, irreps: o3.Irreps, **kwargs) -> FieldCoupling:
    if form not in COUPLINGS:
        raise ValueError(f"unknown coupling form {form!r}; choose from {coupling_forms()}")
    return COUPLINGS[form](irreps, **kwargs)
