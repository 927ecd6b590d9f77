"""Planned, tiled evaluation of a layer description's kernel.

Every infinite-width layer acts on each pair of inputs separately (given the inputs'
variances), so the ``(n1, n2)`` kernel is computed tile by tile:

1. validate the inputs and the description (shapes, then a one-pair probe run, which also
   records each layer's working-memory footprint per pair);
2. decide the spatial layout from the whole description (full location-by-location
   covariance only where a later layer needs it);
3. size the tiles so result + working memory stay inside ``max_memory``, or refuse with the
   estimate;
4. per tile of ``r x c`` pairs, compute the input covariance (one matrix product) and the
   variances, then run the layers; on CPU, tiles run concurrently, one per torch thread.
   With ``x2=None`` only the upper triangle is computed and mirrored, so the result is
   exactly symmetric.
"""

from __future__ import annotations

import collections
import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from ntkit._validation import as_batch, check_same_features
from ntkit.kernel import Kernel
from ntkit.layers._autograd import differentiable_kernel, needs_grad
from ntkit.layers._spatial import n_spatial, transpose_pair
from ntkit.layers.base import Layer, LayerSpecError
from ntkit.settings import default_kernel_dtype, default_max_memory, format_bytes

#: Tile size (kernel entries) for the layer chain on CPU: 2 MiB float64 arrays, cache-sized.
CPU_TILE_ENTRIES = 2**18
#: Fewest pairs per tile when the budget allows (4 x 4): every tile also pushes its rows' and
#: columns' variances through the layers, r + c per r x c pairs, which for big spatial
#: kernels (16x16 images: 65536 entries per pair) would otherwise double the work.
MIN_TILE_PAIRS = 16
#: Tile size on CUDA: large tiles amortize kernel launches.
CUDA_TILE_ENTRIES = 2**26
#: On CPU, compute tiles concurrently (one per torch thread, each single-threaded).
PARALLEL_TILES = True

_recorder: list[list[tuple[float, int, str]]] = []


def record_footprint(layer: Layer, k) -> None:
    """During a probe run, record (working entries, kernel entries) per pair of ``k``.

    Working entries come from ``layer.working_entries(k)`` (by default ``memory_factor``
    x the entries per pair of the input kernel).
    """
    if not _recorder:
        return
    kernels = k if isinstance(k, list) else [k]
    entries = sum(ki.entries_per_pair for ki in kernels)
    _recorder[-1].append((float(layer.working_entries(k)), entries, repr(layer)))


@contextlib.contextmanager
def _recording() -> Iterator[list[tuple[float, int, str]]]:
    _recorder.append([])
    try:
        yield _recorder[-1]
    finally:
        _recorder.pop()


# ----------------------------------------------------------------------------- host memory
#: Keep freed tile buffers in the process heap while a kernel is computed (glibc only).
#: Every tile allocates and frees arrays of megabytes; glibc returns them to the OS and
#: the next tile page-faults them back in, which on virtual machines costs more than the
#: arithmetic (measured: 2-3x slower CNN kernels). Set to False to leave malloc alone.
RETAIN_HEAP = True

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_libc = None


def _glibc():
    global _libc
    if _libc is None:
        _libc = False
        try:
            import ctypes
            import ctypes.util
            import platform

            if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
                _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        except (OSError, AttributeError):
            _libc = False
    return _libc


