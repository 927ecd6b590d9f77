"""The kernel planner: validation, a one-pair probe, the memory model and the tile plan.

Every infinite-width layer acts on each pair of inputs separately (given the inputs'
variances), so the ``(n1, n2)`` kernel is computed tile by tile. The planner

1. validates the inputs and the description (shapes, then a one-pair probe run, which also
   records each layer's working-memory footprint per pair, see :mod:`._footprint`);
2. decides the spatial layout from the whole description (full location-by-location
   covariance only where a later layer needs it);
3. sizes the tiles so result + working memory stay inside ``max_memory``, or refuses with
   the estimate.

It computes no tile itself (that is :func:`._tile.kernel_tile`) and holds no result (that
is a sink, :mod:`._sink`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from ntkit._validation import as_batch, check_same_features
from ntkit.errors import LayerSpecError
from ntkit.kernel import Kernel
from ntkit.layers._footprint import Footprint, recording
from ntkit.layers._tile import TileLayout, input_covariance, input_kernel, input_variances
from ntkit.layers.graph import split_graphs
from ntkit.layers.masking import split_masked
from ntkit.settings import default_kernel_dtype, format_bytes, resolve_max_memory

#: Tile size (kernel entries) for the layer chain on CPU: 2 MiB float64 arrays, cache-sized.
CPU_TILE_ENTRIES = 2**18
#: Fewest pairs per tile when the budget allows (4 x 4): every tile also pushes its rows' and
#: columns' variances through the layers, r + c per r x c pairs, which for big spatial
#: kernels (16x16 images: 65536 entries per pair) would otherwise double the work.
MIN_TILE_PAIRS = 16
#: Tile size on CUDA: large tiles amortize kernel launches.
CUDA_TILE_ENTRIES = 2**26


def parse_get(get) -> bool:
    """Return whether the NTK is wanted; validate ``get``."""
    names = (get,) if isinstance(get, str) else tuple(get)
    unknown = [g for g in names if g not in ("nngp", "ntk")]
    if unknown or not names:
        raise ValueError(f"get must be 'nngp', 'ntk' or ('nngp', 'ntk'); got {get!r}.")
    return "ntk" in names


@dataclass(frozen=True, eq=False)
class KernelProblem:
    """A validated kernel computation: inputs, layout, the probe's shapes and the budget.

    Attributes:
        x1: ``(n1, *in_shape)`` in the arithmetic dtype.
        x2: ``(n2, *in_shape)``; the same tensor as ``x1`` when ``symmetric``.
        explicit_x2: Whether the caller passed ``x2`` (decides the result's ``cov2``).
        layout: What every tile shares (input shape, spatial layout, NTK, symmetry).
        probe: The network's output kernel for one pair (shapes and flags of the result).
        entries_in: Input-kernel entries per pair.
        cov_entries_in: Input-variance entries per sample.
        footprints: Working memory per pair of every layer, from the probe run.
        itemsize: Bytes per entry.
        budget: Memory budget in bytes.
        pattern1: Dense adjacency of ``x1``'s graphs (graph inputs), else ``None``.
        pattern2: Likewise for ``x2`` (the same tensor as ``pattern1`` when symmetric).
        mask1: Masks of real positions of ``x1`` (masked inputs), else ``None``.
        mask2: Likewise for ``x2``.
    """

    x1: torch.Tensor
    x2: torch.Tensor
    explicit_x2: bool
    layout: TileLayout
    probe: Kernel
    entries_in: int
    cov_entries_in: int
    footprints: tuple[Footprint, ...]
    itemsize: int
    budget: int
    pattern1: torch.Tensor | None = None
    pattern2: torch.Tensor | None = None
    mask1: torch.Tensor | None = None
    mask2: torch.Tensor | None = None

    @property
    def n1(self) -> int:
        return self.x1.shape[0]

    @property
    def n2(self) -> int:
        return self.x2.shape[0]

    @property
    def symmetric(self) -> bool:
        return self.layout.symmetric

    @property
    def want_ntk(self) -> bool:
        return self.layout.want_ntk

    @property
    def device(self) -> torch.device:
        return self.x1.device

    @property
    def dtype(self) -> torch.dtype:
        return self.x1.dtype


def prepare(
    net,
    x1,
    x2=None,
    *,
    get=("nngp", "ntk"),
    dtype: torch.dtype | None = None,
    max_memory: int | None = None,
    same_batch: bool | None = None,
    checked: bool = False,
) -> KernelProblem:
    """Validate the inputs and the description; probe one pair.

    Args:
        net: The layer description.
        x1: ``(n1, *in_shape)`` inputs.
        x2: ``(n2, *in_shape)`` inputs, or ``None`` for ``x2 = x1``.
        get: ``"nngp"``, ``"ntk"`` or both.
        dtype: Arithmetic dtype (float64 by default).
        max_memory: Budget in bytes (default: a fraction of the available memory).
        same_batch: Whether an explicit ``x2`` is the batch ``x1`` itself (its samples
            pair with themselves on the diagonal). ``None`` (the default) decides by
            equality, as ``net.kernel`` does; a tiler passes ``False`` for blocks of
            different samples that happen to be equal.
        checked: ``x1``/``x2`` are tensors already converted to ``dtype`` and validated
            (a tiler's slices of validated inputs): skip the conversion and the NaN scan.

    Raises:
        ValueError: bad inputs, a network that cannot be evaluated, or a budget that cannot
            hold one pair's input kernel.
        TypeError: a non-floating ``dtype``.
    """
    want_ntk = parse_get(get)
    dtype = default_kernel_dtype() if dtype is None else dtype
    if not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating dtype; got {dtype}.")
    x1, m1 = split_masked(x1, "x1")
    x2, m2 = split_masked(x2, "x2") if x2 is not None else (None, m1)
    if (m1 is None) != (m2 is None):
        raise TypeError("x1 and x2 must both be ntkit.layers.Masked, or neither.")
    x1, p1 = split_graphs(x1, "x1", dtype)
    x2, p2 = split_graphs(x2, "x2", dtype) if x2 is not None else (None, p1)
    if (p1 is None) != (p2 is None):
        raise TypeError("x1 and x2 must both be ntkit.layers.Graphs, or neither.")
    explicit_x2 = x2 is not None
    if not checked:
        x1 = as_batch(x1, "x1", dtype=dtype)
        if explicit_x2:
            x2 = as_batch(x2, "x2", dtype=dtype, device=None)
            check_same_features(x1, x2)
    if not explicit_x2:
        symmetric = True
    elif same_batch is None:
        symmetric = x2 is x1 or (x2.shape == x1.shape and torch.equal(x1, x2))
    else:
        symmetric = bool(same_batch)
        if symmetric and x2.shape != x1.shape:
            raise ValueError(
                f"same_batch=True needs x2 shaped like x1; got {tuple(x1.shape)} and "
                f"{tuple(x2.shape)}."
            )
    if symmetric and p1 is not None and p2 is not p1:
        symmetric = p2.shape == p1.shape and torch.equal(p1, p2.to(p1.device))
    if symmetric and m1 is not None and m2 is not m1:
        symmetric = m2.shape == m1.shape and torch.equal(m1, m2.to(m1.device))
    x2 = x1 if symmetric else x2
    if m1 is not None:
        m1 = m1.to(x1.device)
        m2 = m1 if symmetric else m2.to(x1.device)
    if p1 is not None:
        p1 = p1.to(x1.device)
        p2 = p1 if symmetric else p2.to(x1.device)

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
    layout = TileLayout(in_shape, diagonal_spatial, want_ntk, symmetric)

    itemsize = torch.finfo(dtype).bits // 8
    budget = resolve_max_memory(max_memory, x1.device)
    check_one_pair_fits(x1, diagonal_spatial, want_ntk, itemsize, budget)

    # Probe one pair: validates the description and records working memory per pair.
    with recording() as footprints:
        probe_in = input_kernel(
            input_covariance(x1[:1], x2[:1], diagonal_spatial),
            input_variances(x1[:1], diagonal_spatial),
            input_variances(x2[:1], diagonal_spatial),
            TileLayout(in_shape, diagonal_spatial, want_ntk, False),
            x1_is_x2=False,
            shift=0,
            patterns=None if p1 is None else (p1[:1], p2[:1]),
            masks=None if m1 is None else (m1[:1], m2[:1]),
        )
        probe = net.apply_kernel(probe_in)
    if isinstance(probe, list):
        raise LayerSpecError("the network ends with several streams; close them with a FanIn.")
    return KernelProblem(
        x1=x1,
        x2=x2,
        explicit_x2=explicit_x2,
        layout=layout,
        probe=probe,
        entries_in=probe_in.entries_per_pair,
        cov_entries_in=math.prod(probe_in.cov1.shape[1:]),
        footprints=tuple(footprints),
        itemsize=itemsize,
        budget=budget,
        pattern1=p1,
        pattern2=p2,
        mask1=m1,
        mask2=m2,
    )


def check_one_pair_fits(x1, diagonal_spatial, want_ntk, itemsize, budget) -> None:
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


# ----------------------------------------------------------------------------- tile plan
@dataclass(frozen=True)
class TilePlan:
    """Tiles of ``tile_rows x tile_cols`` pairs (ragged at the ends).

    Attributes:
        tile_rows: Rows of ``x1`` per tile.
        tile_cols: Columns of ``x2`` per tile (``>= tile_rows`` when symmetric).
        n_tiles: Number of tiles (upper triangle only when symmetric).
        workers: Tiles computed concurrently.
    """

    tile_rows: int
    tile_cols: int
    n_tiles: int
    workers: int


def count_tiles(n1: int, n2: int, tile_rows: int, tile_cols: int, symmetric: bool) -> int:
    """Number of tiles :func:`tile_ranges` yields."""
    starts = range(0, n1, tile_rows)  # column tiles from each row range's start (symmetric)
    return sum(-(-(n2 - (a0 if symmetric else 0)) // tile_cols) for a0 in starts)


def tile_ranges(
    n1: int, n2: int, plan: TilePlan, symmetric: bool
) -> Iterator[tuple[int, int, int, int]]:
    """``(a0, a1, j0, j1)`` row/column ranges; upper triangle only when symmetric.

    With ``x2 = x1`` every row range's first column range starts at its first row, so the
    same-batch square lies inside that tile (``tile_rows <= tile_cols``).
    """
    for a0 in range(0, n1, plan.tile_rows):
        a1 = min(n1, a0 + plan.tile_rows)
        for j0 in range(a0 if symmetric else 0, n2, plan.tile_cols):
            yield a0, a1, j0, min(n2, j0 + plan.tile_cols)


def plan_tiles(problem: KernelProblem, *, workers: int, hold_result: bool = True) -> TilePlan:
    """The memory-model tile plan of ``problem`` for ``workers`` concurrent tiles.

    Args:
        problem: From :func:`prepare`.
        workers: Tiles computed at the same time (they share the budget).
        hold_result: Whether the whole result lives in memory next to the tiles (``False``
            when tiles go to a store).
    """
    probe = problem.probe
    return plan(
        problem.n1,
        problem.n2,
        symmetric=problem.symmetric,
        entries_in=problem.entries_in,
        entries_out=probe.entries_per_pair,
        cov_entries_in=problem.cov_entries_in,
        cov_entries_out=math.prod(probe.cov1.shape[1:]),
        footprints=list(problem.footprints),
        n_kernels=2 if problem.want_ntk else 1,
        itemsize=problem.itemsize,
        budget=problem.budget,
        target=CUDA_TILE_ENTRIES if problem.device.type == "cuda" else CPU_TILE_ENTRIES,
        workers=workers,
        hold_result=hold_result,
    )


def plan(
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
    hold_result: bool = True,
) -> TilePlan:
    """Choose tiles so that result + working memory stay inside ``budget`` bytes.

    Memory model (bytes): the result ``n1 n2 entries_out n_kernels`` and the output
    variances (when ``hold_result``); per tile of ``r x c`` pairs (``workers`` tiles at a
    time), the input kernel ``r c entries_in`` and the largest layer's working entries per
    pair times ``r c + (r + c) / 2`` (the variances go through the layers too).

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
    result_bytes = kernel_bytes + variance_bytes if hold_result else 0
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
        if fits_rows >= 1 and hold_result:
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
    n_tiles = count_tiles(n1, n2, tile_rows, tile_cols, symmetric)
    return TilePlan(tile_rows, tile_cols, n_tiles, workers)
