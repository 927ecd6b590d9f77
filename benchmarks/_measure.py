"""Measure wall time and peak memory of one benchmark case in a fresh process.

Each case runs in its own subprocess so that peak memory (``ru_maxrss`` on CPU,
``torch.cuda.max_memory_allocated`` on CUDA) belongs to that case alone. The case reports
the peak *increase* over the process state after its inputs were created.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from contextlib import suppress


def run_case(setup: str, statement: str, *, device: str = "cpu", repeats: int = 3) -> dict:
    """Run ``setup`` once, then ``statement`` ``repeats`` times; return the best time and peak.

    Returns:
        ``{"seconds": best wall time, "peak_bytes": peak memory increase}``.
    """
    code = textwrap.dedent(
        f"""
        import json, resource, time, gc
        import torch
        {textwrap.indent(textwrap.dedent(setup), "        ").strip()}
        dev = torch.device({device!r})
        if dev.type == "cuda":
            torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        else:
            base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        best = float("inf")
        for _ in range({repeats}):
            gc.collect()
            t0 = time.perf_counter()
            out = {statement}
            if dev.type == "cuda":
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - t0)
            del out
        if dev.type == "cuda":
            peak = torch.cuda.max_memory_allocated() - base
        else:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
        print(json.dumps({{"seconds": best, "peak_bytes": peak}}))
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def status_bytes(field: str) -> int:
    """``field`` of ``/proc/self/status`` (``"VmRSS"``, ``"VmHWM"``) in bytes; 0 where absent."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


def reset_peak_rss() -> None:
    """Reset ``VmHWM`` to the current resident size (``/proc/self/clear_refs``) where allowed."""
    with suppress(OSError), open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")


def machine(device: str = "cpu") -> str:
    """What the numbers were measured on: the GPU's name, or the CPU model, cores, threads."""
    import platform

    import torch

    if str(device).startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            names = [ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")]
    except OSError:
        names = []
    if names:
        cpu = f"{names[0]} ({len(names)} cores)"
    return f"{cpu}, {torch.get_num_threads()} torch threads"
