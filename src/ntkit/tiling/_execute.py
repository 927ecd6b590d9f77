"""Running tiles: in this process, or one task per tile on a Dask cluster.

Every executor runs the same task, :func:`run_tile`: compute one tile with the tile
function, check it, and either return it (in-memory results) or write it to the store
(workers write straight to the store; only a checksum travels back).
"""

from __future__ import annotations

import contextlib
import logging
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from ntkit.errors import NotPicklableError
from ntkit.tiling._functions import OutputSpec
from ntkit.tiling._grid import TileGrid

#: Dask connection timeout (seconds) when ``timeout`` is not given.
CONNECT_TIMEOUT = 30.0


def compute_tile(tile_fn, x1, x2, grid: TileGrid, spec: OutputSpec, bi: int, bj: int) -> dict:
    """The outputs of tile ``(bi, bj)``, checked for shape and finiteness.

    Raises:
        ValueError: a block of the wrong shape, or NaN/Inf entries.
    """
    a0, a1, j0, j1 = grid.ranges(bi, bj)
    diagonal = grid.symmetric and bi == bj
    rows = x1[a0:a1]
    cols = rows if diagonal else (x1 if x2 is None else x2)[j0:j1]
    out = tile_fn(rows, cols, diagonal=diagonal)
    for name in spec.names:
        block = out[name]
        want = (a1 - a0, j1 - j0, *spec.trailing)
        if tuple(block.shape) != want:
            raise ValueError(
                f"tile {(bi, bj)} (rows {a0}:{a1}, columns {j0}:{j1}): the kernel function "
                f"returned {name} of shape {tuple(block.shape)}; expected {want}."
            )
        if block.dtype != spec.dtype:
            out[name] = block.to(spec.dtype)
        if not bool(torch.isfinite(block.sum())):  # NaN/Inf anywhere reach the sum
            raise ValueError(
                f"tile {(bi, bj)} (rows {a0}:{a1}, columns {j0}:{j1}): the kernel function "
                f"returned non-finite {name} entries."
            )
    return out


def run_tile(tile_fn, x1, x2, grid, spec, bi, bj, store_path=None, store_id=None):
    """One task: compute tile ``(bi, bj)``; write it to the store, or return it.

    Returns:
        ``(bi, bj, outputs)`` with ``outputs`` a dict of CPU tensors, or ``None`` when the
        tile went to the store.
    """
    out = compute_tile(tile_fn, x1, x2, grid, spec, bi, bj)
    if store_path is None:
        return bi, bj, {k: v.cpu() for k, v in out.items()}
    _open_store(store_path, store_id).write_tile(bi, bj, out, spec)
    return bi, bj, None


def _open_store(path: str, store_id: str):
    """The store at ``path`` for writing (opened per task: a few milliseconds, no cache)."""
    from ntkit.tiling._store import KernelStore

    store = KernelStore.open(path, mode="r+")
    if store.meta.get("store_id") != store_id:
        raise ValueError(f"the kernel store at {path!r} was replaced during the run.")
    return store


# ----------------------------------------------------------------------------- in process
def run_in_process(tasks, run: Callable, on_done: Callable, write: Callable | None = None):
    """Run ``run(bi, bj)`` for every task in order, calling ``on_done`` with each result.

    With ``write``, ``run`` returns ``(bi, bj, outputs)`` and ``write(bi, bj, outputs)``
    stores them in a background thread while the next tile is computed (at most one tile
    waits to be written; a write error is raised here).
    """
    if write is None:
        for bi, bj in tasks:
            on_done(run(bi, bj))
        return
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="ntkit-store") as writer:
        pending = None
        for bi, bj in tasks:
            result = run(bi, bj)
            if pending is not None:
                on_done(pending.result())
            pending = writer.submit(_write, write, result)
        if pending is not None:
            on_done(pending.result())


def _write(write: Callable, result):
    bi, bj, out = result
    write(bi, bj, out)
    return bi, bj, None


