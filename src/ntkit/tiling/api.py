"""``kernel_matrix`` and ``kernel_store``: tiled, resumable, distributed kernel matrices.

Example:
    >>> from ntkit import layers as L
    >>> from ntkit.tiling import kernel_matrix
    >>> net = L.serial(L.Dense(64), L.ReLU(), L.Dense(1))
    >>> x = torch.randn(500, 10, dtype=torch.float64)          # doctest: +SKIP
    >>> k = kernel_matrix(net, x, tile=128, progress=False)     # doctest: +SKIP
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from ntkit._host import retained_heap
from ntkit.kernel import Kernel
from ntkit.settings import format_bytes, resolve_max_memory
from ntkit.tiling._execute import (
    check_picklable,
    compute_tile,
    dask_client,
    run_in_process,
    run_on_dask,
    run_tile,
)
from ntkit.tiling._fingerprint import fingerprint, tensor_fingerprint
from ntkit.tiling._functions import (
    CallTiles,
    LayerTiles,
    OnDevice,
    OutputSpec,
    _as_names,
    _kernel_spec,
    is_layer_kernel,
    make_tile_function,
)
from ntkit.tiling._grid import TileGrid, check_tile, choose_grid
from ntkit.tiling._memory import MemoryResult, result_bytes
from ntkit.tiling._progress import tile_progress
from ntkit.tiling._store import (
    KernelStore,
    placements,
    raise_corrupt,
    spec_from_metadata,
    store_metadata,
)

__all__ = ["StoredKernel", "kernel_matrix", "kernel_store", "open_store"]


# ----------------------------------------------------------------------------- preparation
@dataclass
class _Prepared:
    tile_fn: LayerTiles | CallTiles
    spec: OutputSpec
    x1: torch.Tensor
    x2: torch.Tensor | None  # None: symmetric (x2 = x1)
    explicit_x2: bool
    budget: int
    identity: object  # what the function fingerprint is taken of


def _as_inputs(x, name: str) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    if not isinstance(x, torch.Tensor):
        raise TypeError(
            f"{name} must be a torch.Tensor or numpy.ndarray of shape (n, ...); got "
            f"{type(x).__name__}."
        )
    if x.ndim < 1 or x.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty batch (n, ...); got shape {tuple(x.shape)}.")
    if x.is_floating_point() and not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or Inf entries; inputs must be finite.")
    return x


def _prepare(fn, x1, x2, *, get, dtype, max_memory, device=None) -> _Prepared:
    prep = _prepare_on_host(fn, x1, x2, get=get, dtype=dtype, max_memory=max_memory)
    if device is not None:
        torch.device(device)  # validates the name
        prep.tile_fn = OnDevice(prep.tile_fn, device)
    return prep


def _prepare_on_host(fn, x1, x2, *, get, dtype, max_memory) -> _Prepared:
    if is_layer_kernel(fn):
        from ntkit.layers._autograd import needs_grad
        from ntkit.layers._planner import prepare

        net = fn if not hasattr(fn, "__self__") else fn.__self__
        if needs_grad(net, x1, x2):
            raise ValueError(
                "kernel_matrix returns kernels without gradients, but these inputs or the "
                "network's hyperparameters require grad; use net.kernel(x1, x2) for a "
                "differentiable kernel, or call kernel_matrix under torch.no_grad()."
            )
        names = _as_names(("nngp", "ntk") if get is None else get, ("nngp", "ntk"), "a layer")
        problem = prepare(
            net,
            x1,
            x2,
            get=names if "ntk" in names else "nngp",
            dtype=dtype,
            max_memory=max_memory,
        )
        if problem.mask1 is not None or problem.pattern1 is not None:
            raise TypeError(
                "ntkit.tiling does not take ntkit.layers.Masked or Graphs inputs yet (their "
                "masks or adjacency would not reach the tiles); use net.kernel(...), which "
                "tiles them in memory."
            )
        from ntkit.layers._finite import check_input_scale

        check_input_scale(problem.x1, "x1")  # once on the whole batches; tiles skip it
        if not problem.symmetric:
            check_input_scale(problem.x2, "x2")
        spec = _kernel_spec(problem.probe, names)
        tile_fn = LayerTiles(net, names, problem.dtype, None)
        x2_ = None if problem.symmetric else problem.x2
        return _Prepared(
            tile_fn, spec, problem.x1, x2_, problem.explicit_x2, problem.budget, ("layer", net)
        )
    x1 = _as_inputs(x1, "x1")
    if x2 is not None:
        x2 = _as_inputs(x2, "x2")
        if x1.shape[1:] != x2.shape[1:]:
            raise ValueError(
                f"x1 and x2 must have the same per-sample shape; got x1 {tuple(x1.shape)} and "
                f"x2 {tuple(x2.shape)}."
            )
    tile_fn, spec = make_tile_function(fn, x1, x2, get=get, dtype=dtype, budget=None)
    if dtype is not None and spec.dtype != dtype:
        spec = OutputSpec(**{**spec.__dict__, "dtype": dtype})
    budget = resolve_max_memory(max_memory, x1.device)
    return _Prepared(tile_fn, spec, x1, x2, x2 is not None, budget, ("function", fn))


def _plan(prep: _Prepared, tile, workers: int, *, in_memory: bool) -> TileGrid:
    spec = prep.spec
    n1 = prep.x1.shape[0]
    n2 = n1 if prep.x2 is None else prep.x2.shape[0]
    itemsize = torch.empty((), dtype=spec.dtype).element_size()
    grid = choose_grid(
        n1,
        n2,
        symmetric=prep.x2 is None,
        tile=tile,
        entry_bytes=math.prod(spec.trailing) * itemsize,
        n_outputs=len(spec.names),
        budget=prep.budget,
        workers=workers,
    )
    return grid


def _tile_budget(
    prep: _Prepared, grid: TileGrid, workers: int, *, in_memory: bool, held: bool
) -> None:
    """Refuse a result that cannot be loaded; give layer tiles their share of the budget.

    Args:
        prep: The prepared computation.
        grid: Its tile grid.
        workers: Tiles in flight at a time.
        in_memory: The whole result ends in memory (``kernel_matrix``).
        held: ... and is held there while the tiles run (no store).
    """
    need = result_bytes(grid, prep.spec) if in_memory else 0
    left = prep.budget - (need if held else 0)
    if need > prep.budget or left <= 0:
        raise ValueError(
            f"the result needs {format_bytes(need)} in memory, more than max_memory="
            f"{format_bytes(prep.budget)}. Compute it to a store with "
            "ntkit.tiling.kernel_store(..., store=PATH) and read it block by block "
            "(StoredKernel.operator(), .to_dask()), or raise max_memory."
        )
    if isinstance(_inner(prep.tile_fn), LayerTiles):
        _inner(prep.tile_fn).budget = int(left // max(1, workers))


def _inner(tile_fn):
    return tile_fn.inner if isinstance(tile_fn, OnDevice) else tile_fn


# ----------------------------------------------------------------------------- running
def _n_workers(client) -> int:
    if client is None:
        return 1
    return max(1, len(client.scheduler_info().get("workers", {})) or 1)


def _compute(
    prep: _Prepared,
    *,
    tile,
    store,
    executor,
    progress: bool,
    timeout,
    in_memory: bool,
):
    """Run the missing tiles; return ``(grid, MemoryResult or None, KernelStore or None)``."""
    import contextlib

    tile = check_tile(tile)
    ctx = contextlib.nullcontext(None)
    if executor is not None:  # fail fast, before connecting, when the function cannot travel
        check_picklable(prep.tile_fn, f"the kernel function ({prep.identity[1]!r})")
        ctx = dask_client(executor, timeout=timeout)
    with ctx as client:
        workers = _n_workers(client)
        grid = _plan(prep, tile, workers, in_memory=in_memory)
        _tile_budget(prep, grid, workers, in_memory=in_memory, held=store is None)
        kstore, done = None, set()
        if store is not None:
            meta = store_metadata(
                function=fingerprint(prep.identity),
                function_repr=repr(prep.identity[1]),
                x1=tensor_fingerprint(prep.x1),
                x2=None if prep.x2 is None else tensor_fingerprint(prep.x2),
                grid=grid,
                spec=prep.spec,
            )
            kstore = KernelStore.create_or_resume(
                store, meta, prep.spec, explicit_tile=tile is not None
            )
            grid = kstore.grid
            done, bad = kstore.finished(prep.spec)
            if bad:
                warnings.warn(
                    f"the kernel store {str(kstore.path)!r}: {len(bad)} tile(s) marked done "
                    f"fail their checksum ({bad[:4]}{' ...' if len(bad) > 4 else ''}); "
                    "recomputing them.",
                    UserWarning,
                    stacklevel=3,
                )
        todo = [t for t in grid.tiles() if t not in done]
        memory = MemoryResult(grid, prep.spec, prep.x1.device) if store is None else None

        with tile_progress(grid.n_tiles, done=len(done), enabled=progress) as bar:

            def on_done(result):
                bi, bj, out = result
                if memory is not None:
                    memory.place(bi, bj, out)
                bar.advance()

            if client is None:
                in_place = memory is not None and isinstance(_inner(prep.tile_fn), LayerTiles)

                def run(bi, bj):
                    if in_place:  # layer tiles write straight into the result
                        a0, a1, j0, j1 = grid.ranges(bi, bj)
                        diagonal = grid.symmetric and bi == bj
                        cols = prep.x1 if prep.x2 is None else prep.x2
                        into = memory.views(bi, bj)
                        prep.tile_fn(prep.x1[a0:a1], cols[j0:j1], diagonal=diagonal, into=into)
                        return bi, bj, None
                    if kstore is None:
                        return run_tile(prep.tile_fn, prep.x1, prep.x2, grid, prep.spec, bi, bj)
                    out = compute_tile(prep.tile_fn, prep.x1, prep.x2, grid, prep.spec, bi, bj)
                    return bi, bj, out  # written by the store thread (overlaps the next tile)

                def write(bi, bj, out):
                    kstore.write_tile(bi, bj, out, prep.spec)

                def done(result):
                    if not in_place:
                        on_done(result)
                    else:
                        bar.advance()

                with retained_heap(prep.x1.device.type == "cpu"):
                    run_in_process(todo, run, done, write=None if kstore is None else write)
            else:
                run_on_dask(
                    client,
                    prep.tile_fn,
                    prep.x1,
                    prep.x2,
                    grid,
                    prep.spec,
                    todo,
                    on_done,
                    store_path=None if kstore is None else kstore.path.resolve(),
                    store_id=None if kstore is None else kstore.meta["store_id"],
                )
    return grid, memory, kstore


# ----------------------------------------------------------------------------- public
def kernel_matrix(
    fn,
    x1,
    x2=None,
    *,
    get=None,
    tile=None,
    store=None,
    executor=None,
    progress: bool = True,
    dtype: torch.dtype | None = None,
    max_memory: int | None = None,
    timeout: float | None = None,
    device: str | torch.device | None = None,
) -> Kernel | torch.Tensor:
    """A kernel matrix computed tile by tile; resumable with a store, distributed with Dask.

    Args:
        fn: An ntkit layer description (or its ``.kernel``), or any ``fn(a, b)`` returning
            a tensor ``(len(a), len(b), ...)`` (an empirical NTK in any mode, your own
            kernel) or an :class:`ntkit.Kernel`.
        x1: ``(n1, ...)`` inputs (tensor or numpy array).
        x2: ``(n2, ...)`` inputs; ``None`` for ``x2 = x1``: only tiles on or above the
            diagonal are computed and the result is mirrored, exactly symmetric.
        get: For layers and Kernel-valued functions, ``"nngp"`` or ``("nngp", "ntk")``
            (the default; both come in one pass, as from ``net.kernel``).
        tile: Pairs per tile: an int (square tiles) or ``(rows, cols)`` (explicit ``x2``
            only). ``None`` sizes tiles from the memory model (each tile's result at most
            32 MiB per output and within ``max_memory``). Tiles at the ends are ragged.
        store: Path of a zarr store. Finished tiles are written there; running the same
            call again resumes, computing only the missing tiles. A store made by another
            computation (other inputs, function, dtype, ...) is refused.
        executor: ``None`` (this process; layer tiles use torch's threads), ``"local"``
            (a Dask ``LocalCluster`` of one worker process per core), the address of a
            Dask scheduler (``"tcp://host:8786"``) or a ``distributed.Client``. One task
            per tile; with a store, workers write their tiles straight to it (the path
            must be visible to them).
        progress: Show a rich progress bar (tiles, tiles/s, ETA); ``False`` for silence.
        dtype: Arithmetic dtype for layers (float64 by default); for other functions, the
            dtype results are stored in (default: the function's).
        max_memory: Memory budget in bytes (default: a fraction of the available memory).
            The in-memory result must fit; use :func:`kernel_store` for larger ones.
        timeout: Seconds to wait for a Dask scheduler (default 30).
        device: Where tiles are computed (default: where ``x1`` is), e.g. ``"cuda"``; on
            Dask workers started one per GPU, each worker's own GPU. Results are assembled
            on ``x1``'s device (or written to the store).

    Returns:
        What ``fn`` returns, for all pairs: an :class:`ntkit.Kernel` (layers and
        Kernel-valued functions; ``nngp``/``ntk`` ``(n1, n2, ...)``) or a tensor
        ``(n1, n2, ...)``, on ``x1``'s device.

    Raises:
        ValueError: bad inputs or options (``tile=0``, an unwritable store path, a result
            larger than ``max_memory``), non-finite kernel values.
        StoreMismatchError: ``store`` was made by another computation.
        StoreCorruptError: a finished tile of the store does not match its checksum when
            read back.
        ConnectionError: the Dask scheduler cannot be reached within ``timeout``.
        NotPicklableError: ``fn`` cannot be sent to Dask workers.
    """
    prep = _prepare(fn, x1, x2, get=get, dtype=dtype, max_memory=max_memory, device=device)
    grid, memory, kstore = _compute(
        prep,
        tile=tile,
        store=store,
        executor=executor,
        progress=progress,
        timeout=timeout,
        in_memory=True,
    )
    if memory is not None:
        return memory.result(explicit_x2=prep.explicit_x2)
    return StoredKernel(kstore).load(device=prep.x1.device, explicit_x2=prep.explicit_x2)


def kernel_store(
    fn,
    x1,
    x2=None,
    *,
    store,
    get=None,
    tile=None,
    executor=None,
    progress: bool = True,
    dtype: torch.dtype | None = None,
    max_memory: int | None = None,
    timeout: float | None = None,
    device: str | torch.device | None = None,
) -> StoredKernel:
    """Like :func:`kernel_matrix`, but leave the result in the store and return a handle.

    Memory stays bounded by the tiles in flight, whatever the size of the result. The
    arguments are those of :func:`kernel_matrix` (``store`` is required).

    Returns:
        A :class:`StoredKernel` on the finished store.
    """
    if store is None:
        raise ValueError("kernel_store needs store=PATH (a zarr directory).")
    prep = _prepare(fn, x1, x2, get=get, dtype=dtype, max_memory=max_memory, device=device)
    _, _, kstore = _compute(
        prep,
        tile=tile,
        store=store,
        executor=executor,
        progress=progress,
        timeout=timeout,
        in_memory=False,
    )
    return StoredKernel(kstore)


def open_store(path) -> StoredKernel:
    """A handle on an existing kernel store (finished or not), for reading."""
    return StoredKernel(KernelStore.open(path, mode="r"))


class StoredKernel:
    """A kernel matrix in a zarr store, read lazily.

    Attributes:
        path: The store's directory.
        names: Stored pair outputs, e.g. ``("nngp", "ntk")`` or ``("kernel",)``.
        shape: ``(n1, n2, ...)`` of each pair output.
        dtype: Their dtype.
        symmetric: Whether the matrix was computed with ``x2 = x1``.
    """

    def __init__(self, store: KernelStore):
        self._store = store
        self._spec = spec_from_metadata(store.meta)
        self.path = store.path
        self.names = self._spec.names
        self.shape = (store.grid.n1, store.grid.n2, *self._spec.trailing)
        self.dtype = self._spec.dtype
        self.symmetric = store.grid.symmetric

    @property
    def metadata(self) -> dict:
        """What made the store (hashes, sizes, tile, versions)."""
        return dict(self._store.meta)

    @property
    def n_tiles(self) -> int:
        return self._store.grid.n_tiles

    @property
    def tiles_done(self) -> int:
        """Tiles marked complete (checksums not verified; see :meth:`verify`)."""
        marks = self._store.marks()
        return sum(1 for t in self._store.grid.tiles() if marks[t] != 0)

    @property
    def complete(self) -> bool:
        return self.tiles_done == self.n_tiles

    def verify(self) -> list[tuple[int, int]]:
        """Finished tiles whose data no longer matches their checksum (read everything)."""
        return self._store.finished(self._spec)[1]

    def _default(self, name: str | None) -> str:
        if name is None:
            name = "ntk" if "ntk" in self.names else self.names[0]
        if name not in self.names + ("cov1", "cov2") or name not in self._store.group:
            raise ValueError(f"the store holds {self.names}; got {name!r}.")
        return name

    def array(self, name: str | None = None):
        """The zarr array of output ``name`` (default: ``ntk``, else the only output)."""
        return self._store.array(self._default(name))

    def to_dask(self, name: str | None = None):
        """A dask array over output ``name``, chunked by tile (nothing is read yet)."""
        import dask.array as da

        self._require_complete()
        return da.from_zarr(self.array(name))

    def block(self, rows: slice, cols: slice = slice(None), *, name: str | None = None):
        """Rows ``rows`` and columns ``cols`` of output ``name`` as a tensor."""
        self._require_complete()
        return torch.from_numpy(np.asarray(self.array(name)[rows, cols]))

    def _require_complete(self) -> None:
        done, total = self.tiles_done, self.n_tiles
        if done != total:
            raise ValueError(
                f"the kernel store {str(self.path)!r} is incomplete ({done} of {total} "
                "tiles); run the kernel_matrix/kernel_store call again to finish it."
            )

    def load(self, *, device=None, explicit_x2: bool = False) -> Kernel | torch.Tensor:
        """Read everything into memory, checking every tile's checksum.

        Args:
            device: Where the result goes (default CPU).
            explicit_x2: For symmetric kernels, fill ``cov2`` with ``cov1`` (as
                ``net.kernel(x, x)`` does) instead of ``None``.

        Raises:
            ValueError: the store is incomplete.
            StoreCorruptError: a tile does not match its checksum.
        """
        import zlib

        self._require_complete()
        store, spec, grid = self._store, self._spec, self._store.grid
        device = torch.device("cpu") if device is None else torch.device(device)
        memory = MemoryResult(grid, spec, torch.device("cpu"))
        marks = store.marks()
        bad = []
        for bi, bj in grid.tiles():
            crc, regions = 0, []
            try:
                for name, index, _ in placements(grid, spec, bi, bj):
                    data = np.ascontiguousarray(store.array(name)[index])
                    crc = zlib.crc32(data, crc)
                    regions.append((name, index, data))
            except Exception:  # noqa: BLE001 - a chunk that cannot be decoded
                crc = None
            if crc is None or crc != int(marks[bi, bj]) - 1:
                bad.append((bi, bj))
                continue
            for name, index, data in regions:
                memory.place_region(name, index, torch.from_numpy(data))
        if bad:
            raise_corrupt(self.path, bad)
        out = memory.result(explicit_x2=explicit_x2)
        if device.type == "cpu":
            return out
        if isinstance(out, torch.Tensor):
            return out.to(device)
        return out.replace(
            nngp=out.nngp.to(device),
            ntk=None if out.ntk is None else out.ntk.to(device),
            cov1=out.cov1.to(device),
            cov2=None if out.cov2 is None else out.cov2.to(device),
        )

    def operator(self, name: str | None = None, *, block_rows: int | None = None):
        """A matrix-free :class:`ntkit.predict.solvers.KernelOperator` read block by block.

        Args:
            name: Output to use (default ``ntk``, else the only output).
            block_rows: Rows read per block (default: whole tiles, about 16 MiB).
        """
        from ntkit.tiling.operator import StoreOperator

        self._require_complete()
        return StoreOperator(self, self._default(name), block_rows=block_rows)

    def as_operator(self, get: str | None = None, block_size: int | None = None):
        """Hook for :mod:`ntkit.predict` (``conjugate_gradient``, ``kernel_operator``)."""
        return self.operator(get, block_rows=block_size)

    def __repr__(self) -> str:
        return (
            f"StoredKernel({str(self.path)!r}, outputs={self.names}, shape={self.shape}, "
            f"tiles {self.tiles_done}/{self.n_tiles})"
        )
