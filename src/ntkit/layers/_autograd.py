"""Gradients of infinite-width kernels with respect to inputs and layer parameters.

``net.kernel(x1, x2)`` is differentiable with respect to ``x1``, ``x2`` and every float
layer parameter passed as a tensor (``Dense(w_std=torch.tensor(1.5, requires_grad=True))``).
The forward pass is the ordinary planned, tiled, in-place computation (no autograd graph is
kept). The backward pass recomputes the kernel tile by tile with autograd recording (the
layers switch to out-of-place arithmetic while it records) and back-propagates each tile's
share of the output gradient at once, so the memory of a gradient is that of one tile's
graph, not of the whole kernel's (the strategy of activation checkpointing).

Conventions at non-smooth points: where two arguments are perfectly correlated (the batch
diagonal of ``kernel(x)``), arc-cosine kernels have an infinite partial derivative in the
covariance but a finite derivative along the diagonal; ntkit differentiates along it
(derivative 0 for the vanishing sine gap), which is the exact gradient of ``kernel(x)``.
Distinct ``x1`` and ``x2`` with identical rows sit on a genuine kink of such kernels.

Only first derivatives are supported (no double backward).
"""

from __future__ import annotations

import math
import threading

import torch

from ntkit.kernel import Kernel
from ntkit.layers._params import layer_hyperparameters, substituted
from ntkit.layers._spatial import transpose_pair
from ntkit.layers._tile import kernel_tile

__all__ = ["differentiable_kernel", "needs_grad"]

#: Kernel entries per tile in the backward pass (each tile keeps its autograd graph).
BACKWARD_TILE_ENTRIES = 2**18


def needs_grad(net, x1, x2) -> bool:
    """Whether autograd must track ``net.kernel(x1, x2)``."""
    if not torch.is_grad_enabled():
        return False
    for x in (x1, x2):
        if isinstance(x, torch.Tensor) and x.requires_grad:
            return True
    return bool(layer_hyperparameters(net))


def differentiable_kernel(compute, net, x1, x2, *, get, dtype, max_memory) -> Kernel:
    """``compute(net, x1, x2, ...)`` (the tiled driver) wrapped for autograd.

    Args:
        compute: The driver's ``compute_kernel``; called without autograd for the forward.
        net: The layer description.
        x1: ``(n1, *in_shape)`` tensor (may require grad).
        x2: ``(n2, *in_shape)`` tensor or ``None``.
        get: As in ``Layer.kernel``.
        dtype: As in ``Layer.kernel``.
        max_memory: As in ``Layer.kernel``.

    Returns:
        The :class:`Kernel` of ``compute``, whose tensors carry a ``grad_fn``.
    """
    from ntkit._validation import as_batch, check_same_features
    from ntkit.layers.graph import Graphs
    from ntkit.layers.masking import Masked
    from ntkit.settings import default_kernel_dtype

    if isinstance(x1, (Graphs, Masked)) or isinstance(x2, (Graphs, Masked)):
        raise TypeError(
            "gradients with respect to tensor-valued layer parameters are not available for "
            "ntkit.layers.Graphs or Masked inputs yet; pass the parameters as numbers "
            "(gradients with respect to the features themselves do work)."
        )

    dtype = default_kernel_dtype() if dtype is None else dtype
    if not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating dtype; got {dtype}.")
    x1c = as_batch(x1, "x1", dtype=dtype)
    x2c = None
    if x2 is not None and x2 is not x1:
        x2c = as_batch(x2, "x2", dtype=dtype, device=None)
        check_same_features(x1c, x2c)
    params = layer_hyperparameters(net)
    spec = _Spec(compute, net, get, dtype, max_memory, x2 is not None)
    spec.params = params
    outputs = _KernelFunction.apply(spec, x1c, x2c, *params)
    fields = dict(zip(spec.fields, outputs))
    cov2 = fields.get("cov2")
    if spec.cov2_is_cov1:
        cov2 = fields["cov1"]
    return spec.result.replace(
        nngp=fields["nngp"], ntk=fields.get("ntk"), cov1=fields["cov1"], cov2=cov2
    )