@contextlib.contextmanager
def _retained_heap(enabled: bool) -> Iterator[None]:
    """Serve large CPU allocations from the heap and do not trim it, then trim once.

    Afterwards the trim threshold returns to glibc's default (128 KiB) and ``malloc_trim``
    hands the freed memory back, so the process does not keep the peak. The mmap threshold
    stays at 32 MiB (setting it ends glibc's dynamic adjustment, which moves it towards that
    value anyway once large blocks have been freed).
    """
    libc = _glibc() if (enabled and RETAIN_HEAP) else False
    if not libc:
        yield
        return
    libc.mallopt(_M_MMAP_THRESHOLD, 32 * 2**20)  # glibc's maximum
    libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1)  # an int: the largest
    try:
        yield
    finally:
        libc.mallopt(_M_TRIM_THRESHOLD, 128 * 2**10)
        libc.malloc_trim(0)


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
    if needs_grad(net, x1, x2):  # autograd: tiled forward, tile-wise recomputing backward
        return differentiable_kernel(
            compute_kernel, net, x1, x2, get=get, dtype=dtype, max_memory=max_memory
        )
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

    n1, n2 = x1.shape[0], x2.shape[0]
    device = x1.device
    itemsize = torch.finfo(dtype).bits // 8
    budget = default_max_memory(device) if max_memory is None else int(max_memory)
    _check_one_pair_fits(x1, diagonal_spatial, want_ntk, itemsize, budget)

    # Probe one pair: validates the description and records working memory per pair.
    with _recording() as footprints:
        probe_in = _input_kernel(
            input_covariance(x1[:1], x2[:1], diagonal_spatial),
            input_variances(x1[:1], diagonal_spatial),
            input_variances(x2[:1], diagonal_spatial),
            in_shape,
            diagonal_spatial,
            want_ntk,
            False,
            0,
        )
        probe = net.apply_kernel(probe_in)
    if isinstance(probe, list):
        raise LayerSpecError("the network ends with several streams; close them with a FanIn.")

    plan = _plan(
        n1,
        n2,
        symmetric=symmetric,
        entries_in=probe_in.entries_per_pair,
        entries_out=probe.entries_per_pair,
        cov_entries_in=math.prod(probe_in.cov1.shape[1:]),
        cov_entries_out=math.prod(probe.cov1.shape[1:]),
        footprints=footprints,
        n_kernels=2 if want_ntk else 1,
        itemsize=itemsize,
        budget=budget,
        target=CUDA_TILE_ENTRIES if device.type == "cuda" else CPU_TILE_ENTRIES,
        workers=_workers(device),
    )
    out_nngp = torch.empty((n1, n2, *probe.nngp.shape[2:]), dtype=dtype, device=device)
    out_ntk = torch.empty_like(out_nngp) if want_ntk else None
    out_cov1 = torch.empty((n1, *probe.cov1.shape[1:]), dtype=dtype, device=device)
    out_cov2 = (
        None if symmetric else torch.empty((n2, *probe.cov1.shape[1:]), dtype=dtype, device=device)
    )
    n_sp = n_spatial(probe)

    workers = min(plan.workers, plan.n_tiles)
    with _retained_heap(device.type == "cpu"):
        _fill(
            net,
            x1,
            x2,
            _Outputs(out_nngp, out_ntk, out_cov1, out_cov2, n_sp, probe.diagonal_spatial),
            plan,
            symmetric=symmetric,
            diagonal_spatial=diagonal_spatial,
            want_ntk=want_ntk,
            in_shape=in_shape,
            workers=workers,
        )
    return probe.replace(
        nngp=out_nngp,
        ntk=out_ntk,
        cov1=out_cov1,
        cov2=(out_cov1 if explicit_x2 else None) if symmetric else out_cov2,
        x1_is_x2=symmetric,
        pair_shift=0,
    )


@dataclass(frozen=True)
class _Outputs:
    nngp: torch.Tensor
    ntk: torch.Tensor | None
    cov1: torch.Tensor
    cov2: torch.Tensor | None
    n_spatial: int
    diagonal: bool


def _workers(device: torch.device) -> int:
    """Tiles computed concurrently: one per CPU thread (each single-threaded), 1 on GPUs."""
    if device.type != "cpu" or not PARALLEL_TILES:
        return 1
    return max(1, torch.get_num_threads())


def _tiles(n1: int, n2: int, plan, symmetric: bool) -> Iterator[tuple[int, int, int, int]]:
    """``(a0, a1, j0, j1)`` row/column ranges; upper triangle only when symmetric.

    With ``x2 = x1`` every row range's first column range starts at its first row, so the
    same-batch square lies inside that tile (``tile_rows <= tile_cols``).
    """
    for a0 in range(0, n1, plan.tile_rows):
        a1 = min(n1, a0 + plan.tile_rows)
        for j0 in range(a0 if symmetric else 0, n2, plan.tile_cols):
            yield a0, a1, j0, min(n2, j0 + plan.tile_cols)


