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


_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "t": 1000**4,
    "tb": 1000**4,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}


def parse_bytes(value, name: str = "max_memory") -> int:
    """A byte count from a number or a string such as ``"2GiB"``, ``"1.5 GB"``, ``"512MiB"``.

    Decimal units (kB, MB, GB, TB) are powers of 1000, binary units (KiB, MiB, GiB, TiB)
    powers of 1024; a bare number is bytes.

    Raises:
        TypeError: not a number or a string.
        ValueError: NaN, infinite, not positive, or an unknown unit.
    """
    import math
    import re

    if isinstance(value, bool):
        raise TypeError(f"{name} must be a number of bytes or a string like '2GiB'; got {value!r}.")
    if isinstance(value, str):
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([A-Za-z]*)\s*", value)
        unit = m.group(2).lower() if m else None
        if m is None or unit not in _UNITS:
            raise ValueError(
                f"{name} must be a number of bytes or a string like '2GiB', '1.5GB' or "
                f"'512MiB'; got {value!r}."
            )
        number = float(m.group(1)) * _UNITS[unit]
    else:
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise TypeError(
                f"{name} must be a number of bytes or a string like '2GiB'; got "
                f"{type(value).__name__} {value!r}."
            ) from None
    if not math.isfinite(number) or number <= 0:
        raise ValueError(f"{name} must be a positive, finite number of bytes; got {value!r}.")
    return int(number)


def resolve_max_memory(max_memory, device: torch.device | str | None = None) -> int:
    """``max_memory`` in bytes (see :func:`parse_bytes`), or the default budget for ``None``."""
    return default_max_memory(device) if max_memory is None else parse_bytes(max_memory)


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
