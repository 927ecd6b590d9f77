"""Scoped host-process tweaks for CPU kernels: worker threads and glibc's heap.

Both change process-wide state, so both are scoped to one computation and restored, and
both can be switched off (:func:`ntkit.settings.parallel_tiles`,
:func:`ntkit.settings.retain_heap`).
"""

from __future__ import annotations

import collections
import contextlib
import contextvars
import os
from collections.abc import Callable, Iterable, Iterator

import torch

from ntkit.settings import retain_heap_enabled

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_GLIBC_DEFAULT_TRIM = 128 * 2**10
_libc = None
_retaining: contextvars.ContextVar[bool] = contextvars.ContextVar("ntkit_retaining", default=False)


def _glibc():
    """The C library when it is glibc on Linux, else ``False`` (looked up once)."""
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
def retained_heap(enabled: bool, *, environment_policy: bool = True) -> Iterator[None]:
    """Serve large CPU allocations from the heap and do not trim it, then trim once.

    Afterwards the trim threshold returns to its value before (the environment's
    ``MALLOC_TRIM_THRESHOLD_``, else glibc's default of 128 KiB) and ``malloc_trim`` hands
    the freed memory back, so the process does not keep the peak. The mmap threshold stays
    at 32 MiB (setting it ends glibc's dynamic adjustment, which moves it towards that value
    anyway once large blocks have been freed). Does nothing when ``enabled`` is false, when
    :func:`ntkit.settings.retain_heap` is off, when the C library is not glibc, or when the
    environment sets glibc's own thresholds (unless ``environment_policy`` is false: a Dask
    worker, whose nanny sets ``MALLOC_TRIM_THRESHOLD_`` for every worker process).
    """
    env = os.environ
    user_policy = "MALLOC_TRIM_THRESHOLD_" in env or "MALLOC_MMAP_THRESHOLD_" in env
    user_policy = user_policy and environment_policy
    wanted = enabled and retain_heap_enabled() and not user_policy and not _retaining.get()
    libc = _glibc() if wanted else False
    if not libc:
        yield
        return
    libc.mallopt(_M_MMAP_THRESHOLD, 32 * 2**20)  # glibc's maximum
    libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1)  # an int: the largest
    token = _retaining.set(True)  # nested kernels (tiles of a tiled matrix) keep the heap
    try:
        yield
    finally:
        _retaining.reset(token)
        libc.mallopt(_M_TRIM_THRESHOLD, _trim_threshold_before())
        libc.malloc_trim(0)


def _trim_threshold_before() -> int:
    """The environment's ``MALLOC_TRIM_THRESHOLD_`` if it is an int, else glibc's default."""
    try:
        return int(os.environ.get("MALLOC_TRIM_THRESHOLD_", _GLIBC_DEFAULT_TRIM))
    except ValueError:
        return _GLIBC_DEFAULT_TRIM


def run_parallel(fn: Callable, items: Iterable[tuple], workers: int) -> None:
    """Run ``fn(*item)`` for all items in ``workers`` threads with one torch thread each.

    At most two items per worker are queued at a time (bounded memory); the first error
    raised by ``fn`` is re-raised here. torch's thread count is restored afterwards.
    """
    from concurrent.futures import ThreadPoolExecutor

    threads = torch.get_num_threads()

    def single_threaded():
        torch.set_num_threads(1)

    try:
        with ThreadPoolExecutor(max_workers=workers, initializer=single_threaded) as pool:
            pending: collections.deque = collections.deque()
            for item in items:
                pending.append(pool.submit(fn, *item))
                if len(pending) >= 2 * workers:
                    pending.popleft().result()  # re-raises a tile's error
            while pending:
                pending.popleft().result()
    finally:
        torch.set_num_threads(threads)  # the workers changed torch's global setting
