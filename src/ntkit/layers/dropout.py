"""Dropout in training mode, with torch's convention: ``rate`` is the drop probability."""

from __future__ import annotations

import torch
from torch import nn

from ntkit.kernel import Kernel
from ntkit.layers._params import hyperparameter, value_of
from ntkit.layers._spatial import location_diagonal, n_spatial
from ntkit.layers.base import Layer, Shape, single_stream

__all__ = ["Dropout"]


def _scale_same_location(t: torch.Tensor, factor: float, n_sp: int, diagonal: bool):
    """A copy of ``t`` (one leading batch axis) with its same-location entries times ``factor``."""
    if n_sp == 0 or diagonal:
        return t * factor
    if t.requires_grad and torch.is_grad_enabled():
        scaled = location_diagonal(t, n_sp, pair=False) * factor
        out = t.clone()
        location_diagonal(out, n_sp, pair=False).copy_(scaled)
        return out
    out = t.clone()
    location_diagonal(out, n_sp, pair=False).mul_(factor)
    return out


class Dropout(Layer):
    """Dropout as ``torch.nn.Dropout(p=rate)`` in training mode.

    Every activation is kept with probability ``1 - rate`` and scaled by ``1 / (1 - rate)``
    (``rate`` is the *drop* probability, as in torch; the field's JAX reference library
    uses the keep probability instead). A sample's mask is independent of every other
    sample's, so only the covariance of an activation with itself grows, by
    ``1 / (1 - rate)``: the entries that pair a sample with itself at the same location
    (``cov1``/``cov2`` and, when ``x2`` is ``x1``, the batch diagonal of ``nngp``/``ntk``).
    Between two different batches every entry is unchanged, even for equal inputs
    (their masks are independent). The output is not Gaussian.

    Args:
        rate: Drop probability ``p``, ``0 <= p < 1``.
    """

    memory_factor = 3.0

    def __init__(self, rate: float):
        try:
            self.rate = hyperparameter(rate, "Dropout rate", minimum=0.0, maximum=1.0)
        except ValueError:
            raise ValueError(
                f"Dropout rate is the drop probability (torch convention) and must be in "
                f"[0, 1); got {rate}."
            ) from None
        if value_of(self.rate) == 1.0:
            raise ValueError(
                "Dropout rate is the drop probability (torch convention) and must be in "
                "[0, 1); got 1.0."
            )

    def out_shape(self, in_shape: Shape) -> Shape:
        return single_stream("Dropout", in_shape)

    def kernel_rule(self, k: Kernel) -> Kernel:
        factor = 1.0 / (1.0 - self.rate)
        n_sp = n_spatial(k)
        diag = k.diagonal_spatial

        def scale_cov(cov):
            if cov is None:
                return None
            return _scale_same_location(cov, factor, n_sp, diag)

        def scale_pairs(t):
            if t is None or not k.x1_is_x2:
                return t
            n1, n2 = t.shape[:2]
            rows = torch.arange(n1, device=t.device)
            cols = rows + k.pair_shift
            keep = (cols >= 0) & (cols < n2)
            rows, cols = rows[keep], cols[keep]
            if rows.numel() == 0:
                return t
            out = t.clone()
            out[rows, cols] = _scale_same_location(t[rows, cols], factor, n_sp, diag)
            return out

        return k.replace(
            nngp=scale_pairs(k.nngp),
            ntk=scale_pairs(k.ntk),
            cov1=scale_cov(k.cov1),
            cov2=scale_cov(k.cov2),
            is_gaussian=False,
        )

    def build_module(self, in_shape: Shape, generator: torch.Generator) -> nn.Module:
        return nn.Dropout(value_of(self.rate))

    def __repr__(self) -> str:
        return f"Dropout(rate={value_of(self.rate)})"
