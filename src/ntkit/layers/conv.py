"""Convolutions over 1-D, 2-D and 3-D inputs (channels-first, as in torch).

A convolution with independent weights per tap maps the covariance of every pair of
locations ``(s, s')`` to the average over taps ``a`` of the covariance of the input
locations ``(s + a, s' + a)`` (Novak et al. 2019, arXiv 1810.05148; Arora et al. 2019,
arXiv 1904.11955). Per spatial axis pair this is a *diagonal* window sum, which ntkit
evaluates with ``kernel_size`` strided slice additions per axis (no unfold, no padded
copies for zero padding). With only same-location covariances (``diagonal_spatial``, when
a ``Flatten`` readout follows) it is an ordinary sliding-window sum of the diagonal.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ntkit.errors import LayerSpecError
from ntkit.kernel import Kernel
from ntkit.layers import _init
from ntkit.layers._params import value_of
from ntkit.layers._spatial import (
    AxisWindow,
    check_padding,
    map_covariances,
    pair_window_sum,
    resolve_windows,
    window_sum,
)
from ntkit.layers.base import Layer, Shape, single_stream
from ntkit.layers.dense import affine_kernel, check_parameterization, check_std

__all__ = ["Conv", "ConvNTK", "SpatialPad"]

_CONV_FNS = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_TORCH_CONVS = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}


def spatial_input(who: str, in_shape: Shape) -> tuple[int, tuple[int, ...]]:
    """Split a per-sample shape ``(C, *spatial)`` with 1 to 3 spatial axes.

    Raises:
        LayerSpecError: several streams, vector features, or more than 3 spatial axes.
    """
    single_stream(who, in_shape)
    if len(in_shape) < 2 or len(in_shape) > 4:
        raise LayerSpecError(
            f"{who} expects channels-first inputs (n, C, L), (n, C, H, W) or (n, C, D, H, W); "
            f"got per-sample shape {in_shape}."
        )
    return in_shape[0], tuple(in_shape[1:])


def flat_pads(windows: list[AxisWindow]) -> list[int]:
    """``F.pad`` argument (last axis first) for the windows' ``(lo, hi)`` paddings."""
    pads: list[int] = []
    for w in reversed(windows):
        pads += [w.lo, w.hi]
    return pads


def check_conv_args(who: str, out_channels, kernel_size, stride) -> int:
    """Validate a convolution's ``out_channels`` and integer ``kernel_size``/``stride``.

    Tuples are checked against the input's spatial rank later. Returns ``out_channels``.

    Raises:
        ValueError: ``out_channels`` is not a positive integer, or an integer
            ``kernel_size``/``stride`` is not positive.
    """
    if isinstance(out_channels, bool) or int(out_channels) != out_channels or out_channels < 1:
        raise ValueError(f"{who} out_channels must be a positive integer; got {out_channels}.")
    for name, value in (("kernel_size", kernel_size), ("stride", stride)):
        if isinstance(value, int) and (isinstance(value, bool) or value < 1):
            raise ValueError(f"{who} {name} must be positive; got {value!r}.")
    return int(out_channels)


def conv_repr(layer) -> str:
    """``Name(out_channels, kernel_size, stride=..., padding=..., w_std=..., b_std=..., ...)``."""
    b_std = None if layer.b_std is None else value_of(layer.b_std)
    return (
        f"{layer.name}({layer.out_channels}, {layer.kernel_size}, stride={layer.stride}, "
        f"padding={layer.padding!r}, w_std={value_of(layer.w_std)}, b_std={b_std}, "
        f"parameterization={layer.parameterization!r})"
    )


def init_scales(w_std, b_std, fan_in: int, parameterization: str):
    """Forward scales and initial draws' standard deviations of a weight and bias.

    NTK parameterization multiplies standard-normal parameters by ``w_std / sqrt(fan_in)``
    and ``b_std``; standard parameterization draws ``N(0, w_std^2 / fan_in)`` and
    ``N(0, b_std^2)`` and multiplies by 1.

    Args:
        w_std: Weight standard deviation (a number or a layer parameter).
        b_std: Bias standard deviation; ``None`` means no bias.
        fan_in: Inputs per output unit.
        parameterization: ``"ntk"`` or ``"standard"``.

    Returns:
        ``(scale, b_scale, w_draw, b_draw)`` (``b_scale``/``b_draw`` ``None`` without bias).
    """
    w = value_of(w_std) / math.sqrt(fan_in)
    b_std = None if b_std is None else value_of(b_std)
    unit = None if b_std is None else 1.0
    if parameterization == "ntk":
        return w, b_std, 1.0, unit
    return 1.0, unit, w, b_std


