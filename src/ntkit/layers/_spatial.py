"""Index helpers for kernels with spatial axes.

Layouts (``S`` spatial axes, e.g. ``S = 2`` for images):

- full: ``nngp`` is ``(n1, n2, H, H', W, W')`` (one pair of axes per spatial axis) and
  ``cov1`` is ``(n1, H, H', W, W')``;
- diagonal (``diagonal_spatial``): ``nngp`` is ``(n1, n2, H, W)``, ``cov1`` is ``(n1, H, W)``;
- no spatial axes: ``nngp`` is ``(n1, n2)``, ``cov1`` is ``(n1,)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ntkit.errors import LayerSpecError
from ntkit.kernel import Kernel


def map_covariances(k: Kernel, fn, **changes) -> Kernel:
    """``k`` with ``fn(t, 2)`` applied to ``nngp``/``ntk`` and ``fn(t, 1)`` to ``cov1``/``cov2``.

    Args:
        k: The kernel.
        fn: ``fn(t, batch_axes)``: the map of one tensor (``None`` entries are passed
            through without calling it).
        **changes: Further fields to replace (e.g. ``shape``).
    """

    def apply(t, batch_axes):
        return None if t is None else fn(t, batch_axes)

    return k.replace(
        nngp=apply(k.nngp, 2),
        ntk=apply(k.ntk, 2),
        cov1=apply(k.cov1, 1),
        cov2=apply(k.cov2, 1),
        **changes,
    )


def n_spatial(k: Kernel) -> int:
    """Number of spatial axes of the activations (0 for vector features)."""
    return len(k.shape) - 1


def location_diagonal(t: torch.Tensor, n_spatial_axes: int, *, pair: bool) -> torch.Tensor:
    """Same-location entries of a full-layout tensor.

    Args:
        t: ``(n1, n2, H, H', W, W')`` if ``pair`` else ``(n1, H, H', W, W')``.
        n_spatial_axes: Number of spatial axes ``S``.
        pair: Whether ``t`` has two batch axes.

    Returns:
        ``(n1, n2, H, W)`` if ``pair`` else ``(n1, H, W)``.
    """
    first = 2 if pair else 1
    for _ in range(n_spatial_axes):
        t = torch.diagonal(t, dim1=first, dim2=first + 1)
    return t


def _expand_full(d: torch.Tensor, n_spatial_axes: int, *, batch_axes: int, which: int):
    """Insert singleton axes so that location-diagonal ``d`` broadcasts against a full layout.

    ``d`` is ``(n, H, W)``; ``which`` is 0 for the unprimed and 1 for the primed axes.
    """
    n = d.shape[0]
    spatial = d.shape[1:]
    shape = [1] * batch_axes
    shape[which if batch_axes == 2 else 0] = n
    for s in spatial:
        shape += [s, 1] if which == 0 else [1, s]
    return d.reshape(shape)


def pair_variances(k: Kernel) -> tuple[torch.Tensor, torch.Tensor]:
    """Variances of the two arguments of every ``nngp`` entry, broadcastable to ``nngp``.

    Returns:
        ``(v1, v2)`` with ``v1[i, j, ...] = Var(x1_i at the entry's first location)`` and
        ``v2`` likewise for ``x2_j`` at the second location.
    """
    s = n_spatial(k)
    c1, c2 = k.cov1, k.cov2_or_cov1
    if s == 0 or k.diagonal_spatial:
        return c1.unsqueeze(1), c2.unsqueeze(0)
    d1 = location_diagonal(c1, s, pair=False)
    d2 = location_diagonal(c2, s, pair=False)
    return (
        _expand_full(d1, s, batch_axes=2, which=0),
        _expand_full(d2, s, batch_axes=2, which=1),
    )


def self_variances(cov: torch.Tensor, k: Kernel) -> tuple[torch.Tensor, torch.Tensor]:
    """Like :func:`pair_variances`, for a batch-diagonal covariance ``cov`` (``cov1``/``cov2``)."""
    s = n_spatial(k)
    if s == 0 or k.diagonal_spatial:
        return cov, cov
    d = location_diagonal(cov, s, pair=False)
    return (
        _expand_full(d, s, batch_axes=1, which=0),
        _expand_full(d, s, batch_axes=1, which=1),
    )


def transpose_pair(t: torch.Tensor, n_spatial_axes: int, diagonal_spatial: bool) -> torch.Tensor:
    """The kernel of ``(x2, x1)`` from that of ``(x1, x2)``: swap every axis pair."""
    t = t.transpose(0, 1)
    if not diagonal_spatial:
        for i in range(n_spatial_axes):
            t = t.transpose(2 + 2 * i, 3 + 2 * i)
    return t


# ----------------------------------------------------------------------------- windows
@dataclass(frozen=True)
class AxisWindow:
    """Geometry of a sliding window along one spatial axis.

    Output location ``h`` reads input locations ``h * stride + a - lo`` for taps
    ``a = 0 .. size - 1``; locations outside ``[0, length)`` are zero (zero padding) or
    wrap around (``circular``).

    Attributes:
        length: Input length along the axis.
        size: Window (kernel) size.
        stride: Step between output locations.
        lo: Padding before the first input location.
        hi: Padding after the last input location.
        circular: Wrap-around instead of zero padding.
    """

    length: int
    size: int
    stride: int
    lo: int
    hi: int
    circular: bool = False

    @property
    def out(self) -> int:
        """Output length ``floor((length + lo + hi - size) / stride) + 1``."""
        return (self.length + self.lo + self.hi - self.size) // self.stride + 1

    def taps(self) -> list[tuple[int, int, int]]:
        """Zero-padding taps as ``(first output, count, first input)`` triples.

        Tap ``a`` adds input locations ``first_input + stride * m`` to output locations
        ``first_output + m`` for ``m < count``; taps that only see padding are dropped.
        """
        out = []
        for a in range(self.size):
            offset = a - self.lo
            first = max(0, -(offset // self.stride))
            last = min(self.out - 1, (self.length - 1 - offset) // self.stride)
            if last >= first:
                out.append((first, last - first + 1, first * self.stride + offset))
        return out


def _wrap(t: torch.Tensor, dims: tuple[int, ...], w: AxisWindow) -> torch.Tensor:
    """Circularly pad ``t`` along ``dims`` by ``(w.lo, w.hi)`` (any amount, by indexing)."""
    idx = torch.arange(-w.lo, w.length + w.hi, device=t.device) % w.length
    for d in dims:
        t = t.index_select(d, idx)
    return t


def _unwrapped(t: torch.Tensor, dims: tuple[int, ...], w: AxisWindow):
    if not w.circular or (w.lo == 0 and w.hi == 0):
        return t, w
    padded = AxisWindow(w.length + w.lo + w.hi, w.size, w.stride, 0, 0)
    return _wrap(t, dims, w), padded


def _strided(first: int, count: int, stride: int) -> slice:
    return slice(first, first + stride * (count - 1) + 1, stride)


def _accumulate(t: torch.Tensor, dims: tuple[int, ...], w: AxisWindow) -> torch.Tensor:
    """Sum ``t[..., in(h, a), ...]`` over taps ``a`` into a new tensor, along all ``dims``.

    With one dim this is a sliding-window sum; with two dims (a location pair) the same
    tap is applied to both, which sums only the ``a == a'`` terms (a convolution's
    independent weights per tap).
    """
    t, w = _unwrapped(t, dims, w)
    if len(dims) == 2 and dims[1] == t.ndim - 1 and w.stride == 1 and w.out == w.length:
        return _innermost_pair_sum(t, w)
    shape = list(t.shape)
    for d in dims:
        shape[d] = w.out
    taps = w.taps()
    full = [tap for tap in taps if tap[0] == 0 and tap[1] == w.out]
    out = None
    if full:  # initialize by copying one tap that covers every output location
        taps.remove(full[0])
        index = [slice(None)] * t.ndim
        for d in dims:
            index[d] = _strided(full[0][2], w.out, w.stride)
        out = t[tuple(index)].clone(memory_format=torch.contiguous_format)
    else:
        out = t.new_zeros(shape)
    for first, count, start in taps:
        src = [slice(None)] * t.ndim
        dst = [slice(None)] * t.ndim
        for d in dims:
            src[d] = _strided(start, count, w.stride)
            dst[d] = slice(first, first + count)
        out[tuple(dst)] += t[tuple(src)]
    return out


_MASKS: dict = {}


def _wrap_mask(length: int, offset: int, dtype, device) -> torch.Tensor:
    """1 where the flat shift by ``offset * (length + 1)`` stays on the same row, else 0.

    Indexed by the flat target position ``f = w * length + w'`` over the shifted range.
    """
    key = (length, offset, dtype, device)
    mask = _MASKS.get(key)
    if mask is None:
        n = length * length - abs(offset) * (length + 1)
        first = max(0, -offset * (length + 1))
        col = torch.arange(first, first + n, device=device) % length + offset
        mask = ((col >= 0) & (col < length)).to(dtype)
        if len(_MASKS) > 256:
            _MASKS.clear()
        _MASKS[key] = mask
    return mask


def _innermost_pair_sum(t: torch.Tensor, w: AxisWindow) -> torch.Tensor:
    """:func:`pair_window_sum` over the last two axes, stride 1, output as long as the input.

    A diagonal shift ``(o, o)`` of an ``(L, L)`` plane is a flat shift by ``o (L + 1)``;
    entries that would wrap into the next row are masked. This keeps the inner loops long
    (``L^2`` instead of ``L``), which is ~3x faster than 2-D slicing for small planes.
    """
    length = w.length
    plane = length * length
    src = t.reshape(-1, plane)
    out = torch.empty_like(src)
    offsets = [a - w.lo for a in range(w.size)]
    if 0 in offsets:
        out.copy_(src)
        offsets.remove(0)
    else:
        out.zero_()
    for o in offsets:
        k = o * (length + 1)
        if abs(k) >= plane:
            continue
        mask = _wrap_mask(length, o, t.dtype, t.device)
        if k > 0:
            out[:, : plane - k].addcmul_(src[:, k:], mask)
        else:
            out[:, -k:].addcmul_(src[:, : plane + k], mask)
    return out.view(t.shape)


def window_sum(t: torch.Tensor, dim: int, w: AxisWindow) -> torch.Tensor:
    """Sliding-window sum along one axis: ``out[h] = sum_a t[h * stride + a - lo]``.

    Args:
        t: Any tensor; ``t.shape[dim] == w.length``.
        dim: The axis to sum along.
        w: The window geometry.

    Returns:
        A new tensor with ``shape[dim] == w.out``.
    """
    return _accumulate(t, (dim,), w)


def pair_window_sum(t: torch.Tensor, dim: int, w: AxisWindow) -> torch.Tensor:
    """Diagonal window sum over a location pair: ``out[h, h'] = sum_a t[i(h, a), i(h', a)]``.

    ``i(h, a) = h * stride + a - lo``. This is how a convolution with independent weights
    per tap maps the covariance of one spatial axis pair (Novak et al. 2019).

    Args:
        t: Any tensor; ``t.shape[dim] == t.shape[dim + 1] == w.length``.
        dim: The first axis of the pair.
        w: The window geometry.

    Returns:
        A new tensor with ``shape[dim] == shape[dim + 1] == w.out``.
    """
    return _accumulate(t, (dim, dim + 1), w)


PADDINGS = ("valid", "same", "circular")


def as_tuple(value, n: int, name: str, *, minimum: int) -> tuple[int, ...]:
    """Broadcast an int or check a length-``n`` sequence of ints ``>= minimum``."""
    if isinstance(value, int) and not isinstance(value, bool):
        values = (value,) * n
    else:
        try:
            values = tuple(value)
        except TypeError:
            raise ValueError(f"{name} must be an int or a tuple of ints; got {value!r}.") from None
        if len(values) != n:
            raise ValueError(
                f"{name} has {len(values)} entries but the input has {n} spatial axes; "
                f"got {name}={value!r}."
            )
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
            raise ValueError(f"{name} must hold integers >= {minimum}; got {value!r}.")
    return values


def check_padding(padding) -> str | int | tuple:
    """Validate a padding argument: ``"valid"``, ``"same"``, ``"circular"`` or ints >= 0."""
    if isinstance(padding, str):
        if padding.lower() not in PADDINGS:
            raise ValueError(f"padding must be one of {PADDINGS} or ints >= 0; got {padding!r}.")
        return padding.lower()
    if isinstance(padding, int) and not isinstance(padding, bool):
        if padding < 0:
            raise ValueError(f"padding must be >= 0; got {padding}.")
        return padding
    if isinstance(padding, (tuple, list)):
        return tuple(padding)
    raise ValueError(f"padding must be one of {PADDINGS} or ints >= 0; got {padding!r}.")


def resolve_windows(
    who: str,
    lengths: tuple[int, ...],
    kernel_size,
    stride,
    padding,
) -> list[AxisWindow]:
    """Window geometry per spatial axis, with torch's conventions.

    ``"valid"``: no padding. ``"same"``: zero padding to ``ceil(length / stride)`` outputs,
    ``total = (out - 1) * stride + size - length`` split as ``lo = total // 2`` and the
    rest after (torch's rule for even kernels). ``"circular"``: the same amounts, wrapped.
    An int pads that many zeros on both sides (``torch.nn.Conv2d(padding=p)``).

    Raises:
        LayerSpecError: the window does not fit the (padded) input.
    """
    n = len(lengths)
    if n == 0:
        raise LayerSpecError(
            f"{who} needs inputs with spatial axes, (n, C, L), (n, C, H, W) or "
            "(n, C, D, H, W); got vector features (n, d)."
        )
    sizes = as_tuple(kernel_size, n, "kernel_size", minimum=1)
    strides = as_tuple(stride, n, "stride", minimum=1)
    pads = None if isinstance(padding, str) else as_tuple(padding, n, "padding", minimum=0)
    windows = []
    for i, (length, size, step) in enumerate(zip(lengths, sizes, strides)):
        if pads is not None:
            lo = hi = pads[i]
        elif padding == "valid":
            lo = hi = 0
        else:
            out = -(-length // step)
            total = max((out - 1) * step + size - length, 0)
            lo, hi = total // 2, total - total // 2
        w = AxisWindow(length, size, step, lo, hi, circular=padding == "circular")
        if padding == "circular" and max(lo, hi) > length:
            raise LayerSpecError(
                f"{who}: circular padding of {max(lo, hi)} exceeds the input length "
                f"{length} along spatial axis {i} (kernel_size {size}); use a smaller kernel."
            )
        if length + lo + hi < size:
            raise LayerSpecError(
                f"{who}: kernel_size {size} is larger than the input length {length}"
                + (f" plus padding {lo}+{hi}" if lo or hi else "")
                + f" along spatial axis {i} with padding={padding!r}; use padding='same' "
                "or a smaller kernel."
            )
        windows.append(w)
    return windows