# ----------------------------------------------------------------------------- Dask
def check_picklable(obj, what: str) -> None:
    """Raise :class:`NotPicklableError` when cloudpickle (Dask's pickler) fails on ``obj``."""
    import cloudpickle

    try:
        cloudpickle.dumps(obj)
    except Exception as err:  # noqa: BLE001 - any pickling failure
        raise NotPicklableError(
            f"{what} cannot be sent to Dask workers: pickling it (with cloudpickle, as Dask "
            f"does) failed with {type(err).__name__}: {err}. Keep open files, locks, "
            "generators and similar objects out of it, or use executor=None."
        ) from err


@contextlib.contextmanager
def dask_client(executor, *, timeout: float | None) -> Iterator:
    """A ``distributed.Client`` for ``executor``: ``"local"``, an address or a Client.

    ``"local"`` starts a ``LocalCluster`` of one single-threaded worker process per CPU
    core and closes it afterwards; a Client passed in is left open.

    Raises:
        ImportError: ``distributed`` is not installed.
        ConnectionError: the scheduler cannot be reached within ``timeout`` seconds.
        TypeError: ``executor`` is none of these.
    """
    try:
        import distributed
    except ImportError as err:  # pragma: no cover - the scale extra installs it
        raise ImportError("executor= needs dask.distributed: pip install 'ntkit[scale]'.") from err
    timeout = CONNECT_TIMEOUT if timeout is None else float(timeout)
    if isinstance(executor, distributed.Client):
        yield executor
        return
    if executor == "local":
        cluster = distributed.LocalCluster(
            n_workers=max(1, os.cpu_count() or 1),
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            silence_logs=logging.ERROR,
        )
        client = distributed.Client(cluster)
        try:
            yield client
        finally:
            client.close()
            cluster.close()
        return
    if isinstance(executor, str):
        try:
            client = distributed.Client(executor, timeout=timeout)
        except (OSError, TimeoutError) as err:
            raise ConnectionError(
                f"cannot reach the Dask scheduler at {executor!r} within {timeout:g} s "
                f"({type(err).__name__}: {err}). Start one with `dask scheduler` and "
                "`dask worker ADDRESS`, or pass executor='local' or None."
            ) from err
        try:
            yield client
        finally:
            client.close()
        return
    raise TypeError(
        "executor must be None (this process), 'local' (a Dask LocalCluster), the address "
        f"of a Dask scheduler or a distributed.Client; got {executor!r}."
    )


def run_on_dask(
    client,
    tile_fn,
    x1,
    x2,
    grid: TileGrid,
    spec: OutputSpec,
    tasks: list,
    on_done: Callable,
    *,
    store_path: Path | None,
    store_id: str | None,
) -> None:
    """One Dask task per tile; ``on_done`` gets each result as it arrives.

    The inputs and the tile function are sent to every worker once. A worker that dies
    has its tasks rescheduled on the others by the scheduler (tiles are idempotent: a
    rerun rewrites the same chunks and checksum).
    """
    from distributed import as_completed

    if not client.scheduler_info().get("workers"):
        client.wait_for_workers(1, timeout=CONNECT_TIMEOUT)
    fn_f = client.scatter(tile_fn, broadcast=True, hash=False)
    x1_f = client.scatter(x1, broadcast=True, hash=False)
    x2_f = None if x2 is None else client.scatter(x2, broadcast=True, hash=False)
    run_id = uuid.uuid4().hex[:8]
    path = None if store_path is None else str(store_path)
    futures = [
        client.submit(
            run_tile,
            fn_f,
            x1_f,
            x2_f,
            grid,
            spec,
            bi,
            bj,
            path,
            store_id,
            key=f"ntkit-tile-{run_id}-{bi}-{bj}",
            pure=False,
        )
        for bi, bj in tasks
    ]
    try:
        for future in as_completed(futures):
            on_done(future.result())
            future.release()
    finally:
        client.cancel(futures)
