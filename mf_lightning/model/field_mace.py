"""FieldMACE: a mace-torch model whose node features feel a uniform electric field.

``FieldMACE`` *holds* an unmodified mace-torch ``ScaleShiftMACE`` (its embedding, radial basis,
interaction, product, readout, scale-shift and multi-head blocks, with their weights) and adds
one :class:`~mf_lightning.model.coupling.FieldCoupling` per coupled layer. Its forward pass walks
the backbone's blocks in MACE's order and calls the coupling at the configured stage, so at
E = 0 it computes exactly what the backbone computes (``from_mace`` keeps every weight).

The scalar output is the electric enthalpy F(R, E); forces, stress, P, Z* and alpha are its
derivatives (:mod:`mf_lightning.model.observables`).
"""

from __future__ import annotations

from typing import Any, Dict, Iterable, List, Optional, Sequence

import numpy as np
import torch
from mace.modules.utils import prepare_graph
from mace.tools.scatter import scatter_sum

from mf_lightning._deps import o3
from mf_lightning.data import keys
from mf_lightning.errors import HeadError
from mf_lightning.model import coupling as cpl
from mf_lightning.model.observables import compute_observables, needs
from mf_lightning.model.split_backward import install as install_split_backward
from mf_lightning.utils import default_dtype, resolve_dtype


