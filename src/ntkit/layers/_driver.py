"""Planned, tiled evaluation of a layer description's kernel.

Every infinite-width layer acts on each pair of inputs separately (given the inputs'
variances), so the ``(n1, n2)`` kernel is computed tile by tile:

1. validate the inputs and the description (shapes, then a one-pair probe run, which also
   records each layer's working-memory footprint per pair);
2. decide the spatial layout from the whole description (full location-by-location
   covariance only where a later layer needs it);
3. size the tiles so result + working memory stay inside ``max_memory``, or refuse with the
   estimate;
4. per block of rows, compute the input covariance (one matrix product), then run the
   layers on cache-sized tiles. With ``x2=None`` only the upper triangle is computed and
   mirrored, so the result is exactly symmetric.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch

from ntkit._validation import as_batch, check_same_features
from ntkit.kernel import Kernel
from ntkit.layers._spatial import transpose_pair
from ntkit.layers.base import Layer, LayerSpecError
from ntkit.settings import default_kernel_dtype, default_max_memory, format_bytes

#: Tile size (kernel entries) for the layer chain on CPU: keeps tiles in cache.
CPU_TILE_ENTRIES = 2**18
#: Tile size on CUDA: large tiles amortize kernel launches.
CUDA_TILE_ENTRIES = 2**26
#: Rows per block of the input covariance (one matrix product per block).
BLOCK_ROWS = 256

_recorder: list[list[tuple[float, int]]] = []


def record_footprint(layer: Layer, k) -> None:
    """During a probe run, record (working entries, kernel entries) per pair of ``k``.

    Working entries come from ``layer.working_entries(k)`` (by default ``memory_factor``
    x the entries per pair of the input kernel).
    """
    if not _recorder:
        return
    kernels = k if isinstance(k, list) else [k]
    entries = sum(entries_per_pair(ki) for ki in kernels)
    _recorder[-1].append((float(layer.working_entries(k)), entries))


def entries_per_pair(k: Kernel) -> int:
    """Entries of ``k.nngp`` per ``(x1, x2)`` pair (the product of its spatial axes)."""
    return math.prod(k.nngp.shape[2:])


_entries_per_pair = entries_per_pair


@contextlib.contextmanager
def _recording() -> Iterator[list[tuple[float, int]]]:
    _recorder.append([])
    try:
        yield _recorder[-1]
    finally:
        _recorder.pop()


def _parse_get(get) -> bool:
    """Return whether the NTK is wanted; validate ``get``."""
    names = (get,) if isinstance(get, str) else tuple(get)
    unknown = [g for g in names if g not in ("nngp", "ntk")]
    if unknown or not names:
        raise ValueError(f"get must be 'nngp', 'ntk' or ('nngp', 'ntk'); got {get!r}.")
    return "ntk" in names


# ----------------------------------------------------------------------------- input kernel
_LETTERS = "pqrstuvw"  # spatial axes; i, j, c are batch and channel


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


def _input_kernel(nngp, cov1, cov2, shape, diagonal_spatial, want_ntk, x1_is_x2, shift):
    return Kernel(
        nngp=nngp,
        ntk=torch.zeros_like(nngp) if want_ntk else None,
        cov1=cov1,
        cov2=cov2,
        shape=shape,
        is_gaussian=False,
        independent=False,
        diagonal_spatial=diagonal_spatial,
        x1_is_x2=x1_is_x2,
        pair_shift=shift,
    )


# ----------------------------------------------------------------------------- the driver
def compute_kernel(
    net: Layer,
    x1,
    x2=None,
    *,
    get=("nngp", "ntk"),
    dtype: torch.dtype | None = None,
    max_memory: int | None = None,
) -> Kernel:
    """Evaluate ``net``'s infinite-width kernel between ``x1`` and ``x2``; see ``Layer.kernel``."""
    want_ntk = _parse_get(get)
    dtype = default_kernel_dtype() if dtype is None else dtype
    if not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating dtype; got {dtype}.")
    x1 = as_batch(x1, "x1", dtype=dtype)
    explicit_x2 = x2 is not None
    if explicit_x2:
        x2 = as_batch(x2, "x2", dtype=dtype, device=None)
        check_same_features(x1, x2)
    symmetric = (not explicit_x2) or x2 is x1 or (x2.shape == x1.shape and torch.equal(x1, x2))
    x2 = x1 if symmetric else x2

    in_shape = tuple(x1.shape[1:])
    out_shape = net.out_shape(in_shape)
    if isinstance(out_shape, list):
        raise LayerSpecError(
            f"the network ends with {len(out_shape)} streams; close them with FanInSum, "
            "FanInConcat or FanInProd."
        )
    diagonal_spatial = net.input_layout(False)
    if isinstance(diagonal_spatial, list):
        diagonal_spatial = all(diagonal_spatial)
    diagonal_spatial = bool(diagonal_spatial) and x1.ndim > 2

    var1 = input_variances(x1, diagonal_spatial)
    var2 = var1 if symmetric else input_variances(x2, diagonal_spatial)

    # Probe one pair: validates the description and records working memory per pair.
    with _recording() as footprints:
        probe_in = _input_kernel(
            input_covariance(x1[:1], x2[:1], diagonal_spatial),
            var1[:1],
            var2[:1],
            in_shape,
            diagonal_spatial,
            want_ntk,
            False,
            0,
        )
        probe = net.apply_kernel(probe_in)
    if isinstance(probe, list):
        raise LayerSpecError("the network ends with several streams; close them with a FanIn.")

    n1, n2 = x1.shape[0], x2.shape[0]
    itemsize = torch.finfo(dtype).bits // 8
    out_entries = _entries_per_pair(probe)
    n_out = 2 if want_ntk else 1
    result_bytes = n1 * n2 * out_entries * itemsize * n_out
    pair_bytes = max([w for w, _ in footprints] + [1.0]) * itemsize
    device = x1.device
    budget = default_max_memory(device) if max_memory is None else int(max_memory)
    working = budget - result_bytes
    if working < pair_bytes:
        raise ValueError(
            f"max_memory={format_bytes(budget)} cannot hold this kernel: the result needs "
            f"{format_bytes(result_bytes)} ({n1} x {n2} pairs x {out_entries} entries x "
            f"{n_out} kernel(s) x {itemsize} bytes) and one pair of inputs needs "
            f"{format_bytes(pair_bytes)} of working memory, so at least "
            f"{format_bytes(result_bytes + pair_bytes)} is required. Raise max_memory, "
            "use get='nngp', float32, or split x1/x2 into batches."
        )
    max_pairs = max(1, int(working // pair_bytes))
    target = CUDA_TILE_ENTRIES if device.type == "cuda" else CPU_TILE_ENTRIES
    entries_in = _entries_per_pair(probe_in)
    widest = max([entries_in, out_entries] + [e for _, e in footprints])  # entries per pair
    tile_pairs = max(1, min(max_pairs, int(target // widest)))
    tile_cols = min(n2, tile_pairs)
    tile_rows = max(1, min(n1, tile_pairs // tile_cols))
    block_rows = tile_rows * max(1, BLOCK_ROWS // tile_rows)
    # the input covariance block must fit next to the working tiles
    max_block_rows = max(
        tile_rows, int((working // 2) // max(1, tile_cols * entries_in * itemsize))
    )
    block_rows = min(block_rows, max_block_rows, n1)
    if symmetric:  # the block's same-batch square must lie inside one column chunk
        block_rows = min(block_rows, tile_cols)

    out_nngp = torch.empty((n1, n2, *probe.nngp.shape[2:]), dtype=dtype, device=device)
    out_ntk = torch.empty_like(out_nngp) if want_ntk else None
    out_cov1 = torch.empty((n1, *probe.cov1.shape[1:]), dtype=dtype, device=device)
    out_cov2 = (
        None if symmetric else torch.empty((n2, *probe.cov1.shape[1:]), dtype=dtype, device=device)
    )
    n_sp = len(probe.shape) - 1

    for i0 in range(0, n1, block_rows):
        i1 = min(n1, i0 + block_rows)
        for j0 in range(i0 if symmetric else 0, n2, tile_cols):
            j1 = min(n2, j0 + tile_cols)
            block = input_covariance(x1[i0:i1], x2[j0:j1], diagonal_spatial)
            if symmetric and j0 == i0:
                _fix_diagonal_square(
                    block, var1[i0:i1], n_sp_in=x1.ndim - 2, diagonal_spatial=diagonal_spatial
                )
            for a0 in range(i0, i1, tile_rows):
                a1 = min(i1, a0 + tile_rows)
                k_in = _input_kernel(
                    block[a0 - i0 : a1 - i0],
                    var1[a0:a1],
                    var2[j0:j1],
                    in_shape,
                    diagonal_spatial,
                    want_ntk,
                    symmetric,
                    a0 - j0,
                )
                k_out = net.apply_kernel(k_in)
                out_nngp[a0:a1, j0:j1] = k_out.nngp
                if want_ntk:
                    out_ntk[a0:a1, j0:j1] = k_out.ntk
                out_cov1[a0:a1] = k_out.cov1
                if symmetric:
                    out_nngp[j0:j1, a0:a1] = transpose_pair(
                        k_out.nngp, n_sp, probe.diagonal_spatial
                    )
                    if want_ntk:
                        out_ntk[j0:j1, a0:a1] = transpose_pair(
                            k_out.ntk, n_sp, probe.diagonal_spatial
                        )
                elif a0 == 0:
                    out_cov2[j0:j1] = k_out.cov2
    if symmetric:
        for i0 in range(0, n1, block_rows):
            i1 = min(n1, i0 + block_rows)
            for out in (out_nngp, out_ntk) if want_ntk else (out_nngp,):
                square = out[i0:i1, i0:i1]
                square.copy_((square + transpose_pair(square, n_sp, probe.diagonal_spatial)) / 2)

    return probe.replace(
        nngp=out_nngp,
        ntk=out_ntk,
        cov1=out_cov1,
        cov2=(out_cov1 if explicit_x2 else None) if symmetric else out_cov2,
        x1_is_x2=symmetric,
        pair_shift=0,
    )


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
