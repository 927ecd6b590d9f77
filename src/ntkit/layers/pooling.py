"""Pooling over spatial axes: windowed (``AvgPool``, ``SumPool``) and global.

Pooling is a fixed linear map ``y(s) = c * sum_{a in window(s)} x(a)``, so the covariance of
output locations ``(s, s')`` sums the input covariance over *all* pairs of taps
``(a, a')``, not only ``a == a'`` as a convolution does. Per spatial axis pair this is a
window sum along ``H`` and another along ``H'`` (separable), times ``c^2``. The kernel
therefore needs the full location-by-location covariance of its input, which the driver
keeps upstream of any pooling layer.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ntkit.kernel import Kernel
from ntkit.layers._spatial import check_padding, map_covariances, window_sum
from ntkit.layers.base import Layer, Shape, require_full_layout
from ntkit.layers.conv import SpatialPad, WindowedLayer, flat_pads, spatial_input
from ntkit.layers.masking import check_mask, current_mask

__all__ = ["AvgPool", "GlobalAvgPool", "GlobalSumPool", "SumPool"]

_AVG_POOLS = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}


class PoolModule(nn.Module):
    """Finite window pooling: pad, then ``scale * sum`` over each window.

    Args:
        kernel_size: Window per spatial axis.
        stride: Stride per spatial axis.
        pads: ``F.pad`` amounts (last spatial axis first).
        circular: Circular instead of zero padding.
        average: Divide by the window size (``AvgPool``) or not (``SumPool``).
    """

    def __init__(self, kernel_size, stride, pads, circular: bool, average: bool):
        super().__init__()
        self.kernel_size = tuple(kernel_size)
        self.stride = tuple(stride)
        self.pad = SpatialPad(pads, circular)
        self.average = bool(average)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(n, C, *spatial)`` -> ``(n, C, *pooled)``."""
        pool = _AVG_POOLS[len(self.kernel_size)]
        y = pool(self.pad(x), self.kernel_size, self.stride)
        return y if self.average else y * math.prod(self.kernel_size)

    def extra_repr(self) -> str:
        kind = "avg" if self.average else "sum"
        return f"{kind}, kernel_size={self.kernel_size}, stride={self.stride}"


class _WindowPool(WindowedLayer):
    """Shared code of AvgPool and SumPool."""

    memory_factor = 5.0
    average = True

    def __init__(self, kernel_size, stride=None, padding=0):
        self.kernel_size = kernel_size
        self.stride = kernel_size if stride is None else stride
        self.padding = check_padding(padding)

    def out_shape(self, in_shape: Shape) -> Shape:
        channels, lengths = spatial_input(repr(self), in_shape)
        return (channels, *(w.out for w in self._windows(lengths)))

    def input_layout(self, diagonal_spatial):
        return False

    def working_entries(self, k: Kernel) -> float:
        return self._window_working_entries(k, 1)

    def kernel_rule(self, k: Kernel) -> Kernel:
        require_full_layout(repr(self), k)
        channels, lengths = spatial_input(repr(self), k.shape)
        windows = self._windows(lengths)
        scale = 1.0 / math.prod(w.size for w in windows) ** 2 if self.average else 1.0

        def pool(t, batch_axes):
            for i, w in enumerate(windows):
                t = window_sum(t, batch_axes + 2 * i, w)
                t = window_sum(t, batch_axes + 2 * i + 1, w)
            return t.mul_(scale) if scale != 1.0 else t

        return map_covariances(k, pool, shape=(channels, *(w.out for w in windows)))

    def build_module(self, in_shape: Shape, generator: torch.Generator) -> nn.Module:
        _, lengths = spatial_input(repr(self), in_shape)
        windows = self._windows(lengths)
        return PoolModule(
            [w.size for w in windows],
            [w.stride for w in windows],
            flat_pads(windows),
            windows[0].circular,
            self.average,
        )

    def __repr__(self) -> str:
        return f"{self.name}({self.kernel_size}, stride={self.stride}, padding={self.padding!r})"


