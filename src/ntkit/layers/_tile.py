"""The pure tile function: one block of a layer description's kernel.

:func:`kernel_tile` maps ``(net, x1_rows, x2_cols)`` to the :class:`~ntkit.Kernel` of that
block. It reads nothing but its arguments and writes nothing but its result, so it runs
anywhere: in the calling thread, in a worker thread, in a Dask worker, on a GPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ntkit.kernel import Kernel
from ntkit.layers._footprint import paused
from ntkit.layers._spatial import transpose_pair

_LETTERS = "pqrstuvw"  # spatial axes; i, j, c are batch and channel


@dataclass(frozen=True)
class TileLayout:
    """What every tile of one computation shares (picklable, a few fields).

    Attributes:
        in_shape: Per-sample input shape, ``(d,)`` or ``(C, *spatial)``.
        diagonal_spatial: Whether only same-location input covariances are needed.
        want_ntk: Whether the NTK is computed (else ``ntk`` is ``None``).
        symmetric: Whether ``x2`` is ``x1`` (tiles carry ``x1_is_x2`` and ``pair_shift``).
    """

    in_shape: tuple[int, ...]
    diagonal_spatial: bool
    want_ntk: bool
    symmetric: bool


def input_variances(x: torch.Tensor, diagonal_spatial: bool) -> torch.Tensor:
    """Batch-diagonal input covariance: ``sum_c x_c^2 / C`` per sample (and location pair).

    Args:
        x: ``(n, d)`` or ``(n, C, *spatial)``.
        diagonal_spatial: Keep only same-location entries.

    Returns:
        ``(n,)``, ``(n, *spatial)`` (diagonal) or ``(n, H, H', W, W')`` (full).
    """
    channels = x.shape[1]
    s = x.ndim - 2
    if s == 0 or diagonal_spatial:
        return (x * x).sum(dim=1) / channels
    a, b = _LETTERS[:s], _LETTERS[s : 2 * s]
    out = "".join(p + q for p, q in zip(a, b))
    return torch.einsum(f"ic{a},ic{b}->i{out}", x, x) / channels


def input_covariance(x1: torch.Tensor, x2: torch.Tensor, diagonal_spatial: bool) -> torch.Tensor:
    """Input NNGP ``x1 . x2 / C`` (the input kernel convention ``x1 @ x2.T / d``).

    Returns:
        ``(n1, n2)``, ``(n1, n2, *spatial)`` (diagonal) or ``(n1, n2, H, H', W, W')``.
    """
    channels = x1.shape[1]
    s = x1.ndim - 2
    if s == 0:
        return (x1 @ x2.T).div_(channels)
    a, b = _LETTERS[:s], _LETTERS[s : 2 * s]
    if diagonal_spatial:
        return torch.einsum(f"ic{a},jc{a}->ij{a}", x1, x2).div_(channels)
    out = "".join(p + q for p, q in zip(a, b))
    return torch.einsum(f"ic{a},jc{b}->ij{out}", x1, x2).div_(channels)


def input_kernel(
    nngp,
    cov1,
    cov2,
    layout: TileLayout,
    *,
    x1_is_x2: bool,
    shift: int,
    patterns=None,
    masks=None,
) -> Kernel:
    """The kernel entering the first layer: input covariances, zero NTK.

    ``patterns``: ``(rows' adjacency, columns' adjacency)`` for graph inputs, or ``None``;
    ``masks``: ``(rows' masks, columns' masks)`` for masked inputs, or ``None``.
    """
    return Kernel(
        nngp=nngp,
        ntk=torch.zeros_like(nngp) if layout.want_ntk else None,
        cov1=cov1,
        cov2=cov2,
        shape=layout.in_shape,
        is_gaussian=False,
        independent=False,
        diagonal_spatial=layout.diagonal_spatial,
        x1_is_x2=x1_is_x2,
        pair_shift=shift,
        pattern1=None if patterns is None else patterns[0],
        pattern2=None if patterns is None else patterns[1],
        mask1=None if masks is None else masks[0],
        mask2=None if masks is None else masks[1],
    )


def kernel_tile(
    net,
    x1_rows: torch.Tensor,
    x2_cols: torch.Tensor,
    layout: TileLayout,
    *,
    shift: int = 0,
    patterns=None,
    masks=None,
):
    """The kernel of one block of pairs: rows ``x1_rows`` against columns ``x2_cols``.

    Args:
        net: A layer description (:class:`ntkit.layers.Layer`).
        x1_rows: ``(r, *in_shape)``, rows ``a0:a1`` of ``x1``.
        x2_cols: ``(c, *in_shape)``, columns ``j0:j1`` of ``x2``.
        layout: What the tiles of this computation share.
        shift: ``a0 - j0``. With ``layout.symmetric`` and ``shift == 0`` the block starts on
            the diagonal: ``x2_cols[:r]`` is ``x1_rows``, and that square is made exactly
            symmetric with the exact variances on its diagonal.
        patterns: For graph inputs, the adjacency of the rows and of the columns.
        masks: For masked inputs, the masks of the rows and of the columns.

    Returns:
        The :class:`~ntkit.Kernel` of the block (``nngp``: ``(r, c, ...)``; ``cov1``: the
        rows' variances; ``cov2``: the columns'), or a list for a multi-stream network.
    """
    ds = layout.diagonal_spatial
    var_rows = input_variances(x1_rows, ds)
    block = input_covariance(x1_rows, x2_cols, ds)
    r = x1_rows.shape[0]
    if layout.symmetric and shift == 0:
        var_cols = torch.cat([var_rows, input_variances(x2_cols[r:], ds)])
        _fix_diagonal_square(block, var_rows, n_sp_in=x1_rows.ndim - 2, diagonal_spatial=ds)
    else:
        var_cols = input_variances(x2_cols, ds)
    k_in = input_kernel(
        block,
        var_rows,
        var_cols,
        layout,
        x1_is_x2=layout.symmetric,
        shift=shift,
        patterns=patterns,
        masks=masks,
    )
    del block
    with paused():  # tiles never add to a caller's footprint recording
        return net.apply_kernel(k_in)


def _fix_diagonal_square(block, var, *, n_sp_in: int, diagonal_spatial: bool) -> None:
    """Make the same-batch square of an input block exactly symmetric, with exact diagonal.

    The matrix product may round ``x_i . x_j`` and ``x_j . x_i`` differently, and
    ``x_i . x_i`` differently from the variance; both would break exact symmetry and let
    ``rho = 1`` drift to ``1 - eps`` (which moves arc-cosine NTKs by ~1e-9 relative).
    """
    m = var.shape[0]
    square = block[:, :m]
    square.copy_((square + transpose_pair(square, n_sp_in, diagonal_spatial)) / 2)
    idx = torch.arange(m, device=block.device)
    square[idx, idx] = var