class _Spec:
    """What the autograd function needs besides tensors (filled in by its forward)."""

    def __init__(self, compute, net, get, dtype, max_memory, explicit_x2):
        self.compute = compute
        self.net = net
        self.get = get
        self.dtype = dtype
        self.max_memory = max_memory
        self.explicit_x2 = explicit_x2
        self.result: Kernel | None = None
        self.fields: tuple[str, ...] = ()
        self.cov2_is_cov1 = False
        self.params: list[torch.Tensor] = []  # the layers' own tensor attributes


class _KernelFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, spec: _Spec, x1, x2, *params):
        x1d = x1.detach()
        # x2 None: it is x1 (given explicitly, so cov2 is returned) or absent
        x2d = x2.detach() if x2 is not None else (x1d if spec.explicit_x2 else None)
        k = spec.compute(
            spec.net,
            x1d,
            x2d,
            get=spec.get,
            dtype=spec.dtype,
            max_memory=spec.max_memory,
        )
        spec.result = k
        fields = ["nngp", "cov1"]
        if k.ntk is not None:
            fields.insert(1, "ntk")
        # One tensor for both only when x2 is x1 itself; a separate x2 gets its own cov2.
        spec.cov2_is_cov1 = k.cov2 is not None and k.cov2 is k.cov1 and x2 is None
        if k.cov2 is not None and not spec.cov2_is_cov1:
            fields.append("cov2")
            if k.cov2 is k.cov1:
                k = k.replace(cov2=k.cov1.clone())
        spec.fields = tuple(fields)
        ctx.spec = spec
        ctx.symmetric = k.x1_is_x2
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(x1, x2, *params)
        return tuple(getattr(k, f) for f in fields)

    @staticmethod
    def backward(ctx, *grads):
        if torch.is_grad_enabled():  # create_graph=True: a second derivative was asked for
            raise RuntimeError(
                "ntkit kernels support first derivatives only: backward with "
                "create_graph=True (double backward, Hessians) is not available."
            )
        spec: _Spec = ctx.spec
        x1, x2, *_ = ctx.saved_tensors
        params = spec.params
        g = dict(zip(spec.fields, grads))
        want = (ctx.needs_input_grad[1], ctx.needs_input_grad[2])
        want_params = ctx.needs_input_grad[3:]
        grad_x1, grad_x2, grad_params = _backward(
            spec, x1, x2, params, g, ctx.symmetric, want, want_params
        )
        return (None, grad_x1, grad_x2, *grad_params)


