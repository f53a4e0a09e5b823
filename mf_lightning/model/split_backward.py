"""e3nn tensor products whose higher derivatives do not zero-fill the edge tensor per irrep.

Why. e3nn 0.4.4 generates each ``TensorProduct`` as straight-line code that *slices* its flat
inputs into one piece per irrep (``x[:, a:b]``) and ``torch.cat``-s one output piece per path.
Autograd differentiates a slice into ``slice_backward``: a zero tensor of the *whole* input's
size with the piece copied in; and ``cat`` into slices, whose own derivative is again a
full-size zero tensor per piece. A first derivative (forces) therefore allocates and fills the
whole weight tensor once per path, and every derivative of a derivative (training on forces,
Z*, alpha) the whole edge message (n_edges x 40 x channels for L_max 1 / max_ell 3) once per
path: measured here, 40 % of a training step with Z*/alpha and 25 % of an E/F/S step went to
``aten::fill_`` (bench/RESULTS.md, profile).

What. :func:`install` regenerates each tensor product's code with e3nn's own code generator and
rewrites two things in the graph, leaving every arithmetic operation (and so every number) as it
was:

* the column slices of one input become one ``torch.split`` (its derivative is one ``cat``);
* the output ``cat`` becomes :func:`cat` below, whose derivative is a ``torch.split``.

The rewritten module replaces e3nn's TorchScript one in place and loads its constants (the
Wigner 3j buffers) from it, so state dicts, saved files and results are identical bit for bit
(checked by tests/unit/model/test_split_backward.py). It is plain eager PyTorch, so it also
copies, pickles and moves between devices like any module.
"""

from __future__ import annotations

import operator
from collections import defaultdict
from typing import Optional, Tuple

import torch
from e3nn.o3._tensor_product._codegen import codegen_tensor_product_left_right
from torch import fx

from mf_lightning._deps import o3

_MAIN = "_compiled_main_left_right"


class _CatSplitBackward(torch.autograd.Function):
    """``torch.cat`` whose backward is ``torch.split`` (differentiable, so double backward works)."""

    generate_vmap_rule = True  # is_grads_batched (vmapped Z*/alpha rows, Hessians) runs through it

    @staticmethod
    def forward(dim, *tensors):
        return torch.cat(tensors, dim)

    @staticmethod
    def setup_context(ctx, inputs, output):
        dim, *tensors = inputs
        ctx.dim = dim
        ctx.sizes = [t.shape[dim] for t in tensors]

    @staticmethod
    def backward(ctx, grad):
        return (None, *torch.split(grad, ctx.sizes, ctx.dim))


def cat(tensors, dim: int = 0) -> torch.Tensor:
    """``torch.cat(tensors, dim)`` with a split backward (see the module docstring)."""
    return _CatSplitBackward.apply(dim, *tensors)


def _column_slice(node: fx.Node) -> Optional[Tuple[int, int]]:
    """(start, stop) if ``node`` is ``x[:, start:stop]``."""
    if node.op != "call_function" or node.target is not operator.getitem or not isinstance(node.args[1], tuple):
        return None
    index = node.args[1]
    if len(index) == 2 and index[0] == slice(None) and isinstance(index[1], slice) and index[1].step in (None, 1) \
            and isinstance(index[1].stop, int):
        return index[1].start or 0, index[1].stop
    return None


def _width(node: fx.Node) -> Optional[int]:
    """The column count of ``x.reshape(..., width)`` (how e3nn flattens each input), else None."""
    if node.op == "call_method" and node.target == "reshape":
        last = node.args[-1]
        if isinstance(last, (tuple, list)):
            last = last[-1] if last else None
        if isinstance(last, int) and last > 0:
            return last
    return None


def rewrite(module: fx.GraphModule) -> fx.GraphModule:
    """Split-for-slices and :func:`cat`-for-``torch.cat`` in a generated tensor-product graph."""
    graph = module.graph
    slices = defaultdict(list)
    for node in list(graph.nodes):
        if node.op == "call_function" and node.target is torch.cat:
            node.target = cat
        span = _column_slice(node)
        if span is not None:
            slices[node.args[0]].append((node, span))
    for source, users in slices.items():
        width = _width(source)
        if width is None:
            continue  # not a flattened input whose width we know: leave its slices alone
        bounds = sorted({0, width, *(b for _, span in users for b in span)})
        with graph.inserting_after(source):
            pieces = graph.call_function(torch.split, (source, [b - a for a, b in zip(bounds, bounds[1:])]), {"dim": 1})
        for node, (start, stop) in users:
            i, j = bounds.index(start), bounds.index(stop)
            with graph.inserting_before(node):
                parts = [graph.call_function(operator.getitem, (pieces, k)) for k in range(i, j)]
                new = parts[0] if len(parts) == 1 else graph.call_function(cat, (parts,), {"dim": 1})
            node.replace_all_uses_with(new)
            graph.erase_node(node)
    graph.lint()
    module.recompile()
    return module


def install(model: torch.nn.Module) -> int:
    """Rewrite every e3nn ``TensorProduct`` in ``model`` in place; returns how many."""
    count = 0
    for tp in model.modules():
        if not isinstance(tp, o3.TensorProduct) or _MAIN not in getattr(tp, "__codegen__", ()):
            continue
        compiled = getattr(tp, _MAIN)
        fast = codegen_tensor_product_left_right(
            tp.irreps_in1, tp.irreps_in2, tp.irreps_out, tp.instructions,
            tp.shared_weights, tp._specialized_code, tp._optimize_einsums,
        )
        fast = rewrite(fast)
        reference = next(iter(compiled.buffers()), None)
        if reference is not None:
            fast = fast.to(device=reference.device, dtype=reference.dtype)
        fast.load_state_dict(compiled.state_dict())  # the very same constants, not recomputed ones
        # Out of e3nn's codegen list: e3nn would re-script it on pickling, which needs TorchScript.
        tp.__codegen__.remove(_MAIN)
        setattr(tp, _MAIN, fast)
        count += 1
    return count


def uninstall(model: torch.nn.Module) -> int:
    """Undo :func:`install` in place: every rewritten tensor product gets e3nn's own generated
    code back (TorchScript, registered the way e3nn registers it), with the same constants. For
    files that leave this package (a mace ``.model`` export, a LAMMPS TorchScript model), which
    must neither reference our module when unpickled nor contain autograd Functions that
    TorchScript cannot compile. Returns how many."""
    count = 0
    for tp in model.modules():
        if not isinstance(tp, o3.TensorProduct) or _MAIN in getattr(tp, "__codegen__", (_MAIN,)):
            continue
        fast = getattr(tp, _MAIN)
        original = codegen_tensor_product_left_right(
            tp.irreps_in1, tp.irreps_in2, tp.irreps_out, tp.instructions,
            tp.shared_weights, tp._specialized_code, tp._optimize_einsums,
        )
        reference = next(iter(fast.buffers()), None)
        if reference is not None:
            original = original.to(device=reference.device, dtype=reference.dtype)
        original.load_state_dict(fast.state_dict())
        delattr(tp, _MAIN)
        tp._codegen_register({_MAIN: original})
        count += 1
    return count
