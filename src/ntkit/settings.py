"""Numerical policy in one place: default dtypes and the memory budget."""

from __future__ import annotations

import os

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
