"""No silent NaN, Inf or precision loss in infinite-width kernels.

Two cheap checks around the tiled computation:

- :func:`check_input_scale` before it: the input covariances ``x . x / d`` must be normal
  floating-point numbers (``x * 1e-160`` squares into the subnormal range, where float64
  keeps only a few digits; ``x * 1e160`` overflows);
- :func:`check_finite_kernel` after it: one sum over the result (an ``isfinite`` scan only
  when that sum is not finite); a non-finite entry is traced back through the network, one
  pair, layer by layer, and the error names the first layer where it appeared.
"""

from __future__ import annotations

import math

import torch

from ntkit.kernel import Kernel

__all__ = ["check_finite_kernel", "check_input_scale"]


def check_input_scale(x: torch.Tensor, name: str) -> None:
    """Raise ``ValueError`` when ``x``'s squared norms leave the normal floating-point range.

    Args:
        x: ``(n, ...)`` inputs in the arithmetic dtype.
        name: ``"x1"`` or ``"x2"``.
    """
    info = torch.finfo(x.dtype)
    flat = x.detach().reshape(x.shape[0], -1)
    row_max = flat.abs().amax(dim=1)  # (n,)
    big = float(row_max.max())
    if big == 0:
        return
    features = flat.shape[1]
    if big * big > info.max / max(features, 1):
        raise ValueError(
            f"{name} has entries up to {big:.3g}: their squares overflow {x.dtype} (largest "
            f"{info.max:.3g}), so the input covariance x . x / d is infinite. Rescale the "
            "inputs (kernels of positively homogeneous networks scale exactly), or use "
            "dtype=torch.float64."
        )
    # a sample whose largest entry squared is below tiny / eps has a subnormal variance
    small = torch.where(row_max > 0, row_max, torch.full_like(row_max, math.inf))
    i = int(small.argmin())
    if float(small[i]) ** 2 < info.tiny / info.eps:
        raise ValueError(
            f"{name}[{i}] has entries of at most {float(small[i]):.3g}: their squares fall "
            f"below {info.tiny / info.eps:.3g}, where {x.dtype} loses precision (subnormal "
            "numbers), so its covariances x . x / d would be inaccurate. Rescale the inputs "
            "(kernels of positively homogeneous networks scale exactly)."
        )


def check_finite_kernel(net, k: Kernel, x1: torch.Tensor, x2: torch.Tensor, layout) -> None:
    """Raise ``ValueError`` naming the first layer with NaN/Inf if ``k`` has any.

    Args:
        net: The layer description.
        k: The computed kernel.
        x1: ``(n1, ...)`` inputs as computed.
        x2: ``(n2, ...)`` inputs as computed.
        layout: The computation's :class:`~ntkit.layers._tile.TileLayout`.
    """
    for field in ("nngp", "ntk"):
        t = getattr(k, field)
        if t is None:
            continue
        # one reduction, no n1 x n2 temporary: a sum is finite when every entry is (NaN and
        # Inf propagate); only a non-finite sum (or one that overflowed) needs the exact scan
        if math.isfinite(float(t.sum())):
            continue
        finite = torch.isfinite(t)
        if bool(finite.all()):
            continue
        bad = (~finite).nonzero()[0]
        i, j = int(bad[0]), int(bad[1])
        n_nan, n_inf = int(torch.isnan(t).sum()), int(torch.isinf(t).sum())
        where = _first_bad_layer(net, x1[i : i + 1], x2[j : j + 1], layout)
        raise ValueError(
            f"the kernel's {field} has {n_nan} NaN and {n_inf} Inf entries (first at pair "
            f"({i}, {j})); {where}. Rescale the inputs or the layer parameters (w_std, b_std), "
            "or use float64."
        )


def _first_bad_layer(net, x1, x2, layout) -> str:
    """Recompute one pair layer by layer; describe where the kernel first stops being finite."""
    from ntkit.layers._tile import input_covariance, input_kernel, input_variances
    from ntkit.layers.combinators import Serial

    ds = layout.diagonal_spatial
    plain = type(layout)(layout.in_shape, ds, layout.want_ntk, False)
    var1, var2 = input_variances(x1, ds), input_variances(x2, ds)
    cov = input_covariance(x1, x2, ds)
    if layout.symmetric and torch.equal(x1, x2) and (x1.ndim == 2 or ds):
        cov = var1.unsqueeze(1).clone()  # a sample with itself: exact, as in the tiles
    k = input_kernel(cov, var1, var2, plain, x1_is_x2=False, shift=0)
    if not _finite(k):
        return "the input covariance x1 . x2 / d itself is not finite"
    layers = net.layers if isinstance(net, Serial) else (net,)
    for index, layer in enumerate(layers):
        before = k
        with torch.no_grad():
            k = layer.apply_kernel(k)
        if not _finite(k):
            largest = _largest(before)
            return (
                f"they first appear in layer {index} ({layer!r}) of the network, whose input "
                f"kernel is finite (largest magnitude {largest:.3g})"
            )
    return "they appear when the layers' results are combined"


def _tensors(k):
    kernels = k if isinstance(k, list) else [k]
    for ki in kernels:
        for t in (ki.nngp, ki.ntk, ki.cov1, ki.cov2):
            if t is not None:
                yield t


def _finite(k) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in _tensors(k))


def _largest(k) -> float:
    return max(float(t.abs().max()) for t in _tensors(k))
