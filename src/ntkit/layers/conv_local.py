"""Locally connected layers: convolutions with untied weights (and biases) per location.

With a separate weight per output location, two different output locations depend on
independent weights, so their covariance vanishes; the same-location covariance is that of
the shared-weight convolution (Novak et al. 2019, arXiv 1810.05148, where this equivalence
explains why CNNs without pooling match locally connected networks). ntkit computes Conv's
window sum and keeps only the same-location entries, with zeros elsewhere in the full layout.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ntkit.kernel import Kernel
from ntkit.layers import _init
from ntkit.layers._spatial import map_covariances, n_spatial
from ntkit.layers.base import Shape
from ntkit.layers.conv import (
    SpatialPad,
    TapConvolution,
    flat_pads,
    init_scales,
    spatial_input,
)

__all__ = ["ConvLocal", "ConvLocalModule"]

_LETTERS = "pqrstuvw"


class ConvLocalModule(nn.Module):
    """Finite locally connected layer ``y[o] = scale * sum_{c, a} W[o, c, a] x[o s + a] + b[o]``.

    ``weight`` is ``(C_out, C_in, *kernel_size, *out_spatial)`` and ``bias``
    ``(C_out, *out_spatial)``: one of each per output location.

    Args:
        in_channels: ``C_in``.
        out_channels: ``C_out``.
        kernel_size: One size per spatial axis.
        stride: One stride per spatial axis.
        out_spatial: Output lengths.
        pads: ``F.pad`` amounts (last spatial axis first).
        circular: Circular instead of zero padding.
        scale: Weight scale (``w_std / sqrt(fan_in)`` under NTK parameterization, else 1).
        b_scale: Bias scale; ``None`` means no bias.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: tuple[int, ...],
        stride: tuple[int, ...],
        out_spatial: tuple[int, ...],
        pads: list[int],
        circular: bool,
        scale: float,
        b_scale: float | None,
    ):
        super().__init__()
        self.kernel_size = tuple(kernel_size)
        self.stride = tuple(stride)
        self.pad = SpatialPad(pads, circular)
        self.scale = float(scale)
        self.b_scale = None if b_scale is None else float(b_scale)
        self.weight = nn.Parameter(
            torch.empty(out_channels, in_channels, *kernel_size, *out_spatial)
        )
        if b_scale is None:
            self.register_parameter("bias", None)
        else:
            self.bias = nn.Parameter(torch.empty(out_channels, *out_spatial))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(n, C_in, *spatial)`` -> ``(n, C_out, *out_spatial)``."""
        patches = self.pad(x)
        nd = len(self.kernel_size)
        # gather windows by index (axis 2 + 2i becomes (out_i, k_i)); index_select, unlike
        # unfold, has a vmap batching rule, which keeps empirical NTKs fast
        for i, (size, step) in enumerate(zip(self.kernel_size, self.stride)):
            d = 2 + 2 * i
            out = (patches.shape[d] - size) // step + 1
            idx = (torch.arange(out, device=x.device) * step)[:, None] + torch.arange(
                size, device=x.device
            )
            patches = patches.index_select(d, idx.reshape(-1)).unflatten(d, (out, size))
        o, k = _LETTERS[:nd], _LETTERS[nd : 2 * nd]
        pairs = "".join(a + b for a, b in zip(o, k))
        y = torch.einsum(f"nc{pairs},dc{k}{o}->nd{o}", patches, self.weight) * self.scale
        if self.bias is not None:
            y = y + self.b_scale * self.bias
        return y

    def extra_repr(self) -> str:
        out_spatial = tuple(self.weight.shape[2 + len(self.kernel_size) :])
        return (
            f"{self.weight.shape[1]}, {self.weight.shape[0]}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, out_spatial={out_spatial}"
        )


def _location_identity(t: torch.Tensor, batch_axes: int, n_axes: int) -> torch.Tensor:
    """0/1 mask, broadcastable to full-layout ``t``: 1 where every axis pair is equal."""
    mask = None
    for i in range(n_axes):
        d = batch_axes + 2 * i
        eye = torch.eye(t.shape[d], dtype=t.dtype, device=t.device)
        shape = [1] * t.ndim
        shape[d], shape[d + 1] = t.shape[d], t.shape[d + 1]
        eye = eye.reshape(shape)
        mask = eye if mask is None else mask * eye
    return mask


class ConvLocal(TapConvolution):
    """Locally connected layer (untied weights per location), same arguments as ``Conv``.

    Each output location has its own weights ``W[o]`` ``(C_out, C_in, *kernel_size)`` and bias
    ``b[o]``. NTK parameterization (default): ``y[o] = (w_std / sqrt(fan_in)) sum W[o] x_window(o)
    + b_std b[o]`` with standard normal draws and ``fan_in = C_in * prod(kernel_size)``;
    standard parameterization draws ``W ~ N(0, w_std^2 / fan_in)``, ``b ~ N(0, b_std^2)``.
    The kernel equals :class:`ntkit.layers.Conv`'s at equal locations and is zero between
    different locations. So ``ConvLocal`` followed by ``Flatten`` has the same kernel as
    ``Conv`` followed by ``Flatten``, and differs once pooling mixes locations.

    Args:
        out_channels: Output channels (the width that goes to infinity).
        kernel_size: Window size, an int for every spatial axis or one per axis.
        stride: Step between output locations, int or one per axis.
        padding: ``"valid"`` (default), ``"same"``, ``"circular"`` or ints, as for ``Conv``.
        w_std: Weight standard deviation.
        b_std: Bias standard deviation; ``None`` (default) means no bias.
        parameterization: ``"ntk"`` or ``"standard"``.
    """

    def kernel_rule(self, k: Kernel) -> Kernel:
        out = super().kernel_rule(k)
        if k.diagonal_spatial:
            return out
        n = n_spatial(k)
        return map_covariances(out, lambda t, b: t * _location_identity(t, b, n))

    def build_module(self, in_shape: Shape, generator: torch.Generator) -> nn.Module:
        channels, lengths = spatial_input(repr(self), in_shape)
        windows = self._windows(lengths)
        sizes = tuple(w.size for w in windows)
        outs = tuple(w.out for w in windows)
        fan_in = channels * math.prod(sizes)
        scale, b_scale, w_draw, b_draw = init_scales(
            self.w_std, self.b_std, fan_in, self.parameterization
        )
        mod = ConvLocalModule(
            channels,
            self.out_channels,
            sizes,
            tuple(w.stride for w in windows),
            outs,
            flat_pads(windows),
            windows[0].circular,
            scale,
            b_scale,
        )
        mod.weight.copy_(_init.normal(tuple(mod.weight.shape), generator, w_draw))
        if mod.bias is not None:
            mod.bias.copy_(_init.normal(tuple(mod.bias.shape), generator, b_draw))
        return mod
