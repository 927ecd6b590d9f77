"""Finite ``torch.nn.Module`` building blocks that layer descriptions instantiate.

Standard-parameterized dense layers are plain ``torch.nn.Linear``; the modules here cover
what torch lacks: NTK-parameterized affine maps, elementwise nonlinearities given as
functions, and the multi-stream plumbing of fan-out / fan-in networks (streams are lists).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "DenseNTK",
    "ElementwiseModule",
    "FanInConcatModule",
    "FanInProdModule",
    "FanInSumModule",
    "FanOutModule",
    "ParallelModule",
]


class DenseNTK(nn.Module):
    """Affine map in NTK parameterization: ``y = (w_std / sqrt(fan_in)) x W^T + b_std b``.

    ``weight`` (out, in) and ``bias`` (out,) are standard normal at initialization; the
    scale factors are constants, so gradients with respect to ``weight`` carry the
    ``1/sqrt(fan_in)`` factor (Jacot et al. 2018; Lee et al. 2019, eq. 1).

    Args:
        in_features: Fan-in ``d``.
        out_features: Fan-out.
        w_std: Weight standard deviation ``sigma_w``.
        b_std: Bias standard deviation ``sigma_b``; ``None`` means no bias.
    """

    def __init__(self, in_features: int, out_features: int, w_std: float, b_std: float | None):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.w_std = float(w_std)
        self.b_std = None if b_std is None else float(b_std)
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        if b_std is None:
            self.register_parameter("bias", None)
        else:
            self.bias = nn.Parameter(torch.empty(out_features))

    @property
    def weight_scale(self) -> float:
        """The constant multiplying ``x W^T``: ``w_std / sqrt(in_features)``."""
        return self.w_std / math.sqrt(self.in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``(n, in_features)`` to ``(n, out_features)``."""
        y = F.linear(x, self.weight) * self.weight_scale
        if self.bias is not None:
            y = y + self.b_std * self.bias
        return y

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"w_std={self.w_std}, b_std={self.b_std}"
        )


class ElementwiseModule(nn.Module):
    """Applies an elementwise function ``fn`` (a torch-expressible nonlinearity)."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], name: str = "Elementwise"):
        super().__init__()
        self.fn = fn
        self.name = name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Same shape out as in."""
        return self.fn(x)

    def extra_repr(self) -> str:
        return self.name


class FanOutModule(nn.Module):
    """Copies one stream into ``n`` streams (a list)."""

    def __init__(self, n: int):
        super().__init__()
        self.n = n

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Return ``[x] * n``."""
        return [x] * self.n


class ParallelModule(nn.Module):
    """Applies the i-th module to the i-th stream."""

    def __init__(self, modules: list[nn.Module]):
        super().__init__()
        self.branches = nn.ModuleList(modules)

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        """Map a list of ``len(branches)`` streams to as many streams."""
        return [m(x) for m, x in zip(self.branches, xs, strict=True)]


class FanInSumModule(nn.Module):
    """Sums a list of streams."""

    def forward(self, xs: list[torch.Tensor]) -> torch.Tensor:
        """Elementwise sum of same-shaped streams."""
        out = xs[0]
        for x in xs[1:]:
            out = out + x
        return out


class FanInProdModule(nn.Module):
    """Multiplies a list of streams elementwise (Hadamard product)."""

    def forward(self, xs: list[torch.Tensor]) -> torch.Tensor:
        """Elementwise product of same-shaped streams."""
        out = xs[0]
        for x in xs[1:]:
            out = out * x
        return out


class FanInConcatModule(nn.Module):
    """Concatenates a list of streams along the channel/feature axis (dim 1)."""

    def forward(self, xs: list[torch.Tensor]) -> torch.Tensor:
        """``torch.cat(xs, dim=1)``."""
        return torch.cat(xs, dim=1)
