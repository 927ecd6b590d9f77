"""Planned, tiled evaluation of a layer description's kernel (in memory).

The three parts, each usable alone (``ntkit.tiling`` reuses them with other executors and
a store):

- the planner (:mod:`._planner`): validation, a one-pair probe, the memory model and the
  tile plan;
- the pure tile function (:func:`._tile.kernel_tile`): ``(net, x1_rows, x2_cols) -> Kernel``;
- the sink (:class:`._sink.MemorySink`): assembles the tiles into the result.

On CPU, tiles run concurrently, one per torch thread (each single-threaded), and freed tile
buffers stay in the heap while the kernel is computed; both are scoped to the call and can
be switched off (:func:`ntkit.settings.parallel_tiles`, :func:`ntkit.settings.retain_heap`).
With ``x2=None`` only the upper triangle is computed and mirrored, so the result is exactly
symmetric.
"""

from __future__ import annotations

import torch

from ntkit._host import retained_heap, run_parallel
from ntkit.kernel import Kernel
from ntkit.layers._autograd import differentiable_kernel, needs_grad
from ntkit.layers._finite import check_finite_kernel, check_input_scale
from ntkit.layers._params import is_dual, layer_hyperparameters
from ntkit.layers._planner import KernelProblem, parse_get, plan_tiles, prepare, tile_ranges
from ntkit.layers._sink import MemorySink
from ntkit.layers._tile import kernel_tile
from ntkit.settings import parallel_tiles_enabled
from ntkit.tiling._progress import tile_progress

_parse_get = parse_get  # used by ntkit.empirical


def compute_kernel(
    net,
    x1,
    x2=None,
    *,
    get=("nngp", "ntk"),
    dtype: torch.dtype | None = None,
    max_memory: int | None = None,
    progress: bool | None = None,
) -> Kernel:
    """Evaluate ``net``'s infinite-width kernel between ``x1`` and ``x2``; see ``Layer.kernel``."""
    if needs_grad(net, x1, x2):  # autograd: tiled forward, tile-wise recomputing backward
        return differentiable_kernel(
            compute_kernel, net, x1, x2, get=get, dtype=dtype, max_memory=max_memory
        )
    problem = prepare(net, x1, x2, get=get, dtype=dtype, max_memory=max_memory)
    # forward-mode AD: tiles written into one result from several threads would race on the
    # result's tangent (torch sets a dual's tangent on first write), so they run in turn
    dual = bool(layer_hyperparameters(net, dual=True)) or any(
        isinstance(x, torch.Tensor) and is_dual(x) for x in (x1, x2)
    )
    return run_problem(net, problem, workers=1 if dual else None, progress=progress)


def run_problem(
    net,
    problem: KernelProblem,
    *,
    workers: int | None = None,
    into: dict | None = None,
    scale_checked: bool = False,
    progress: bool | None = False,
) -> Kernel:
    """Compute a prepared problem in memory: plan, tiles (threads on CPU), sink.

    Args:
        net: The layer description ``problem`` was prepared for.
        problem: From :func:`._planner.prepare`.
        workers: Tiles computed concurrently (default: one per torch thread on CPU).
        into: Write the result into these tensors (views of a larger result) instead of
            allocating it; see :class:`._sink.MemorySink`.
        scale_checked: The inputs' scale was checked on the whole batches already (a tile
            of a larger matrix: a slice alone could pass or fail differently).
        progress: A rich bar over the tiles: ``True``, ``False`` (default here: callers
            that tile a larger matrix show their own), or ``None``: only once the
            computation has run a few seconds.
    """
    if not scale_checked:
        check_input_scale(problem.x1, "x1")
        if not problem.symmetric:
            check_input_scale(problem.x2, "x2")
    workers = default_workers(problem.device) if workers is None else int(workers)
    plan = plan_tiles(problem, workers=workers)
    sink = MemorySink(problem, into=into)
    x1, x2, layout = problem.x1, problem.x2, problem.layout

    def tile(a0, a1, j0, j1):
        patterns = None
        if problem.pattern1 is not None:
            patterns = (problem.pattern1[a0:a1], problem.pattern2[j0:j1])
        masks = None
        if problem.mask1 is not None:
            masks = (problem.mask1[a0:a1], problem.mask2[j0:j1])
        block = kernel_tile(
            net, x1[a0:a1], x2[j0:j1], layout, shift=a0 - j0, patterns=patterns, masks=masks
        )
        sink.write(a0, a1, j0, j1, block)

    tiles = list(tile_ranges(problem.n1, problem.n2, plan, problem.symmetric))
    workers = min(plan.workers, plan.n_tiles)
    with (
        retained_heap(problem.device.type == "cpu"),
        tile_progress(len(tiles), enabled=progress) as bar,
    ):

        def tile_and_count(*t):
            tile(*t)
            bar.advance()

        if workers <= 1:
            for t in tiles:
                tile_and_count(*t)
        else:
            run_parallel(tile_and_count, tiles, workers)
    result = sink.result()
    check_finite_kernel(net, result, problem.x1, problem.x2, problem.layout)
    return result


def default_workers(device: torch.device) -> int:
    """Tiles computed concurrently: one per CPU thread (each single-threaded), 1 on GPUs."""
    if device.type != "cpu" or not parallel_tiles_enabled():
        return 1
    return max(1, torch.get_num_threads())