class FieldMACE(torch.nn.Module):
    """Field-aware MACE. Build with :func:`build_model`, :meth:`from_mace` or :func:`load_model`.

    Args:
        backbone: a mace-torch ``ScaleShiftMACE`` (plain ``MACE`` models are converted by
            :meth:`from_mace` to a ScaleShiftMACE with scale 1 and shift 0, which computes the
            same energy).
        backbone_config: the backbone's constructor arguments in JSON-able form (what
            :func:`mf_lightning.model.io.save_model` writes so the model can be rebuilt without pickle).
        form: coupling form, one of :func:`~mf_lightning.model.coupling.coupling_forms`.
        layers: indices of interaction layers that couple; ``None`` = every layer the form can
            couple (``residual_tp``: all but a scalar-only last layer, as in the paper;
            ``basis_tp``: all).
        l_in, l_out: L orders of the features entering the product with E, and of the product
            added back (``None`` = all).
        init: ``"zeros"`` or ``"random"``; ``init_scale`` scales the random init.
        field_order: 2 (default) adds the field-squared residual that makes alpha linear in its
            weights (learnable from W = 0, see :mod:`~mf_lightning.model.coupling`); 1 is the
            purely bilinear coupling.
        atomic_polarisabilities: a_Z per element (e A^2/V, in ``atomic_numbers`` order), the
            polarisability analogue of MACE's E0s: F gains -1/2 sum_i a_{Z_i} |E|^2, so alpha =
            (1/Omega) sum_i a_{Z_i} I + (what the network learns). Training fits them once to the
            training labels (non-negative least squares of Omega tr(alpha)/3 on composition,
            :func:`fit_atomic_polarisabilities`), so the network starts at the right eps_inf and
            learns the environment's part, as it learns energies on top of E0s. A fixed buffer;
            zeros (default, and for ``from_mace`` and ``form="none"``) leave F unchanged.
        atomic_charges: q_Z per element (e, in ``atomic_numbers`` order), the Born-charge analogue
            of the E0s and the atomic polarisabilities: F gains -E . sum_i q'_i r_i with
            q'_i = q_{Z_i} - <q_Z> (the mean over the structure's atoms), so Z*_i = q'_i I
            exactly, their sum is zero (acoustic sum rule) and the term is independent of the
            origin. Training fits them once (least squares of the diagonal Z* labels on the
            neutrality-projected composition, :func:`fit_atomic_charges`), so an untrained
            model already predicts the per-element Born-charge baseline and the network learns
            the environment's part. Zeros (default; ``from_mace``, ``form="none"``) leave F
            unchanged. Why a sum over positions and not a structure-factor (Berry-phase) form:
            see :func:`charge_enthalpy`.
        split_backward: rewrite e3nn's tensor products so that their higher derivatives do not
            zero-fill the edge tensor once per irrep (:mod:`~mf_lightning.model.split_backward`;
            the same numbers, bit for bit, in 0.7-0.8 of the time for a Z*/alpha step). False
            keeps e3nn's TorchScript code (benchmarks compare the two).
    """

    def __init__(
        self,
        backbone: torch.nn.Module,
        backbone_config: Dict[str, Any],
        form: str = cpl.DEFAULTS["form"],
        layers: Optional[Sequence[int]] = cpl.DEFAULTS["layers"],
        l_in: Optional[Sequence[int]] = cpl.DEFAULTS["l_in"],
        l_out: Optional[Sequence[int]] = cpl.DEFAULTS["l_out"],
        init: str = cpl.DEFAULTS["init"],
        init_scale: float = cpl.DEFAULTS["init_scale"],
        split_backward: bool = True,
        field_order: int = cpl.DEFAULTS["field_order"],
        atomic_polarisabilities: Optional[Sequence[float]] = None,
        atomic_charges: Optional[Sequence[float]] = None,
    ):
        super().__init__()
        if form not in cpl.coupling_forms():
            raise ValueError(f"unknown coupling form {form!r}; choose from {cpl.coupling_forms()}")
        if not hasattr(backbone, "scale_shift"):
            raise TypeError("FieldMACE needs a ScaleShiftMACE backbone; use FieldMACE.from_mace")
        self.backbone = backbone
        self.backbone_config = backbone_config
        n_layers = len(backbone.interactions)
        n_elements = len(backbone.atomic_numbers)
        a = torch.zeros(n_elements, dtype=torch.get_default_dtype())
        if atomic_polarisabilities is not None:
            a = torch.as_tensor(np.asarray(atomic_polarisabilities, dtype=float), dtype=a.dtype).reshape(-1)
            if a.numel() != n_elements:
                raise ValueError(f"atomic_polarisabilities has {a.numel()} values for {n_elements} elements")
            if form == "none" and bool((a != 0).any()):
                raise ValueError("coupling form 'none' is plain MACE (P = Z* = alpha = 0): no atomic polarisabilities")
        self.register_buffer("atomic_polarisabilities", a)
        q = torch.zeros(n_elements, dtype=torch.get_default_dtype())
        if atomic_charges is not None:
            q = torch.as_tensor(np.asarray(atomic_charges, dtype=float), dtype=q.dtype).reshape(-1)
            if q.numel() != n_elements:
                raise ValueError(f"atomic_charges has {q.numel()} values for {n_elements} elements")
            if not bool(torch.isfinite(q).all()):
                raise ValueError("atomic_charges must be finite")
            if form == "none" and bool((q != 0).any()):
                raise ValueError("coupling form 'none' is plain MACE (P = Z* = alpha = 0): no atomic charges")
        self.register_buffer("atomic_charges", q)
        self.couplings = torch.nn.ModuleDict()
        if form != "none":
            chosen = self._default_layers(form, l_in, l_out) if layers is None else list(layers)
            for t in chosen:
                if not 0 <= int(t) < n_layers:
                    raise ValueError(f"coupling layer {t} out of range: the model has {n_layers} layers")
                self.couplings[str(int(t))] = cpl.make_coupling(
                    form, self._stage_irreps(form, int(t)), l_in=l_in, l_out=l_out,
                    init=init, init_scale=init_scale, where=f"layer {t} ({form})", field_order=field_order,
                )
        self.coupling_config = {
            "form": form,
            "layers": sorted(int(t) for t in self.couplings.keys()),
            "l_in": None if l_in is None else [int(l) for l in l_in],
            "l_out": None if l_out is None else [int(l) for l in l_out],
            "init": init,
            "init_scale": float(init_scale),
            "field_order": int(field_order),
        }
        # {task: scale} of the unit-free loss that trained this model (set by training, saved in
        # the model file) so evaluation and fine-tuning measure losses the same way
        self.loss_scales: Optional[Dict[str, float]] = None
        # {head: [quantities it was trained on]} (set by training, saved in the model file):
        # lets a multi-head model name the head for P, Z* and alpha without guessing
        self.head_quantities: Optional[Dict[str, List[str]]] = None
        # {atomic number: training structures containing it} (set by training, saved in the model
        # file): an element seen in few or no training structures is flagged as extrapolation
        self.training_elements: Optional[Dict[int, int]] = None
        self.split_backward = bool(split_backward)
        # the backbone runs on cuEquivariance (use_cueq); saved files always hold e3nn weights
        self.cueq = False
        if split_backward:
            install_split_backward(self)

    def use_cueq(self, enabled: bool = True, fused: Optional[bool] = None) -> "FieldMACE":
        """Run the backbone on cuEquivariance (``enabled``) or on e3nn, in place, every weight kept
        (:func:`~mf_lightning.model.backbone.convert_backbone`); F, P, Z* and alpha are unchanged
        to round-off. The field coupling stays e3nn. ``fused``: mace's fused CUDA convolution
        (default: if the model is on a GPU). Returns the model."""
        from mf_lightning.model.backbone import convert_backbone

        if bool(enabled) != self.cueq:
            self.backbone = convert_backbone(self.backbone, bool(enabled), fused=fused)
            self.cueq = bool(enabled)
            if self.split_backward:  # the e3nn products left in the backbone (and new ones on the way back)
                install_split_backward(self)
        return self

    # ------------------------------------------------------------------ structure
    def _stage_irreps(self, form: str, t: int) -> o3.Irreps:
        if cpl.COUPLINGS[form].stage == "features":
            return o3.Irreps(str(self.backbone.products[t].linear.irreps_out))
        return o3.Irreps(str(self.backbone.interactions[t].target_irreps))

    def _default_layers(self, form, l_in, l_out) -> List[int]:
        layers = []
        for t in range(len(self.backbone.interactions)):
            try:
                cpl.make_coupling(form, self._stage_irreps(form, t), l_in=l_in, l_out=l_out)
                layers.append(t)
            except ValueError:
                continue
        if not layers:
            raise ValueError(f"coupling form {form!r} with l_in={l_in}, l_out={l_out} can couple no layer")
        return layers

    @property
    def atomic_numbers(self) -> List[int]:
        return [int(z) for z in self.backbone.atomic_numbers]

    @property
    def r_max(self) -> float:
        return float(self.backbone.r_max)

    @property
    def heads(self) -> List[str]:
        return list(self.backbone.heads)

    def resolve_head(self, head: Optional[str] = None, quantities: Iterable[str] = ()) -> str:
        """The head to use for ``quantities``: ``head`` if given (it must exist), the only head of
        a single-head model, or the one head trained on all of ``quantities`` (from
        ``head_quantities``). Anything else is ambiguous and raises, naming the heads and what
        each was trained on: a multi-head model never falls back to an arbitrary head (after
        ``finetune_replay`` the last head, ``replay``, never saw P, Z* or alpha)."""
        heads = self.heads
        if head is not None:
            if head not in heads:
                raise HeadError(f"head {head!r} is not one of the model's heads {heads}")
            return head
        if len(heads) == 1:
            return heads[0]
        trained = self.head_quantities or {}
        wanted = set(quantities)
        if wanted and trained:
            fit = [h for h in heads if wanted <= set(trained.get(h, ()))]
            if len(fit) == 1:
                return fit[0]
        described = "; ".join(f"{h!r} (trained on {', '.join(trained[h]) if trained.get(h) else 'unrecorded labels'})"
                              for h in heads)
        need = f" for {', '.join(sorted(wanted))}" if wanted else ""
        raise HeadError(f"this model has several heads: {described}. No single head was trained{need}: "
                         f"name one explicitly (head=..., --head, data.head=...)")

    def learned_quantities(self, head: Optional[str] = None) -> Optional[frozenset]:
        """The quantities ``head`` (default: :meth:`resolve_head`'s choice) was trained on, or None
        where the model does not say (built in Python, or a file of another tool). Recorded in
        ``head_quantities`` by training; for older single-head files, inferred from the stored
        loss scales (a task without labels got exactly 1.0 there: ``losses.label_scales``)."""
        head = self.resolve_head(head)
        recorded = self.head_quantities or {}
        if head in recorded:
            return frozenset(recorded[head])
        scales = self.loss_scales or {}
        if scales and len(self.heads) == 1:
            return frozenset(t for t, v in scales.items() if float(v) != 1.0)
        return None

    def check_learned(self, needed: Iterable[str], what: str, head: Optional[str] = None,
                      allow_untrained: bool = False) -> Optional[str]:
        """Stop (:class:`~mf_lightning.errors.UntrainedQuantityError`, one line naming the head
        and what it learned) if ``what`` needs quantities ``head`` never learned. With
        ``allow_untrained`` the same sentence is logged as a warning and returned, for the
        caller to write into its output's metadata; None when nothing is missing or the model
        does not record what it learned."""
        from mf_lightning.errors import UntrainedQuantityError

        head = self.resolve_head(head)
        learned = self.learned_quantities(head)
        missing = [q for q in needed if learned is not None and q not in learned]
        if not missing:
            return None
        message = (f"{what} needs {', '.join(missing)}, which head {head!r} never learned (it learned "
                   f"{', '.join(sorted(learned)) or 'nothing'}): its values would be meaningless")
        if not allow_untrained:
            raise UntrainedQuantityError(f"{message}; use a model trained on them, or --allow-untrained "
                                         "(allow_untrained=True) to compute them anyway")
        import logging

        logging.getLogger(__name__).warning("UNTRAINED: %s (allowed by --allow-untrained)", message)
        return f"untrained: {message}"

    @property
    def dtype(self) -> torch.dtype:
        return self.backbone.atomic_energies_fn.atomic_energies.dtype

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        data: Dict[str, torch.Tensor],
        properties: Iterable[str] = (keys.ENERGY, keys.FORCES),
        training: bool = False,
        batched_response: bool = False,
    ) -> Dict[str, torch.Tensor]:
        """Electric enthalpy and the requested derivatives for a batch (mace-torch dict).

        The field is ``data[keys.ELECTRIC_FIELD]`` (n_graphs, 3) in V/A, zero if absent.
        Only the derivatives that ``properties`` need are built.
        """
        properties = tuple(properties)
        need = needs(properties)
        data = dict(data)  # prepare_graph rewrites positions/shifts; keep the caller's batch intact
        n_graphs = int(data[keys.PTR].numel() - 1)
        pos = data[keys.POSITIONS]
        field = data.get(keys.ELECTRIC_FIELD)
        if field is None:
            field = torch.zeros(n_graphs, 3, dtype=pos.dtype, device=pos.device)
        field = field.reshape(n_graphs, 3).to(pos.dtype)
        if need["field"] and not field.requires_grad:
            field = field.detach().clone().requires_grad_(True)
        ctx = prepare_graph(data, compute_displacement=need["strain"])
        energy = self._enthalpy(data, ctx, field)
        volume = torch.linalg.det(ctx.cell.view(-1, 3, 3)).abs()
        if (need["field"] or need["strain"]) and not bool((volume > 0).all()):
            if not bool((volume > 0).any()):
                raise ValueError("no structure of the batch has a periodic cell: stress, P, Z* and alpha need a "
                                 "periodic structure with a non-singular cell")
            # A molecule with E/F labels batched with crystals (the loader reads response and
            # stress labels only for 3D-periodic frames, so it has none): its per-volume outputs
            # are set to 0 through an infinite volume instead of stopping the whole batch.
            volume = torch.where(volume > 0, volume, torch.full_like(volume, float("inf")))
        out = {keys.ENERGY: energy, keys.VOLUME: volume}
        out.update(
            compute_observables(
                energy, ctx.positions, ctx.displacement, field, volume,
                properties=[p for p in properties if p != keys.ENERGY],
                training=training, batched=batched_response,
            )
        )
        return out

    def _enthalpy(self, data, ctx, field: torch.Tensor) -> torch.Tensor:
        """F(R, E) per structure: ScaleShiftMACE's energy with the coupling inserted."""
        bb = self.backbone
        num_graphs = ctx.num_graphs
        batch = data[keys.BATCH]
        arange = ctx.num_atoms_arange.to(torch.int64)
        node_heads = ctx.node_heads.to(torch.int64)
        node_attrs = data[keys.NODE_ATTRS]
        field_irrep = cpl.field_to_irrep(field)[batch]  # per node, e3nn 1o basis

        node_e0 = bb.atomic_energies_fn(node_attrs)[arange, node_heads]
        e0 = scatter_sum(src=node_e0, index=batch, dim=0, dim_size=num_graphs).to(ctx.vectors.dtype)
        node_feats = bb.node_embedding(node_attrs)
        edge_attrs = bb.spherical_harmonics(ctx.vectors)
        edge_feats, cutoff = bb.radial_embedding(ctx.lengths, node_attrs, data[keys.EDGE_INDEX], bb.atomic_numbers)
        if hasattr(bb, "pair_repulsion"):
            pair_node_energy = bb.pair_repulsion_fn(ctx.lengths, node_attrs, data[keys.EDGE_INDEX], bb.atomic_numbers)
        else:
            pair_node_energy = torch.zeros_like(node_e0)
        if hasattr(bb, "joint_embedding"):
            feats = {name: data[name] for name in bb.embedding_specs}
            node_feats = node_feats + bb.joint_embedding(batch, feats)
            if hasattr(bb, "embedding_readout"):
                emb_e = bb.embedding_readout(node_feats, node_heads)[arange, node_heads].squeeze(-1)
                e0 = e0 + scatter_sum(src=torch.atleast_1d(emb_e), index=batch, dim=0, dim_size=num_graphs)

        node_feats_list = []
        for t, (interaction, product) in enumerate(zip(bb.interactions, bb.products)):
            coupling = self.couplings[str(t)] if str(t) in self.couplings else None
            node_feats, sc = interaction(
                node_attrs=node_attrs, node_feats=node_feats, edge_attrs=edge_attrs,
                edge_feats=edge_feats, edge_index=data[keys.EDGE_INDEX], cutoff=cutoff,
                first_layer=(t == 0),
            )
            if coupling is not None and coupling.stage == "basis":
                node_feats = coupling(node_feats, field_irrep)
            node_feats = product(node_feats=node_feats, sc=sc, node_attrs=node_attrs)
            if coupling is not None and coupling.stage == "features":
                node_feats = coupling(node_feats, field_irrep)
            node_feats_list.append(node_feats)

        node_es_list = [pair_node_energy]
        for t, readout in enumerate(bb.readouts):
            feat_idx = -1 if len(bb.readouts) == 1 else t
            node_es_list.append(readout(node_feats_list[feat_idx], node_heads)[arange, node_heads])
        node_inter_es = bb.scale_shift(torch.sum(torch.stack(node_es_list, dim=0), dim=0), node_heads)
        inter_e = scatter_sum(node_inter_es, batch, dim=-1, dim_size=num_graphs)
        # -1/2 a_Z |E|^2 per atom: the fitted atomic polarisabilities (zero at E = 0)
        node_a = node_attrs.to(self.atomic_polarisabilities.dtype) @ self.atomic_polarisabilities
        pol_e = -0.5 * scatter_sum(node_a.to(field.dtype), batch, dim=-1, dim_size=num_graphs) * (field * field).sum(-1)
        charge_e = charge_enthalpy(node_attrs, ctx.positions, field, batch, num_graphs, self.atomic_charges)
        return e0 + inter_e + pol_e + charge_e

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_mace(
        cls,
        model_or_path,
        form: str = cpl.DEFAULTS["form"],
        layers: Optional[Sequence[int]] = cpl.DEFAULTS["layers"],
        l_in: Optional[Sequence[int]] = cpl.DEFAULTS["l_in"],
        l_out: Optional[Sequence[int]] = cpl.DEFAULTS["l_out"],
        init: str = cpl.UPGRADE_INIT,
        init_scale: float = cpl.DEFAULTS["init_scale"],
        allow_pickle: bool = False,
        dtype: Optional[str] = None,
        heads: Optional[Sequence[str]] = None,
        field_order: int = cpl.DEFAULTS["field_order"],
    ) -> "FieldMACE":
        """Upgrade a mace-torch ``MACE``/``ScaleShiftMACE`` (single- or multi-head).

        Every weight is kept (the source module is deep-copied, not rebuilt), so at E = 0 the
        result reproduces the source's energies, forces and stresses. ``model_or_path`` may be a
        module or a mace ``.model`` file, read by a restricted loader that runs no code from the
        file (:func:`~mf_lightning.model.backbone.load_mace_pickle`); ``allow_pickle=True``
        unpickles it plainly, only for a trusted file that loader refuses. ``heads``: give a single-head
        source several heads (e.g. replay / dielectric / ferroelectric), each starting as a copy.
        """
        from mf_lightning.model.backbone import backbone_config_of, load_mace_pickle, with_heads

        if isinstance(model_or_path, torch.nn.Module):
            source = model_or_path
        else:
            source = load_mace_pickle(model_or_path, allow_pickle=allow_pickle)
        backbone, config = backbone_config_of(source)
        if heads is not None and list(heads) != list(backbone.heads):
            backbone, config = with_heads(backbone, config, heads)
        if dtype is not None:
            backbone = backbone.to(resolve_dtype(dtype))
        with default_dtype(backbone.atomic_energies_fn.atomic_energies.dtype):
            model = cls(backbone, config, form=form, layers=layers, l_in=l_in, l_out=l_out,
                        init=init, init_scale=init_scale, field_order=field_order)
        # what the source learned: its field coupling has learned nothing yet (fine-tuning records
        # its own), so P, Z* and alpha of an upgraded model are refused like any untrained head's
        model.head_quantities = {h: ["energy", "forces", "stress"] for h in model.heads}
        return model.to(backbone.atomic_energies_fn.atomic_energies.dtype)


