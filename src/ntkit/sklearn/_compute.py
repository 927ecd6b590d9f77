"""Kernel blocks and diagonals for the scikit-learn wrappers (float64, tiled, O(n) diagonals)."""

from __future__ import annotations

import torch

from ntkit.layers.base import Layer

__all__ = ["DIAGONAL_CHUNK", "kernel_block", "kernel_diagonal"]

#: Samples per chunk when an NTK diagonal is computed from small symmetric blocks: the cost
#: is ``n * DIAGONAL_CHUNK`` kernel entries (linear in ``n``), and the chunk is large enough
#: that the per-call overhead (about 2 ms) does not dominate.
DIAGONAL_CHUNK = 128

KINDS = ("ntk", "nngp")


def kernel_block(
    net: Layer,
    x1: torch.Tensor,
    x2: torch.Tensor | None,
    *,
    kind: str,
    max_memory: int | None,
) -> torch.Tensor:
    """``kind`` kernel of ``net`` between two batches, ``(n1, n2)`` float64.

    Computed by ``net.kernel`` (the planned, tiled driver: tiles stay inside ``max_memory``,
    ``x2=None`` computes the upper triangle once and is exactly symmetric).
    """
    get = ("nngp", "ntk") if kind == "ntk" else "nngp"
    k = net.kernel(x1, x2, get=get, dtype=torch.float64, max_memory=max_memory)
    return getattr(k, kind)


def kernel_diagonal(
    net: Layer, x: torch.Tensor, *, kind: str, max_memory: int | None
) -> torch.Tensor:
    """``k(x_i, x_i)`` for every sample, ``(n,)`` float64, in ``O(n)`` work.

    The NNGP diagonal is the batch-diagonal variance every kernel computation carries along
    (``Kernel.cov1``), obtained from the kernel of ``x`` against a single sample: ``O(n)``.
    The NTK diagonal is read off symmetric blocks of :data:`DIAGONAL_CHUNK` samples
    (``O(n * DIAGONAL_CHUNK)``), each computed with the same exact same-sample pairing
    (angle exactly 0) as the full kernel, so it equals ``diag(K(x, x))``.
    """
    if kind == "nngp":
        k = net.kernel(x, x[:1], get="nngp", dtype=torch.float64, max_memory=max_memory)
        return k.cov1.reshape(x.shape[0])
    parts = [
        kernel_block(net, x[i : i + DIAGONAL_CHUNK], None, kind=kind, max_memory=max_memory)
        .diagonal()
        .clone()
        for i in range(0, x.shape[0], DIAGONAL_CHUNK)
    ]
    return torch.cat(parts)
