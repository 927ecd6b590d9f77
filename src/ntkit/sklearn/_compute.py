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

#: Kernels with at least this many entries show a progress bar unless ``progress=False``
#: (about 4000 x 4000: seconds of work on a CPU; smaller ones, as in a grid search or a GP
#: optimizer's many evaluations, stay silent unless ``progress=True``).
PROGRESS_ENTRIES = 2**24


def show_progress(progress: bool | None, n1: int, n2: int) -> bool:
    """Whether to show a bar: ``progress``, or for ``None`` a kernel of enough entries.

    ``None`` means: only for an ``(n1, n2)`` kernel of at least :data:`PROGRESS_ENTRIES`.
    """
    return n1 * n2 >= PROGRESS_ENTRIES if progress is None else bool(progress)


def kernel_block(
    net: Layer,
    x1: torch.Tensor,
    x2: torch.Tensor | None,
    *,
    kind: str,
    max_memory: int | None,
    progress: bool | None = None,
) -> torch.Tensor:
    """``kind`` kernel of ``net`` between two batches, ``(n1, n2)`` float64.

    Fully connected ReLU-family specs on flat inputs take the one in-place pass of
    :mod:`ntkit.sklearn._tangents` (the same numbers as the layers' path); every other spec
    is computed by :func:`ntkit.tiling.kernel_matrix` (planned tiles inside ``max_memory``).
    ``x2=None`` computes the part on and above the diagonal once and is exactly symmetric.

    Args:
        net: The network description (ending in a readout).
        x1: ``(n1, *in_shape)`` inputs.
        x2: ``(n2, *in_shape)`` inputs, or ``None`` for ``x2 = x1``.
        kind: ``"ntk"`` or ``"nngp"``.
        max_memory: Memory budget in bytes (``None``: the default budget).
        progress: Show a progress bar; ``None``: only for kernels of at least
            :data:`PROGRESS_ENTRIES` entries (several seconds of work).

    Returns:
        The ``(n1, n2)`` float64 kernel.
    """
    from ntkit.sklearn._tangents import kernel_and_tangents
    from ntkit.tiling import kernel_matrix

    get = ("nngp", "ntk") if kind == "ntk" else "nngp"
    n2 = x1.shape[0] if x2 is None else x2.shape[0]
    progress = show_progress(progress, x1.shape[0], n2)
    fused = kernel_and_tangents(
        net, [], x1, x2, kind=kind, max_memory=max_memory, progress=progress
    )
    if fused is not None:
        return fused[0]
    k = kernel_matrix(
        net,
        x1,
        x2,
        get=get,
        dtype=torch.float64,
        max_memory=max_memory,
        progress=progress,
    )
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
        k = net.kernel(
            x, x[:1], get="nngp", dtype=torch.float64, max_memory=max_memory, progress=False
        )
        return k.cov1.reshape(x.shape[0])
    parts = [
        kernel_block(
            net, x[i : i + DIAGONAL_CHUNK], None, kind=kind, max_memory=max_memory, progress=False
        )
        .diagonal()
        .clone()
        for i in range(0, x.shape[0], DIAGONAL_CHUNK)
    ]
    return torch.cat(parts)