def charge_enthalpy(node_attrs: torch.Tensor, positions: torch.Tensor, field: torch.Tensor,
                    batch: torch.Tensor, num_graphs: int, charges: torch.Tensor) -> torch.Tensor:
    """-E . sum_i q'_i r_i per structure, with q'_i = q_{Z_i} minus the structure's mean charge.

    Its derivatives are the per-element Born-charge baseline, exactly: Z*_i = q'_i I (so
    sum_i Z*_i = 0), no contribution to alpha, forces q'_i E; P gains (1/Omega) sum_i q'_i r_i,
    independent of the origin because sum_i q'_i = 0, and co-rotating with the structure.

    Why not the structure-factor (Berry-phase) form of latent-charge models, which is periodic
    under wrapping an atom: no smooth F can give a constant fractional Z* = q I *and* change P
    by a whole quantum when one atom is carried through the cell by a lattice vector a (the
    integral of Z* along that path is q a, a quantum only for integer q). The structure-factor
    forms pay for periodicity with the baseline itself: Omega P = sum_k a_k/(2 pi) arg S_k
    (S_k = sum_i q_i exp(i G_k . r_i)) has sum_i Z*_i = I (it is the position of one unit
    charge, breaking the acoustic sum rule), and Im S_k / |G_k| gives Z*_i = q_i cos(G_k . r_i),
    zero for atoms at a quarter of the cell. So this term keeps Z* exact and P single-valued and
    smooth in the positions as given: along any path (MD, a distortion path, a relaxation) P
    changes continuously and exactly by sum_i Z*_i dr_i; only re-wrapping an atom into the cell
    by a lattice vector a shifts the absolute P, by q'_i a / Omega. Data sets labelled with
    absolute P modulo the quantum (the ferroelectric paths) are therefore trained without it
    (the ferroelectric presets keep q = 0); Z*, alpha, eps and P differences never depend on it.
    """
    if not bool((charges != 0).any()):
        return torch.zeros(num_graphs, dtype=field.dtype, device=field.device)
    node_q = node_attrs.to(charges.dtype) @ charges
    ones = torch.ones_like(node_q)
    mean_q = scatter_sum(node_q, batch, dim=-1, dim_size=num_graphs) / scatter_sum(ones, batch, dim=-1,
                                                                                      dim_size=num_graphs)
    q = (node_q - mean_q[batch]).to(positions.dtype)
    dipole = scatter_sum(q.unsqueeze(-1) * positions, batch, dim=0, dim_size=num_graphs)
    return -(dipole * field.to(positions.dtype)).sum(-1)


