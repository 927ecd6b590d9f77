"""Layer normalization over channels, per location."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ntkit.errors import LayerSpecError
from ntkit.kernel import Kernel
from ntkit.layers._params import hyperparameter, value_of
from ntkit.layers._spatial import pair_variances, self_variances
from ntkit.layers.base import Layer, Shape, single_stream

__all__ = ["ChannelLayerNorm", "LayerNorm"]


class ChannelLayerNorm(nn.Module):
    """``(x - mean_c x) / sqrt(var_c x + eps)`` over the channel axis (dim 1), per location.

    The same as ``torch.nn.LayerNorm(C, elementwise_affine=False)`` applied to the channels
    of every location of a channels-first ``(n, C, *spatial)`` tensor (biased variance).
    """

    def __init__(self, eps: float):
        super().__init__()
        self.eps = float(eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Same shape out as in, ``(n, C)`` or ``(n, C, *spatial)``."""
        moved = x.movedim(1, -1)
        out = F.layer_norm(moved, (moved.shape[-1],), eps=self.eps)
        return out.movedim(-1, 1)

    def extra_repr(self) -> str:
        return f"eps={self.eps}"


class LayerNorm(Layer):
    """Layer normalization over the channels (features) of every location, no affine part.

    Finite network: :class:`ChannelLayerNorm` (torch's ``F.layer_norm`` over channels, biased
    variance, ``eps`` added to it). At infinite width the channel mean of a zero-mean
    Gaussian pre-activation vanishes and its channel variance becomes the kernel's variance
    ``q``, so with ``c = q + eps`` at each location:
    ``nngp' = nngp / sqrt(c1(s) c2(s'))``, ``ntk' = ntk / sqrt(c1(s) c2(s'))``. The input must
    be Gaussian (right after a Dense/Conv/attention layer, or a sum of such); the output is.

    Args:
        eps: Added to the variance (default ``1e-5``, as ``torch.nn.LayerNorm``).
    """

    memory_factor = 4.0

    def __init__(self, eps: float = 1e-5):
        self.eps = hyperparameter(eps, "LayerNorm eps", minimum=0.0)

    def out_shape(self, in_shape: Shape) -> Shape:
        return single_stream("LayerNorm", in_shape)

    def kernel_rule(self, k: Kernel) -> Kernel:
        if not k.is_gaussian:
            raise LayerSpecError(
                "LayerNorm needs zero-mean Gaussian inputs (a Dense/Conv layer right before "
                "it): only then does the channel mean vanish at infinite width. Its input is "
                "not Gaussian (the network input, an activation, Flatten, Dropout, ...)."
            )
        eps = self.eps
        v1, v2 = pair_variances(k)
        inv = torch.rsqrt((v1 + eps) * (v2 + eps))

        def self_norm(cov):
            if cov is None:
                return None
            a, b = self_variances(cov, k)
            return cov * torch.rsqrt((a + eps) * (b + eps))

        return k.replace(
            nngp=k.nngp * inv,
            ntk=None if k.ntk is None else k.ntk * inv,
            cov1=self_norm(k.cov1),
            cov2=self_norm(k.cov2),
        )

    def build_module(self, in_shape: Shape, generator: torch.Generator) -> nn.Module:
        return ChannelLayerNorm(value_of(self.eps))

    def __repr__(self) -> str:
        return f"LayerNorm(eps={value_of(self.eps)})"