def _backward(spec, x1, x2, params, g, symmetric, want, want_params):
    """Recompute tile by tile with autograd and accumulate the input/parameter gradients."""
    from ntkit._host import retained_heap, run_parallel
    from ntkit.layers._driver import default_workers
    from ntkit.layers._planner import TilePlan, tile_ranges
    from ntkit.layers._tile import TileLayout

    net = spec.net
    k = spec.result
    want_ntk = k.ntk is not None
    # x2 is None when it is x1 itself: tiles of the upper triangle, as in the forward. A
    # separate x2 (even one equal to x1) is a separate argument: all tiles, x1 against x2.
    same = x2 is None
    xb = x1 if same else x2
    tile_symmetric = symmetric and same
    grad_x1 = torch.zeros_like(x1) if want[0] else None
    grad_x2 = torch.zeros_like(x2) if (x2 is not None and want[1]) else None
    grad_params = [
        torch.zeros((), dtype=p.dtype, device=p.device) if w else None
        for p, w in zip(params, want_params)
    ]
    diagonal_spatial = net.input_layout(False)
    if isinstance(diagonal_spatial, list):
        diagonal_spatial = all(diagonal_spatial)
    diagonal_spatial = bool(diagonal_spatial) and x1.ndim > 2
    in_shape = tuple(x1.shape[1:])
    n1, n2 = x1.shape[0], xb.shape[0]
    n_sp_out = len(k.shape) - 1
    entries = max(1, math.prod(k.nngp.shape[2:]), _entries_in(x1, diagonal_spatial))
    side = max(1, math.isqrt(max(1, BACKWARD_TILE_ENTRIES // entries)))
    workers = default_workers(x1.device)
    if workers > 1:  # at least ~2 tiles per worker, so the workers share the work
        side = min(side, max(16, -(-max(n1, n2) // workers)))
    rows = min(n1, side)
    cols = min(n2, max(side, rows))
    plan = TilePlan(rows, cols, 0, 1)
    layout = TileLayout(in_shape, diagonal_spatial, want_ntk, tile_symmetric)

    def tile_grad(t, a0, a1, j0, j1):
        """The gradient of the loss with respect to one upper tile's output block."""
        if t is None:
            return None
        block = t[a0:a1, j0:j1]
        if not tile_symmetric:
            return block
        out = block.clone()
        c0 = a1 - j0 if j0 == a0 else 0
        if c0 > 0:  # the same-batch square was symmetrized: (B + B^T) / 2
            sq = block[:, :c0]
            out[:, :c0] = (sq + transpose_pair(sq, n_sp_out, k.diagonal_spatial)) / 2
        if c0 < j1 - j0:  # columns mirrored into the lower triangle
            mirrored = t[j0 + c0 : j1, a0:a1]
            out[:, c0:] += transpose_pair(mirrored, n_sp_out, k.diagonal_spatial)
        return out

    # Differentiate with respect to detached copies of the parameters (the Function maps the
    # gradients back onto the originals; a parameter derived from another is not counted twice).
    leaves = {id(p): p.detach().requires_grad_(w) for p, w in zip(params, want_params)}
    tracked = [leaves[id(p)] for p, w in zip(params, want_params) if w]
    lock = threading.Lock()

    def one_tile(a0, a1, j0, j1):
        gout = {
            "nngp": tile_grad(g.get("nngp"), a0, a1, j0, j1),
            "ntk": tile_grad(g.get("ntk"), a0, a1, j0, j1),
            "cov1": None,
            "cov2": None,
        }
        first_col = j0 == (a0 if tile_symmetric else 0)
        if first_col and g.get("cov1") is not None:
            gout["cov1"] = g["cov1"][a0:a1]
        if not tile_symmetric and a0 == 0 and g.get("cov2") is not None:
            gout["cov2"] = g["cov2"][j0:j1]
        if all(v is None for v in gout.values()):
            return
        with torch.enable_grad():
            xr = x1[a0:a1].detach().requires_grad_(want[0])
            xc = xb[j0:j1].detach().requires_grad_(want[0] if same else want[1])
            k_out = kernel_tile(net, xr, xc, layout, shift=a0 - j0)
            outs, gs = [], []
            for name, gt in gout.items():
                t = getattr(k_out, name)
                if gt is not None and t is not None and t.requires_grad:
                    outs.append(t)
                    gs.append(gt)
            if not outs:
                return
            inputs = [t for t in (xr, xc) if t.requires_grad] + tracked
            grads = list(torch.autograd.grad(outs, inputs, gs, allow_unused=True))
        gr = grads.pop(0) if xr.requires_grad else None
        gc = grads.pop(0) if xc.requires_grad else None
        with lock:  # tiles share rows and parameters
            if gr is not None:
                grad_x1[a0:a1] += gr
            if gc is not None:
                (grad_x1 if same else grad_x2)[j0:j1] += gc
            it = iter(grads)
            for i, w in enumerate(want_params):
                if w:
                    gi = next(it)
                    if gi is not None:
                        grad_params[i] = grad_params[i] + gi

    tiles = list(tile_ranges(n1, n2, plan, tile_symmetric))
    workers = min(workers, len(tiles))
    with substituted(net, leaves), retained_heap(x1.device.type == "cpu"):
        if workers <= 1:
            for t in tiles:
                one_tile(*t)
        else:
            run_parallel(one_tile, iter(tiles), workers)
    return grad_x1, grad_x2, grad_params


def _entries_in(x, diagonal_spatial: bool) -> int:
    spatial = math.prod(x.shape[2:]) if x.ndim > 2 else 1
    return spatial if diagonal_spatial else spatial * spatial