def fit_atomic_charges(graphs, n_elements: int, ridge: float = 1e-6) -> Optional[np.ndarray]:
    """q_Z per element (e): least squares of every labelled atom's tr(Z*)/3 on its structure's
    neutrality-projected composition (row i: onehot_i - mean of the structure's onehots), the
    per-element Born-charge baseline that :func:`charge_enthalpy` then reproduces exactly.

    The projection removes a common constant (q_Z + c gives the same charges), so the minimum-
    norm solution is taken, with a tiny ridge for elements seen in one structure only; elements
    never labelled get 0. None if no graph has a Z* label."""
    rows, targets = [], []
    for g in graphs:
        if float(g["weight_becs"]) <= 0:
            continue
        onehot = g[keys.NODE_ATTRS].double().numpy()
        z = g["ref_becs"].double().reshape(-1, 3, 3)
        rows.append(onehot - onehot.mean(0, keepdims=True))
        targets.append(torch.diagonal(z, dim1=-2, dim2=-1).mean(-1).numpy())
    if not rows:
        return None
    A, b = np.concatenate(rows), np.concatenate(targets)
    present = np.abs(A).sum(0) > 0
    q = np.zeros(n_elements)
    Ap = A[:, present]
    # min-norm ridge solution: (A^T A + ridge I)^-1 A^T b, well posed on the projected null space
    q[present] = np.linalg.solve(Ap.T @ Ap + ridge * np.eye(Ap.shape[1]), Ap.T @ b)
    return q


def fit_atomic_polarisabilities(graphs, n_elements: int) -> Optional[np.ndarray]:
    """a_Z >= 0 per element (e A^2/V) with Omega tr(alpha)/3 ~ sum_Z n_Z a_Z over the graphs
    that carry an alpha label (non-negative least squares; elements never seen get 0). None if
    no graph has an alpha label."""
    from scipy.optimize import nnls

    rows, targets = [], []
    for g in graphs:
        if float(g["weight_polarisability"]) <= 0:
            continue
        counts = g[keys.NODE_ATTRS].double().sum(0).numpy()
        volume = abs(float(torch.linalg.det(g[keys.CELL].double().reshape(3, 3))))
        alpha = g["ref_polarisability"].double().reshape(3, 3)
        rows.append(counts)
        targets.append(volume * float(torch.diagonal(alpha).sum()) / 3.0)
    if not rows:
        return None
    A, b = np.array(rows), np.array(targets)
    present = A.sum(0) > 0
    a = np.zeros(n_elements)
    a[present] = nnls(A[:, present], b)[0]
    return a