def _fill(
    net,
    x1,
    x2,
    out: _Outputs,
    plan,
    *,
    symmetric,
    diagonal_spatial,
    want_ntk,
    in_shape,
    workers: int,
) -> None:
    """Compute every tile of the result into the preallocated outputs.

    Tiles write disjoint parts of the outputs (the same-batch squares are symmetrized at
    the end), so on CPU they run concurrently in ``workers`` threads, each with one torch
    thread: no per-operation synchronization between cores, and a busy core delays only its
    own tile.
    """
    n1, n2 = x1.shape[0], x2.shape[0]

    def tile(a0, a1, j0, j1):
        var_rows = input_variances(x1[a0:a1], diagonal_spatial)
        block = input_covariance(x1[a0:a1], x2[j0:j1], diagonal_spatial)
        if symmetric and j0 == a0:
            var_cols = torch.cat([var_rows, input_variances(x2[a1:j1], diagonal_spatial)])
            _fix_diagonal_square(
                block, var_rows, n_sp_in=x1.ndim - 2, diagonal_spatial=diagonal_spatial
            )
        else:
            var_cols = input_variances(x2[j0:j1], diagonal_spatial)
        k_in = _input_kernel(
            block, var_rows, var_cols, in_shape, diagonal_spatial, want_ntk, symmetric, a0 - j0
        )
        del block
        k_out = net.apply_kernel(k_in)
        del k_in
        out.nngp[a0:a1, j0:j1] = k_out.nngp
        if want_ntk:
            out.ntk[a0:a1, j0:j1] = k_out.ntk
        if j0 == (a0 if symmetric else 0):
            out.cov1[a0:a1] = k_out.cov1
        if symmetric:
            # mirror the columns outside the same-batch square (symmetrized below)
            c0 = a1 - j0 if j0 == a0 else 0
            if c0 < j1 - j0:
                for src, dst in ((k_out.nngp, out.nngp), (k_out.ntk, out.ntk)):
                    if src is not None:
                        dst[j0 + c0 : j1, a0:a1] = transpose_pair(
                            src[:, c0:], out.n_spatial, out.diagonal
                        )
        elif a0 == 0:
            out.cov2[j0:j1] = k_out.cov2

    tiles = _tiles(n1, n2, plan, symmetric)
    if workers <= 1:
        for t in tiles:
            tile(*t)
    else:
        _run_parallel(tile, tiles, workers)
    if symmetric:
        for a0 in range(0, n1, plan.tile_rows):
            a1 = min(n1, a0 + plan.tile_rows)
            for t in (out.nngp, out.ntk) if want_ntk else (out.nngp,):
                square = t[a0:a1, a0:a1]
                square.copy_((square + transpose_pair(square, out.n_spatial, out.diagonal)) / 2)


def _run_parallel(fn, tiles, workers: int) -> None:
    """Run ``fn(*tile)`` for all tiles in ``workers`` threads with one torch thread each."""
    from concurrent.futures import ThreadPoolExecutor

    threads = torch.get_num_threads()

    def single_threaded():
        torch.set_num_threads(1)

    try:
        with ThreadPoolExecutor(max_workers=workers, initializer=single_threaded) as pool:
            pending: collections.deque = collections.deque()
            for t in tiles:  # at most 2 tiles per worker queued: bounded memory
                pending.append(pool.submit(fn, *t))
                if len(pending) >= 2 * workers:
                    pending.popleft().result()  # re-raises a tile's error
            while pending:
                pending.popleft().result()
    finally:
        torch.set_num_threads(threads)  # the workers changed torch's global setting


def _check_one_pair_fits(x1, diagonal_spatial, want_ntk, itemsize, budget) -> None:
    """Refuse before any work when the input kernel of ONE pair already exceeds the budget.

    A pair's input kernel holds ``prod(spatial)^2`` entries in the full layout (every
    location against every location), e.g. 2.5e9 for 224 x 224 images.
    """
    spatial = tuple(x1.shape[2:])
    per_pair = math.prod(spatial) ** (1 if diagonal_spatial else 2)
    need = per_pair * itemsize * (4 if want_ntk else 3)  # nngp, ntk, cov1, cov2
    if need > budget:
        layout = "same-location" if diagonal_spatial else "location-by-location"
        raise ValueError(
            f"max_memory={format_bytes(budget)} cannot hold this kernel: one pair of inputs "
            f"of spatial shape {spatial} has a {layout} covariance of {per_pair} entries, and "
            f"its input kernel alone needs {format_bytes(need)} (working memory comes on "
            "top). Splitting the batch cannot help: raise max_memory, use dtype=torch.float32 "
            "or get='nngp', downsample the inputs, or end the network with Flatten (which "
            "only needs same-location covariances)."
        )