class AvgPool(_WindowPool):
    """Average pooling ``y(s) = mean over the window at s of x``, as ``torch.nn.AvgPool2d``.

    Zero padding counts towards the mean (torch's ``count_include_pad=True``), so the
    kernel is the window-pair sum divided by ``prod(kernel_size)^2``.

    Args:
        kernel_size: Window, an int for every spatial axis or one per axis.
        stride: Defaults to ``kernel_size`` (as torch).
        padding: Zero padding on both sides (int or tuple, default 0 as torch), or
            ``"valid"``, ``"same"``, ``"circular"`` as for :class:`ntkit.layers.Conv`.
    """

    average = True


class SumPool(_WindowPool):
    """Sum pooling ``y(s) = sum over the window at s of x`` (``AvgPool`` times the window size).

    Args:
        kernel_size: Window, an int for every spatial axis or one per axis.
        stride: Defaults to ``kernel_size``.
        padding: As for :class:`AvgPool`.
    """

    average = False


class GlobalPoolModule(nn.Module):
    """Mean or sum over all spatial axes: ``(n, C, *spatial)`` -> ``(n, C)``."""

    def __init__(self, average: bool):
        super().__init__()
        self.average = bool(average)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(n, C, *spatial)`` -> ``(n, C)``."""
        dims = tuple(range(2, x.ndim))
        mask = current_mask(x)
        if mask is not None:  # real positions only (see ntkit.layers.masking)
            m = mask.unsqueeze(1).to(x.dtype)
            total = (x * m).sum(dim=dims)
            return total / m.sum(dim=dims) if self.average else total
        return x.mean(dim=dims) if self.average else x.sum(dim=dims)

    def extra_repr(self) -> str:
        return "avg" if self.average else "sum"


class _GlobalPool(Layer):
    memory_factor = 1.5
    average = True

    def out_shape(self, in_shape: Shape) -> Shape:
        channels, _ = spatial_input(self.name, in_shape)
        return (channels,)

    def input_layout(self, diagonal_spatial):
        return False

    def kernel_rule(self, k: Kernel) -> Kernel:
        require_full_layout(self.name, k)
        if k.mask1 is not None:
            return _masked_global_pool(self.name, k, self.average)
        spatial = math.prod(k.shape[1:])
        scale = 1.0 / spatial**2 if self.average else 1.0

        def pool(t, batch_axes):
            t = t.sum(dim=tuple(range(batch_axes, t.ndim)))
            return t.mul_(scale) if scale != 1.0 else t

        return map_covariances(k, pool, shape=(k.shape[0],))

    def build_module(self, in_shape: Shape, generator: torch.Generator) -> nn.Module:
        return GlobalPoolModule(self.average)


class GlobalAvgPool(_GlobalPool):
    """Mean over all spatial locations, ``(n, C, *spatial)`` -> ``(n, C)``.

    Kernel: ``(1 / S^2) sum_{s, s'} K(s, s')`` with ``S`` the number of locations; it needs
    the full location-by-location covariance.
    """

    average = True


class GlobalSumPool(_GlobalPool):
    """Sum over all spatial locations; kernel ``sum_{s, s'} K(s, s')``."""

    average = False


def _masked_global_pool(who: str, k: Kernel, average: bool) -> Kernel:
    """Global pooling over the real positions of masked inputs only.

    ``K'(x1, x2) = sum_{s in V1, s' in V2} K(s, s') / (|V1| |V2|)`` (average) with ``V`` the
    real positions of each sample; without the division for sum pooling.
    """
    lengths = tuple(k.shape[1:])
    check_mask(who, k.mask1, lengths)
    check_mask(who, k.mask2, lengths)
    n = len(lengths)
    a, b = "pqrstuvw"[:n], "PQRSTUVW"[:n]
    pairs = "".join(x + y for x, y in zip(a, b))

    def weights(mask):
        w = mask.to(k.nngp.dtype)
        if average:
            w = w / w.reshape(w.shape[0], -1).sum(dim=1).reshape(-1, *([1] * n))
        return w

    w1 = weights(k.mask1)
    w2 = weights(k.mask2)

    def pair(t):
        return None if t is None else torch.einsum(f"ij{pairs},i{a},j{b}->ij", t, w1, w2)

    def own(t, w):
        return None if t is None else torch.einsum(f"i{pairs},i{a},i{b}->i", t, w, w)

    return k.replace(
        nngp=pair(k.nngp),
        ntk=pair(k.ntk),
        cov1=own(k.cov1, w1),
        cov2=own(k.cov2, w2),
        shape=(k.shape[0],),
    )
