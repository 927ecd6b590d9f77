"""What a run depends on: versions, devices, threads and the memory budget.

``ntkit info`` prints it and reports record it as their provenance.
"""

from __future__ import annotations

import os
import platform
import sys
from importlib import metadata

__all__ = ["describe_environment"]


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def describe_environment() -> dict[str, str]:
    """Versions, devices, threads and memory budget as ``{item: text}`` (imports torch).

    Returns:
        Ordered items: ntkit, python, platform, torch, numpy, scipy, scikit-learn, devices,
        threads, available memory and ntkit's default memory budget per device, and the
        default kernel dtype.
    """
    import torch

    import ntkit
    from ntkit.settings import available_memory, default_kernel_dtype, default_max_memory
    from ntkit.settings import format_bytes as fmt

    cuda = torch.version.cuda
    items = {
        "ntkit": ntkit.__version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": f"{torch.__version__} ({'CUDA ' + cuda if cuda else 'CPU build'})",
        "numpy": _version("numpy"),
        "scipy": _version("scipy"),
        "scikit-learn": _version("scikit-learn"),
    }
    devices = [f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            devices.append(f"cuda:{i} ({props.name}, {fmt(props.total_memory)})")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        devices.append("mps")
    items["devices"] = ", ".join(devices)
    omp = os.environ.get("OMP_NUM_THREADS")
    items["threads"] = (
        f"{torch.get_num_threads()} intra-op, {torch.get_num_interop_threads()} inter-op"
        + (f" (OMP_NUM_THREADS={omp})" if omp else "")
    )
    items["memory available (cpu)"] = fmt(available_memory("cpu"))
    items["default max_memory (cpu)"] = fmt(default_max_memory("cpu"))
    if torch.cuda.is_available():
        items["default max_memory (cuda:0)"] = fmt(default_max_memory("cuda:0"))
    items["kernel dtype"] = str(default_kernel_dtype()).replace("torch.", "")
    return items