@dataclass(frozen=True)
class _Plan:
    tile_rows: int
    tile_cols: int
    n_tiles: int
    workers: int  # tiles computed concurrently


def _plan(
    n1: int,
    n2: int,
    *,
    symmetric: bool,
    entries_in: int,
    entries_out: int,
    cov_entries_in: int,
    cov_entries_out: int,
    footprints: list,
    n_kernels: int,
    itemsize: int,
    budget: int,
    target: int,
    workers: int,
) -> _Plan:
    """Choose tiles so that result + working memory stay inside ``budget`` bytes.

    Memory model (bytes): the result ``n1 n2 entries_out n_kernels`` and the output
    variances; per tile of ``r x c`` pairs (``workers`` tiles at a time), the input kernel
    ``r c entries_in`` and the largest layer's working entries per pair times
    ``r c + (r + c) / 2`` (the variances go through the layers too).

    Raises:
        ValueError: not even one pair fits next to the result, with the numbers and
            the largest ``x1`` batch that would fit.
    """
    pair_work = max([w for w, *_ in footprints] + [float(entries_in)])
    pair_bytes = (pair_work + entries_in) * itemsize
    per_row = (n2 * entries_out * n_kernels + cov_entries_out) * itemsize
    kernel_bytes = n1 * n2 * entries_out * n_kernels * itemsize
    x2_part = 0 if symmetric else n2 * cov_entries_out * itemsize
    variance_bytes = n1 * cov_entries_out * itemsize + x2_part
    result_bytes = kernel_bytes + variance_bytes
    # smallest possible step: a 1 x 1 tile, its input pair and both variances
    one_pair = 2.0 * pair_bytes + 2 * cov_entries_in * itemsize
    working = budget - result_bytes
    if working < one_pair:
        largest = max(footprints, key=lambda f: f[0]) if footprints else None
        who = (
            f" (the largest layer, {largest[2]}, needs {largest[0] / max(largest[1], 1):.1f} x "
            f"{largest[1]} entries per pair)"
            if largest
            else ""
        )
        fits_rows = int((budget - one_pair - x2_part) // per_row)
        if fits_rows >= 1:
            advice = (
                f"With this budget at most {min(fits_rows, n1 - 1)} rows of x1 fit against the "
                f"{n2} of x2: pass x1 in batches of that size"
            )
        else:
            advice = "Splitting the batch cannot help at this budget"
        raise ValueError(
            f"max_memory={format_bytes(budget)} cannot hold this kernel: the result needs "
            f"{format_bytes(kernel_bytes)} ({n1} x {n2} pairs x {entries_out} entries x "
            f"{n_kernels} kernel(s) x {itemsize} bytes) and its variances "
            f"{format_bytes(variance_bytes)}, and one pair of inputs needs "
            f"{format_bytes(one_pair)} of working memory{who}, so at least "
            f"{format_bytes(result_bytes + one_pair)} is required. {advice}; or raise "
            "max_memory, use get='nngp' or dtype=torch.float32."
        )
    # pairs per tile: within the budget (shared by the concurrent tiles) and cache-sized
    per_worker = working / max(1, workers)
    max_pairs = max(1, int(per_worker / pair_bytes - 1))
    widest = max([entries_in, entries_out] + [e for _, e, *_ in footprints])
    tile_pairs = max(1, min(max_pairs, max(int(target // widest), MIN_TILE_PAIRS)))
    # square-ish tiles: every tile also pushes its r rows' and c columns' variances (and, for
    # dense inputs, their r + c feature vectors) through the layers, so r + c per r x c pairs
    # must stay small; row strips (r << c) would redo the columns' work for every strip.
    # Wider than square only when x1 has few rows.
    tile_cols = max(1, min(n2, max(math.isqrt(tile_pairs), tile_pairs // max(n1, 1))))
    tile_rows = max(1, min(n1, tile_pairs // tile_cols))
    if symmetric:  # the same-batch square must lie inside a row range's first tile
        tile_rows = min(tile_rows, tile_cols)
    starts = range(0, n1, tile_rows)  # column tiles from each row range's start (symmetric)
    n_tiles = sum(-(-(n2 - (a0 if symmetric else 0)) // tile_cols) for a0 in starts)
    return _Plan(tile_rows, tile_cols, n_tiles, workers)


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