class SpatialPad(nn.Module):
    """Zero or circular padding of the spatial axes of ``(n, C, *spatial)``.

    Args:
        pads: ``F.pad`` amounts, last spatial axis first.
        circular: Wrap around instead of zeros.
    """

    def __init__(self, pads: list[int], circular: bool):
        super().__init__()
        self.pads = list(pads)
        self.circular = bool(circular)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(n, C, *spatial)`` -> ``(n, C, *padded)``."""
        if not any(self.pads):
            return x
        return F.pad(x, self.pads, mode="circular" if self.circular else "constant")

    def extra_repr(self) -> str:
        return f"pads={self.pads}, circular={self.circular}"


class ConvNTK(nn.Module):
    """Convolution in NTK parameterization: ``y = (w_std / sqrt(fan_in)) W * pad(x) + b_std b``.

    ``weight`` ``(C_out, C_in, *kernel_size)`` and ``bias`` ``(C_out,)`` are standard normal at
    initialization; ``fan_in = C_in * prod(kernel_size)``.

    Args:
        in_channels: ``C_in``.
        out_channels: ``C_out``.
        kernel_size: One size per spatial axis.
        stride: One stride per spatial axis.
        pads: ``F.pad`` amounts (last spatial axis first).
        circular: Circular instead of zero padding.
        w_std: Weight standard deviation.
        b_std: Bias standard deviation; ``None`` means no bias.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: tuple[int, ...],
        stride: tuple[int, ...],
        pads: list[int],
        circular: bool,
        w_std: float,
        b_std: float | None,
    ):
        super().__init__()
        self.kernel_size = tuple(kernel_size)
        self.stride = tuple(stride)
        self.pad = SpatialPad(pads, circular)
        self.w_std = float(w_std)
        self.b_std = None if b_std is None else float(b_std)
        self.fan_in = in_channels * math.prod(kernel_size)
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, *kernel_size))
        if b_std is None:
            self.register_parameter("bias", None)
        else:
            self.bias = nn.Parameter(torch.empty(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(n, C_in, *spatial)`` -> ``(n, C_out, *out_spatial)``."""
        conv = _CONV_FNS[len(self.kernel_size)]
        y = conv(self.pad(x), self.weight, stride=self.stride)
        y = y * (self.w_std / math.sqrt(self.fan_in))
        if self.bias is not None:
            y = y + self.b_std * self.bias.view(1, -1, *([1] * len(self.kernel_size)))
        return y

    def extra_repr(self) -> str:
        return (
            f"{self.weight.shape[1]}, {self.weight.shape[0]}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, w_std={self.w_std}, b_std={self.b_std}"
        )


def patch_sum(t: torch.Tensor | None, batch_axes: int, windows, diagonal: bool):
    """The convolution's window sum of a covariance over every spatial axis (pair).

    Args:
        t: ``(n1, n2, H, H', W, W')`` / ``(n, H, H', W, W')`` (full) or ``(n1, n2, H, W)`` /
            ``(n, H, W)`` (diagonal); ``None`` passes through.
        batch_axes: 2 for ``nngp``/``ntk``, 1 for ``cov1``/``cov2``.
        windows: One :class:`AxisWindow` per spatial axis.
        diagonal: Whether ``t`` holds only same-location entries.

    Returns:
        The un-normalized sum over taps (divide by ``prod(kernel_size)`` for the average).
    """
    if t is None:
        return None
    for i, w in enumerate(windows):
        if diagonal:
            t = window_sum(t, batch_axes + i, w)
        else:
            t = pair_window_sum(t, batch_axes + 2 * i, w)
    return t


class WindowedLayer(Layer):
    """A layer sliding windows over the spatial axes (Conv, AvgPool, SumPool).

    Subclasses set ``kernel_size``, ``stride`` and ``padding``; the resolved windows are
    cached per input lengths (specs are immutable), since every tile asks for them.
    """

    kernel_size: object
    stride: object
    padding: object

    def _windows(self, lengths: tuple[int, ...]) -> list[AxisWindow]:
        cache = self.__dict__.setdefault("_window_cache", {})
        if lengths not in cache:
            cache[lengths] = resolve_windows(
                repr(self), lengths, self.kernel_size, self.stride, self.padding
            )
        return cache[lengths]

    def _window_working_entries(self, k: Kernel, power: int) -> float:
        """Working entries per pair: ``memory_factor`` x entries x the largest growth.

        The growth is that of the spatial axes (padding or output windows) along the
        axis-by-axis computation, raised to ``power``.
        """
        _, lengths = spatial_input(repr(self), k.shape)
        grown = largest = 1.0
        for w in self._windows(lengths):
            padded = w.length + (w.lo + w.hi if w.circular else 0)
            grown *= (max(padded, w.out) / w.length) ** power
            largest = max(largest, grown)
        return self.memory_factor * largest * k.entries_per_pair


class TapConvolution(WindowedLayer):
    """Shared by :class:`Conv` and :class:`ntkit.layers.ConvLocal`: arguments, shapes, kernel.

    The kernel rule is Conv's tap average followed by the affine map; ConvLocal keeps its
    same-location entries.
    """

    memory_factor = 7.0

    def __init__(
        self,
        out_channels: int,
        kernel_size,
        *,
        stride=1,
        padding="valid",
        w_std: float = 1.0,
        b_std: float | None = None,
        parameterization: str = "ntk",
    ):
        self.out_channels = check_conv_args(self.name, out_channels, kernel_size, stride)
        self.kernel_size = kernel_size
        self.stride = stride
        self.padding = check_padding(padding)
        self.w_std = check_std(w_std, "w_std", allow_none=False)
        self.b_std = check_std(b_std, "b_std", allow_none=True)
        self.parameterization = check_parameterization(parameterization)

    def out_shape(self, in_shape: Shape) -> Shape:
        _channels, lengths = spatial_input(repr(self), in_shape)
        return (self.out_channels, *(w.out for w in self._windows(lengths)))

    def working_entries(self, k: Kernel) -> float:
        return self._window_working_entries(k, 1 if k.diagonal_spatial else 2)

    def kernel_rule(self, k: Kernel) -> Kernel:
        channels, lengths = spatial_input(repr(self), k.shape)
        windows = self._windows(lengths)
        diagonal = k.diagonal_spatial
        taps = math.prod(w.size for w in windows)
        summed = map_covariances(k, lambda t, b: patch_sum(t, b, windows, diagonal))
        # The tap average's 1/taps is folded into the weight variance, and the standard
        # parameterization's fan_in * mean becomes C_in * sum. The summed tensors are
        # fresh, so the affine map runs in place.
        return affine_kernel(
            summed,
            w2=self.w_std**2 / taps,
            b_std=self.b_std,
            parameterization=self.parameterization,
            fan_in=channels,
            out_shape=(self.out_channels, *(w.out for w in windows)),
            inplace=True,
        )

    def __repr__(self) -> str:
        return conv_repr(self)


class Conv(TapConvolution):
    """Convolution over ``(n, C, L)``, ``(n, C, H, W)`` or ``(n, C, D, H, W)`` inputs.

    NTK parameterization (default): ``y = (w_std / sqrt(fan_in)) W * x + b_std b`` with
    standard normal ``W`` and ``b`` and ``fan_in = C_in * prod(kernel_size)``. Standard
    parameterization: ``torch.nn.ConvNd`` with ``W ~ N(0, w_std^2 / fan_in)`` and
    ``b ~ N(0, b_std^2)``. The NNGP of output locations ``(s, s')`` is
    ``w_std^2 * mean_a q(s*stride + a - lo, s'*stride + a - lo) + b_std^2`` (zero outside the
    input, or wrapped for circular padding); the NTK follows :func:`affine_kernel`.

    Args:
        out_channels: Output channels (the width that goes to infinity).
        kernel_size: Window size, an int for every spatial axis or one per axis.
        stride: Step between output locations, int or one per axis.
        padding: ``"valid"`` (default, as torch's ``padding=0``), ``"same"`` (zeros; output
            length ``ceil(length / stride)``, extra padding after for even kernels, as
            torch), ``"circular"`` (the same amounts, wrapped around as on a torus), or an
            int / tuple of zero paddings on both sides (as torch).
        w_std: Weight standard deviation ``sigma_w``.
        b_std: Bias standard deviation; ``None`` (default) means no bias.
        parameterization: ``"ntk"`` or ``"standard"``.
    """

    def build_module(self, in_shape: Shape, generator: torch.Generator) -> nn.Module:
        channels, lengths = spatial_input(repr(self), in_shape)
        w_std = value_of(self.w_std)
        b_std = None if self.b_std is None else value_of(self.b_std)
        windows = self._windows(lengths)
        sizes = tuple(w.size for w in windows)
        strides = tuple(w.stride for w in windows)
        circular = windows[0].circular
        pads = flat_pads(windows)
        fan_in = channels * math.prod(sizes)
        wshape = (self.out_channels, channels, *sizes)
        if self.parameterization == "ntk":
            mod = ConvNTK(channels, self.out_channels, sizes, strides, pads, circular, w_std, b_std)
            mod.weight.copy_(_init.normal(wshape, generator))
            if mod.bias is not None:
                mod.bias.copy_(_init.normal((self.out_channels,), generator))
            return mod
        symmetric = all(w.lo == w.hi for w in windows)
        conv = _TORCH_CONVS[len(sizes)](
            channels,
            self.out_channels,
            sizes,
            stride=strides,
            padding=tuple(w.lo for w in windows) if symmetric else 0,
            padding_mode="circular" if circular else "zeros",
            bias=b_std is not None,
            dtype=torch.float64,
        )
        conv.weight.copy_(_init.normal(wshape, generator, w_std / math.sqrt(fan_in)))
        if conv.bias is not None:
            conv.bias.copy_(_init.normal((self.out_channels,), generator, b_std))
        if symmetric:
            return conv
        return nn.Sequential(SpatialPad(pads, circular), conv)
