"""Fixed linear maps of locations: ``ImageResize`` (interpolation) and ``Index`` (slicing).

Both act on every channel alike, ``y[:, c] = R x[:, c]`` with a fixed matrix ``R`` per
spatial axis, so the kernel of a location pair is ``R K R^T`` per axis pair (a one-sided map
on each of the pair's two axes). Nearest-neighbour resizing and slicing select locations,
which also works on the same-location (diagonal) layout; linear interpolation mixes
locations and needs the full covariance.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ntkit.kernel import Kernel
from ntkit.layers._spatial import map_covariances
from ntkit.layers.base import Layer, LayerSpecError, Shape, require_full_layout
from ntkit.layers.conv import spatial_input

__all__ = ["ImageResize", "Index", "resize_matrix"]

METHODS = ("linear", "nearest")


def resize_matrix(length: int, size: int, method: str, antialias: bool = True) -> torch.Tensor:
    """The ``(size, length)`` float64 matrix of 1-D resizing, with half-pixel centres.

    Output location ``o`` samples the input at ``f = (o + 1/2) length / size - 1/2``.
    ``"nearest"`` takes input ``min(floor((o + 1/2) length / size), length - 1)``.
    ``"linear"`` weighs input ``i`` by the triangle ``max(0, 1 - |f - i| / w)`` with
    ``w = max(length / size, 1)`` when ``antialias`` (a wider triangle when downsampling)
    else ``w = 1``, normalized to sum 1 over the input. This is the convention of
    ``jax.image.resize`` (used by the reference library's ``ImageResize``); for
    upsampling it equals ``torch.nn.functional.interpolate(mode="linear",
    align_corners=False)``.
    """
    out = torch.zeros(size, length, dtype=torch.float64)
    rows = torch.arange(size, dtype=torch.float64)
    if method == "nearest":
        src = torch.floor((rows + 0.5) * length / size).long().clamp_(max=length - 1)
        out[torch.arange(size), src] = 1.0
        return out
    inv = length / size
    width = max(inv, 1.0) if antialias else 1.0
    sample = (rows + 0.5) * inv - 0.5
    cols = torch.arange(length, dtype=torch.float64)
    w = (1.0 - (sample[:, None] - cols[None, :]).abs() / width).clamp_min(0.0)
    total = w.sum(dim=1, keepdim=True)
    w = torch.where(total > 0, w / torch.where(total > 0, total, torch.ones_like(total)), 0.0)
    inside = (sample >= -0.5) & (sample <= length - 0.5)
    return w * inside[:, None].to(w.dtype)


def _apply_pair(t: torch.Tensor, d: int, m: torch.Tensor) -> torch.Tensor:
    """``m`` applied to axes ``d`` and ``d + 1`` of ``t``: ``M t M^T`` on that pair."""
    m = m.to(dtype=t.dtype, device=t.device)
    t = torch.movedim(torch.tensordot(t, m, dims=([d], [1])), -1, d)
    return torch.movedim(torch.tensordot(t, m, dims=([d + 1], [1])), -1, d + 1)


class SpatialLinearModule(nn.Module):
    """Applies one fixed matrix per spatial axis (``None`` leaves an axis alone).

    Args:
        matrices: ``(out_i, in_i)`` matrices, one per spatial axis.
        drop: Axes to squeeze afterwards (an integer index keeps one location).
    """

    def __init__(self, matrices: list[torch.Tensor | None], drop: tuple[int, ...] = ()):
        super().__init__()
        self.n_axes = len(matrices)
        for i, m in enumerate(matrices):
            self.register_buffer(f"m{i}", None if m is None else m.clone())
        self.drop = tuple(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(n, C, *spatial)`` -> ``(n, C, *new_spatial)``."""
        for i in range(self.n_axes):
            m = getattr(self, f"m{i}")
            if m is not None:
                x = torch.movedim(torch.tensordot(x, m.to(x.dtype), dims=([2 + i], [1])), -1, 2 + i)
        for i in sorted(self.drop, reverse=True):
            x = x.squeeze(2 + i)
        return x


def _map_kernel(k: Kernel, matrices, drop, out_shape) -> Kernel:
    """Apply per-axis matrices to every tensor of ``k``, then drop the squeezed axes."""
    diagonal = k.diagonal_spatial

    def apply(t, batch_axes):
        for i, m in enumerate(matrices):
            if m is None:
                continue
            if diagonal:  # only selections reach here: pick the same location on both sides
                d = batch_axes + i
                t = t.index_select(d, m.argmax(dim=1).to(t.device))
            else:
                t = _apply_pair(t, batch_axes + 2 * i, m)
        for i in sorted(drop, reverse=True):
            if diagonal:
                t = t.squeeze(batch_axes + i)
            else:
                t = t.squeeze(batch_axes + 2 * i + 1).squeeze(batch_axes + 2 * i)
        return t

    return map_covariances(
        k,
        apply,
        shape=out_shape,
        diagonal_spatial=diagonal and len(out_shape) > 1,
    )


class ImageResize(Layer):
    """Resize the spatial axes, ``(n, C, *spatial)`` -> ``(n, C, *size)``, as a linear map.

    The same map as ``jax.image.resize`` (the reference library's ``ImageResize``): half-pixel
    centres, ``"linear"`` a triangle filter (widened when downsampling if ``antialias``) and
    ``"nearest"`` the nearest input location; see :func:`resize_matrix`. The kernel is
    ``R K R^T`` per spatial axis pair. A linear map keeps Gaussian inputs Gaussian (and
    non-Gaussian ones not), so the input's ``is_gaussian`` carries over.

    Args:
        size: Output spatial shape, one int per spatial axis (``-1`` keeps an axis), or an
            int for every axis.
        method: ``"linear"`` (default) or ``"nearest"``.
        antialias: Widen the linear filter when downsampling (default, as the reference).
    """

    memory_factor = 4.0

    def __init__(self, size, method: str = "linear", *, antialias: bool = True):
        if method not in METHODS:
            raise ValueError(f"ImageResize method must be one of {METHODS}; got {method!r}.")
        sizes = (size,) if isinstance(size, int) else tuple(size)
        for s in sizes:
            if isinstance(s, bool) or not isinstance(s, int) or (s < 1 and s != -1):
                raise ValueError(
                    f"ImageResize size must hold positive integers (or -1 to keep an axis); "
                    f"got {size!r}."
                )
        self.size = size
        self.method = method
        self.antialias = bool(antialias)

    def _sizes(self, lengths: tuple[int, ...]) -> tuple[int, ...]:
        if isinstance(self.size, int):
            sizes = (self.size,) * len(lengths)
        else:
            sizes = tuple(self.size)
            if len(sizes) != len(lengths):
                raise LayerSpecError(
                    f"{self!r}: size has {len(sizes)} entries but the input has "
                    f"{len(lengths)} spatial axes {lengths}."
                )
        return tuple(n if s == -1 else s for s, n in zip(sizes, lengths))

    def _matrices(self, lengths):
        return [
            None if s == n else resize_matrix(n, s, self.method, self.antialias)
            for n, s in zip(lengths, self._sizes(lengths))
        ]

    def out_shape(self, in_shape: Shape) -> Shape:
        channels, lengths = spatial_input(repr(self), in_shape)
        return (channels, *self._sizes(lengths))

    def input_layout(self, diagonal_spatial):
        return diagonal_spatial and self.method == "nearest"

    def working_entries(self, k: Kernel) -> float:
        channels, lengths = spatial_input(repr(self), k.shape)
        grow = math.prod(max(s / n, 1.0) for s, n in zip(self._sizes(lengths), lengths))
        return self.memory_factor * k.entries_per_pair * grow ** (1 if k.diagonal_spatial else 2)

    def kernel_rule(self, k: Kernel) -> Kernel:
        channels, lengths = spatial_input(repr(self), k.shape)
        if self.method == "linear":
            require_full_layout(repr(self), k)
        return _map_kernel(k, self._matrices(lengths), (), self.out_shape(k.shape))

    def build_module(self, in_shape: Shape, generator: torch.Generator) -> nn.Module:
        _, lengths = spatial_input(repr(self), in_shape)
        return SpatialLinearModule(self._matrices(lengths))

    def __repr__(self) -> str:
        return f"ImageResize({self.size!r}, method={self.method!r}, antialias={self.antialias})"


class Index(Layer):
    """Slice or pick locations along the spatial axes: ``x[:, :, *index]``.

    Each entry of ``index`` is a ``slice`` (any start, stop and positive or negative step) or
    an ``int`` (keeps one location and removes the axis); missing trailing entries keep their
    axes. The kernel indexes both axes of every location pair alike, which is exact. Channels
    cannot be indexed: at infinite width every channel has the same kernel, so a channel
    slice would only change the finite width (use a narrower layer instead).

    Args:
        index: One ``slice``/``int`` per leading spatial axis, e.g.
            ``(slice(None, None, 2), 0)`` for ``x[:, :, ::2, 0]``.
    """

    memory_factor = 2.0

    def __init__(self, *index):
        if len(index) == 1 and isinstance(index[0], tuple):
            index = index[0]
        if not index:
            raise ValueError("Index needs at least one slice or int.")
        for i in index:
            if not isinstance(i, (slice, int)) or isinstance(i, bool):
                raise TypeError(
                    f"Index entries must be slices or ints (spatial axes only); got {i!r}."
                )
        self.index = tuple(index)

    def _selection(self, lengths):
        if len(self.index) > len(lengths):
            raise LayerSpecError(
                f"{self!r} indexes {len(self.index)} spatial axes but the input has "
                f"{len(lengths)} ({lengths})."
            )
        matrices, drop = [], []
        for axis, n in enumerate(lengths):
            if axis >= len(self.index):
                matrices.append(None)
                continue
            entry = self.index[axis]
            if isinstance(entry, int):
                if not -n <= entry < n:
                    raise LayerSpecError(
                        f"{self!r}: index {entry} is out of range for spatial axis {axis} of "
                        f"length {n}."
                    )
                picks = [entry % n]
                drop.append(axis)
            else:
                picks = list(range(n))[entry]
                if not picks:
                    raise LayerSpecError(
                        f"{self!r}: {entry} selects no location of spatial axis {axis} "
                        f"(length {n})."
                    )
            m = torch.zeros(len(picks), n, dtype=torch.float64)
            m[torch.arange(len(picks)), torch.tensor(picks)] = 1.0
            matrices.append(m)
        return matrices, tuple(drop)

    def out_shape(self, in_shape: Shape) -> Shape:
        channels, lengths = spatial_input(repr(self), in_shape)
        matrices, drop = self._selection(lengths)
        kept = [
            n if m is None else m.shape[0]
            for axis, (n, m) in enumerate(zip(lengths, matrices))
            if axis not in drop
        ]
        return (channels, *kept)

    def kernel_rule(self, k: Kernel) -> Kernel:
        _, lengths = spatial_input(repr(self), k.shape)
        matrices, drop = self._selection(lengths)
        return _map_kernel(k, matrices, drop, self.out_shape(k.shape))

    def build_module(self, in_shape: Shape, generator: torch.Generator) -> nn.Module:
        _, lengths = spatial_input(repr(self), in_shape)
        matrices, drop = self._selection(lengths)
        return SpatialLinearModule(matrices, drop)

    def __repr__(self) -> str:
        return f"Index{self.index!r}"
