"""Numerical policy in one place: default dtypes, the memory budget, host-process switches.

The host-process switches are context managers over ``contextvars`` (GPyTorch's style):
they apply to the calls made inside the ``with`` block, in this thread or task only, and
are restored when it ends::

    with ntkit.settings.parallel_tiles(False), ntkit.settings.retain_heap(False):
        k = net.kernel(x)
"""

from __future__ import annotations

import contextlib
import contextvars
import os
from collections.abc import Iterator

import torch

#: Kernel arithmetic runs in this dtype unless a call asks for another.
KERNEL_DTYPE = torch.float64

#: Fraction of the currently available memory that a computation may plan to use by default.
MEMORY_FRACTION = 0.5


def default_kernel_dtype() -> torch.dtype:
    """The dtype kernels are computed in by default (float64)."""
    return KERNEL_DTYPE


def available_memory(device: torch.device | str | None = None) -> int:
    """Bytes currently available on ``device`` (host RAM for CPU, free memory for CUDA)."""
    device = torch.device("cpu" if device is None else device)
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 4 * 2**30


def default_max_memory(device: torch.device | str | None = None) -> int:
    """The default memory budget in bytes: a safe fraction of what is available now."""
    return int(MEMORY_FRACTION * available_memory(device))


def format_bytes(n: float) -> str:
    """Human-readable byte count, e.g. ``'1.50 GiB'``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.2f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.2f} PiB"


# ----------------------------------------------------------------------------- host switches
_PARALLEL_TILES: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "ntkit_parallel_tiles", default=True
)
_RETAIN_HEAP: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "ntkit_retain_heap", default=True
)


@contextlib.contextmanager
def parallel_tiles(enabled: bool) -> Iterator[None]:
    """Compute CPU kernel tiles concurrently, one per torch thread (on by default).

    While tiles run, each worker thread uses one torch thread; torch's thread count is
    restored when the kernel is done.
    """
    token = _PARALLEL_TILES.set(bool(enabled))
    try:
        yield
    finally:
        _PARALLEL_TILES.reset(token)


def parallel_tiles_enabled() -> bool:
    """Whether CPU kernel tiles run concurrently in this context."""
    return _PARALLEL_TILES.get()


@contextlib.contextmanager
def retain_heap(enabled: bool) -> Iterator[None]:
    """Keep freed tile buffers in the process heap while a CPU kernel runs (glibc only).

    On by default. Each tile allocates and frees arrays of megabytes; glibc returns them to
    the operating system and the next tile page-faults them back in, which on virtual
    machines costs more than the arithmetic (measured: 2-3x slower CNN kernels). While a
    kernel is computed, ntkit raises glibc's trim and mmap thresholds (``mallopt``); when it
    ends, the trim threshold returns to glibc's default and the heap is trimmed once. The
    switch is skipped when the environment sets ``MALLOC_TRIM_THRESHOLD_`` or
    ``MALLOC_MMAP_THRESHOLD_`` (the user's own malloc policy wins).
    """
    token = _RETAIN_HEAP.set(bool(enabled))
    try:
        yield
    finally:
        _RETAIN_HEAP.reset(token)


def retain_heap_enabled() -> bool:
    """Whether CPU kernels keep freed buffers in the heap in this context."""
    return _RETAIN_HEAP.get()
