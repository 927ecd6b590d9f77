"""Transposed convolutions over 1-D, 2-D and 3-D inputs (channels-first), TF/JAX conventions.

A transposed convolution with stride ``s`` equals an ordinary stride-1 convolution of the
*dilated* input (``s - 1`` zeros between neighbours) with zero padding ``(lo, hi)`` on
either side. Its kernel is therefore Conv's tap average applied to the dilated covariance
(zeros at every location pair that involves an inserted zero), which ntkit evaluates with
the same strided window sums as :class:`ntkit.layers.Conv`.

Output sizes and paddings follow the reference library (Neural Tangents, which uses
``jax.lax.conv_transpose``, the TensorFlow convention), per spatial axis with input length
``n``, kernel size ``k`` and stride ``s``:

- ``"same"``: output ``n * s``; ``lo = k - 1`` if ``s > k - 1`` else ``ceil((k + s - 2) / 2)``,
  ``hi = k + s - 2 - lo``;
- ``"valid"``: output ``n * s + max(k - s, 0)``; ``lo = k - 1``,
  ``hi = s - 1 + max(k - s, 0)``;
- ``"circular"``: the ``"valid"`` output folded onto ``n * s`` locations, output location
  ``o`` summing the valid locations ``v`` with ``v - (V - n s) // 2 = o (mod n s)``
  (``V`` the valid length): the transpose of circular padding.

In torch terms (``torch.nn.ConvTranspose1d/2d/3d``, which starts from the full output of
length ``(n - 1) s + k``): ``"valid"`` is ``padding=0, output_padding=max(s - k, 0)``;
``"same"`` crops ``k - 1 - lo`` locations at the start and keeps ``n s``, which is
``padding=p, output_padding=o`` with ``p = k - 1 - lo`` whenever ``hi >= lo`` (then
``o = hi - lo``); when ``k + s`` is odd and ``k > s + 1`` the crop is asymmetric (one more at
the start) and no single torch layer expresses it. The finite module here computes the full
``conv_transpose`` and crops or zero-extends it, so all cases are exact.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ntkit.kernel import Kernel
from ntkit.layers import _init
from ntkit.layers._spatial import AxisWindow, as_tuple, map_covariances
from ntkit.layers.base import Layer, LayerSpecError, Shape
from ntkit.layers.conv import (
    check_conv_args,
    conv_repr,
    init_scales,
    patch_sum,
    spatial_input,
)
from ntkit.layers.dense import affine_kernel, check_parameterization, check_std

__all__ = ["ConvTranspose", "ConvTransposeModule", "transpose_paddings"]

_CONV_T_FNS = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}
_T_PADDINGS = ("valid", "same", "circular")


def transpose_paddings(length: int, size: int, stride: int, padding: str) -> tuple[int, int, int]:
    """``(lo, hi, out)`` of a transposed convolution along one axis (TF/JAX convention).

    ``lo``/``hi`` pad the dilated input (length ``(length - 1) stride + 1``); ``out`` is the
    output length (for ``"circular"``, the folded length ``length * stride``).
    """
    if padding == "same":
        total = size + stride - 2
        lo = size - 1 if stride > size - 1 else -(-total // 2)
        hi = total - lo
    else:  # valid, and circular before the fold
        lo = size - 1
        hi = stride - 1 + max(size - stride, 0)
    dilated = (length - 1) * stride + 1
    out = dilated + lo + hi - size + 1
    if padding == "circular":
        out = length * stride
    return lo, hi, out


def _dilate(t: torch.Tensor, dims: tuple[int, ...], stride: int) -> torch.Tensor:
    """Insert ``stride - 1`` zeros between neighbours along every axis in ``dims``."""
    if stride == 1:
        return t
    shape = list(t.shape)
    index = [slice(None)] * t.ndim
    for d in dims:
        shape[d] = (shape[d] - 1) * stride + 1
        index[d] = slice(None, None, stride)
    out = t.new_zeros(shape)
    out[tuple(index)] = t
    return out


def _fold(t: torch.Tensor, dims: tuple[int, ...], out: int) -> torch.Tensor:
    """Circular fold along ``dims``: location ``v`` adds into ``(v - (V - out) // 2) % out``."""
    length = t.shape[dims[0]]
    if length == out:
        return t
    idx = (torch.arange(length, device=t.device) - (length - out) // 2) % out
    for d in dims:
        shape = list(t.shape)
        shape[d] = out
        t = t.new_zeros(shape).index_add(d, idx, t)
    return t


class ConvTransposeModule(nn.Module):
    """Finite transposed convolution: ``scale * conv_transpose(x, W)``, cropped, + bias.

    ``weight`` is ``(C_in, C_out, *kernel_size)`` (torch's layout). Under NTK
    parameterization ``scale = w_std / sqrt(C_in prod(kernel_size))`` and ``b_scale = b_std``
    with standard-normal ``weight``/``bias``; under standard parameterization both scales are
    1 and the draws carry the variances.

    Args:
        in_channels: ``C_in``.
        out_channels: ``C_out``.
        kernel_size: One size per spatial axis.
        stride: One stride per spatial axis.
        crops: Per axis ``(start, end)`` amounts to crop from torch's full output (negative
            values zero-extend).
        folds: Per axis the folded length (circular padding), or ``None``.
        scale: Weight scale.
        b_scale: Bias scale; ``None`` means no bias.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: tuple[int, ...],
        stride: tuple[int, ...],
        crops: list[tuple[int, int]],
        folds: list[int | None],
        scale: float,
        b_scale: float | None,
    ):
        super().__init__()
        self.kernel_size = tuple(kernel_size)
        self.stride = tuple(stride)
        self.crops = [tuple(c) for c in crops]
        self.folds = list(folds)
        self.scale = float(scale)
        self.b_scale = None if b_scale is None else float(b_scale)
        self.weight = nn.Parameter(torch.empty(in_channels, out_channels, *kernel_size))
        if b_scale is None:
            self.register_parameter("bias", None)
        else:
            self.bias = nn.Parameter(torch.empty(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(n, C_in, *spatial)`` -> ``(n, C_out, *out_spatial)``."""
        y = _CONV_T_FNS[len(self.kernel_size)](x, self.weight, stride=self.stride)
        pads: list[int] = []
        for start, end in reversed(self.crops):
            pads += [-start, -end]
        if any(pads):
            y = F.pad(y, pads)
        for i, out in enumerate(self.folds):
            if out is not None:
                y = _fold(y, (2 + i,), out)
        y = y * self.scale
        if self.bias is not None:
            y = y + self.b_scale * self.bias.view(1, -1, *([1] * len(self.kernel_size)))
        return y

    def extra_repr(self) -> str:
        return (
            f"{self.weight.shape[0]}, {self.weight.shape[1]}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, crops={self.crops}, folds={self.folds}"
        )


class ConvTranspose(Layer):
    """Transposed convolution over ``(n, C, L)``, ``(n, C, H, W)`` or ``(n, C, D, H, W)``.

    Output sizes and padding follow the reference library (TF / ``jax.lax.conv_transpose``):
    ``"same"`` gives ``length * stride`` outputs, ``"valid"`` ``length * stride +
    max(kernel_size - stride, 0)``, ``"circular"`` folds the valid output onto
    ``length * stride`` locations; see the module docstring for the paddings and the map to
    ``torch.nn.ConvTranspose*d``.

    NTK parameterization (default): ``y = (w_std / sqrt(fan_in)) conv_transpose(x, W) +
    b_std b`` with standard-normal ``W`` and ``b`` and ``fan_in = C_in * prod(kernel_size)``
    (as the reference library, although each output sees only about ``1/stride`` of the
    taps per axis). Standard parameterization: ``W ~ N(0, w_std^2 / fan_in)``,
    ``b ~ N(0, b_std^2)``. The NNGP is ``w_std^2 mean_a q_dil(o + a - lo, o' + a - lo) +
    b_std^2`` over the taps ``a`` of the dilated input covariance ``q_dil``; the NTK follows
    :func:`ntkit.layers.dense.affine_kernel`.

    Args:
        out_channels: Output channels (the width that goes to infinity).
        kernel_size: Window size, an int for every spatial axis or one per axis.
        stride: Upsampling factor, int or one per axis.
        padding: ``"valid"`` (default), ``"same"`` or ``"circular"``.
        w_std: Weight standard deviation.
        b_std: Bias standard deviation; ``None`` (default) means no bias.
        parameterization: ``"ntk"`` or ``"standard"``.
    """

    memory_factor = 7.0

    def __init__(
        self,
        out_channels: int,
        kernel_size,
        *,
        stride=1,
        padding: str = "valid",
        w_std: float = 1.0,
        b_std: float | None = None,
        parameterization: str = "ntk",
    ):
        self.out_channels = check_conv_args(self.name, out_channels, kernel_size, stride)
        if not isinstance(padding, str) or padding.lower() not in _T_PADDINGS:
            raise ValueError(
                f"ConvTranspose padding must be one of {_T_PADDINGS}; got {padding!r}."
            )
        self.kernel_size = kernel_size
        self.stride = stride
        self.padding = padding.lower()
        self.w_std = check_std(w_std, "w_std", allow_none=False)
        self.b_std = check_std(b_std, "b_std", allow_none=True)
        self.parameterization = check_parameterization(parameterization)

    def _geometry(self, lengths: tuple[int, ...]):
        """Per axis ``(window over the dilated input, stride, folded length or None)``."""
        n = len(lengths)
        if n == 0:
            raise LayerSpecError(f"{self!r} needs inputs with spatial axes; got vector features.")
        sizes = as_tuple(self.kernel_size, n, "kernel_size", minimum=1)
        strides = as_tuple(self.stride, n, "stride", minimum=1)
        out = []
        for length, size, step in zip(lengths, sizes, strides):
            lo, hi, final = transpose_paddings(length, size, step, self.padding)
            window = AxisWindow((length - 1) * step + 1, size, 1, lo, hi)
            out.append((window, step, final if self.padding == "circular" else None))
        return out

    def out_shape(self, in_shape: Shape) -> Shape:
        _, lengths = spatial_input(repr(self), in_shape)
        geometry = self._geometry(lengths)
        return (self.out_channels, *(f if f is not None else w.out for w, _, f in geometry))

    def input_layout(self, diagonal_spatial):
        # the circular fold adds up different locations: it needs the full covariance
        return diagonal_spatial and self.padding != "circular"

    def working_entries(self, k: Kernel) -> float:
        _, lengths = spatial_input(repr(self), k.shape)
        power = 1 if k.diagonal_spatial else 2
        growth = 1.0
        for (w, _, _), length in zip(self._geometry(lengths), lengths):
            growth *= (max(w.length + w.lo + w.hi, w.out) / length) ** power
        return self.memory_factor * growth * k.entries_per_pair

    def kernel_rule(self, k: Kernel) -> Kernel:
        channels, lengths = spatial_input(repr(self), k.shape)
        geometry = self._geometry(lengths)
        diagonal = k.diagonal_spatial
        windows = [w for w, _, _ in geometry]

        def transform(t, batch_axes):
            for i, (_, step, _) in enumerate(geometry):
                d = batch_axes + (i if diagonal else 2 * i)
                t = _dilate(t, (d,) if diagonal else (d, d + 1), step)
            t = patch_sum(t, batch_axes, windows, diagonal)
            for i, (_, _, fold) in enumerate(geometry):
                if fold is not None:  # circular: never with the diagonal layout
                    d = batch_axes + 2 * i
                    t = _fold(t, (d, d + 1), fold)
            return t

        summed = map_covariances(k, transform)
        taps = math.prod(w.size for w in windows)
        return affine_kernel(
            summed,
            w2=self.w_std**2 / taps,
            b_std=self.b_std,
            parameterization=self.parameterization,
            fan_in=channels,
            out_shape=self.out_shape(k.shape),
            inplace=True,
        )

    def build_module(self, in_shape: Shape, generator: torch.Generator) -> nn.Module:
        channels, lengths = spatial_input(repr(self), in_shape)
        geometry = self._geometry(lengths)
        sizes = tuple(w.size for w, _, _ in geometry)
        strides = tuple(step for _, step, _ in geometry)
        crops = [(w.size - 1 - w.lo, w.size - 1 - w.hi) for w, _, _ in geometry]
        folds = [f for _, _, f in geometry]
        fan_in = channels * math.prod(sizes)
        scale, b_scale, w_draw, b_draw = init_scales(
            self.w_std, self.b_std, fan_in, self.parameterization
        )
        mod = ConvTransposeModule(
            channels, self.out_channels, sizes, strides, crops, folds, scale, b_scale
        )
        mod.weight.copy_(_init.normal(tuple(mod.weight.shape), generator, w_draw))
        if mod.bias is not None:
            mod.bias.copy_(_init.normal((self.out_channels,), generator, b_draw))
        return mod

    def __repr__(self) -> str:
        return conv_repr(self)
