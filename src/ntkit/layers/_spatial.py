"""Index helpers for kernels with spatial axes.

Layouts (``S`` spatial axes, e.g. ``S = 2`` for images):

- full: ``nngp`` is ``(n1, n2, H, H', W, W')`` (one pair of axes per spatial axis) and
  ``cov1`` is ``(n1, H, H', W, W')``;
- diagonal (``diagonal_spatial``): ``nngp`` is ``(n1, n2, H, W)``, ``cov1`` is ``(n1, H, W)``;
- no spatial axes: ``nngp`` is ``(n1, n2)``, ``cov1`` is ``(n1,)``.
"""

from __future__ import annotations

import torch

from ntkit.kernel import Kernel


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
