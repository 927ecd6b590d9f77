"""Infinite-width kernels of a 3-layer ReLU CNN: time and peak memory.

Networks: three ``Conv(64, 3, padding="same") + ReLU`` layers, then a global average
pooling readout (needs the full location-by-location covariance) or a Flatten readout
(needs only same-location covariances), then ``Dense(10)``. Data: scikit-learn's 8x8
digits (n = 200, one channel) and random 16x16x3 images (n = 100); ``x2 = None``.

Every case runs in a fresh process so that its peak resident memory is its own. With
``--nt-python PATH`` (a Python with neural-tangents and JAX installed) the reference JAX
implementation runs the same networks on the same data, also in its own process, and the
table shows the ratios; without it the table quotes reference numbers from an earlier run
(about 63 s and 4 GiB for digits + GAP, about 250 s for 16x16x3 + GAP, on the same kind of
2-core machine).

Usage:
    python benchmarks/cnn_kernel.py [--nt-python PATH] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CASES = {
    "digits 8x8x1, n=200, GAP": ("digits", "gap"),
    "digits 8x8x1, n=200, Flatten": ("digits", "flatten"),
    "random 16x16x3, n=100, GAP": ("random16", "gap"),
    "random 16x16x3, n=100, Flatten": ("random16", "flatten"),
}
#: The issue's reference numbers (JAX, 2-core machine), used when no --nt-python is given.
QUOTED = {
    "digits 8x8x1, n=200, GAP": (63.0, 4.0 * 2**30),
    "random 16x16x3, n=100, GAP": (250.0, None),
}


def _data(name: str):
    import numpy as np

    if name == "digits":
        from sklearn.datasets import load_digits

        x = load_digits().data[:200].astype(np.float64)
        x = (x - x.mean(0)) / np.where(x.std(0) > 0, x.std(0), 1.0)
        return x.reshape(200, 1, 8, 8)
    return np.random.default_rng(0).standard_normal((100, 3, 16, 16))


def _rss() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def worker_ntkit(case: str, dtype: str, device: str = "cpu") -> dict:
    import torch

    from ntkit import layers as L

    data, readout = CASES[case]
    x = torch.from_numpy(_data(data)).to(device)
    net = L.serial(
        *[m for _ in range(3) for m in (L.Conv(64, 3, padding="same"), L.ReLU())],
        L.GlobalAvgPool() if readout == "gap" else L.Flatten(),
        L.Dense(10),
    )
    before = _rss()
    t0, c0 = time.perf_counter(), time.process_time()
    if device == "cuda":
        net.kernel(x[:8], dtype=getattr(torch, dtype))  # warm-up (CUDA context, kernels)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        t0, c0 = time.perf_counter(), time.process_time()
    k = net.kernel(x, dtype=getattr(torch, dtype))
    if device == "cuda":
        torch.cuda.synchronize()
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {
        "seconds": seconds,
        "cpu_seconds": cpu,
        "peak_rss": torch.cuda.max_memory_allocated() if device == "cuda" else _peak_rss(),
        "rss_before": before,
        "threads": torch.get_num_threads(),
        "checksum": float(k.ntk.sum()),
    }


NT_SCRIPT = r"""
import json, os, resource, sys, time
import numpy as np
import jax
if sys.argv[2] == "float64":
    jax.config.update("jax_enable_x64", True)
from neural_tangents import stax
x = np.load(sys.argv[1])
x = np.transpose(x, (0, 2, 3, 1))  # NHWC
readout = stax.GlobalAvgPool() if sys.argv[3] == "gap" else stax.Flatten()
layers = []
for _ in range(3):
    layers += [stax.Conv(64, (3, 3), padding="SAME"), stax.Relu()]
_, _, kernel_fn = stax.serial(*layers, readout, stax.Dense(10))
def rss():
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
before = rss()
t0, c0 = time.perf_counter(), time.process_time()
k = kernel_fn(x, None, ("nngp", "ntk"))
ntk = np.asarray(k[1])
seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
print(json.dumps({"seconds": seconds, "cpu_seconds": cpu, "rss_before": before,
                  "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                  "checksum": float(ntk.sum())}))
"""


def worker_nt(case: str, dtype: str, nt_python: str) -> dict:
    import numpy as np

    data, readout = CASES[case]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "x.npy"
        np.save(path, _data(data))
        script = Path(tmp) / "nt_bench.py"
        script.write_text(NT_SCRIPT)
        proc = subprocess.run(
            [nt_python, str(script), str(path), dtype, readout],
            capture_output=True,
            text=True,
            check=False,
        )
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr else "failed"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _spawn(case: str, dtype: str, device: str = "cpu") -> dict:
    proc = subprocess.run(
        [sys.executable, __file__, "--worker", case, "--dtype", dtype, "--device", device],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _gib(n) -> str:
    return "-" if n is None else f"{n / 2**30:.2f} GiB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nt-python", help="Python with neural-tangents (JAX) for the baseline")
    parser.add_argument(
        "--nt-cases",
        default="digits",
        help="run the JAX baseline for cases whose name contains this (the 16x16x3 GAP case "
        "needs more than 20 GiB there); default: digits",
    )
    parser.add_argument(
        "--nt-dtype", default="float32", choices=["float64", "float32"], help="JAX's default"
    )
    parser.add_argument("--out", help="also write the markdown table to this file")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--dtype", default="float64", help=argparse.SUPPRESS)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (peak: CUDA allocations)")
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker_ntkit(args.worker, args.dtype, args.device)))
        return

    rows = []
    for case in CASES:
        ours = _spawn(case, "float64", args.device)
        ours32 = _spawn(case, "float32", args.device)
        if args.nt_python and args.nt_cases in case:
            ref = worker_nt(case, args.nt_dtype, args.nt_python)
            ref_s, ref_mem = ref.get("seconds"), ref.get("peak_rss")
            source = f"JAX NT 0.6.5 measured here ({args.nt_dtype})"
            if "error" in ref:
                source = f"JAX NT failed: {ref['error'][:60]}"
        else:
            ref_s, ref_mem = QUOTED.get(case, (None, None))
            source = "quoted (earlier run)" if case in QUOTED else "-"
        speedup = f"{ref_s / ours['seconds']:.1f}x" if ref_s else "-"
        rows.append(
            f"| {case} | {ours['seconds']:.2f} s | {ours['cpu_seconds']:.2f} s | "
            f"{_gib(ours['peak_rss'])} | {ours32['seconds']:.2f} s | "
            f"{'-' if ref_s is None else f'{ref_s:.1f} s'} | {_gib(ref_mem)} | {speedup} | "
            f"{source} |"
        )
        print(rows[-1], flush=True)
    header = (
        "| case | ntkit float64 | (CPU time) | ntkit peak RSS | ntkit float32 | reference | "
        "reference peak RSS | speed-up (float64) | reference source |\n"
        "|---|---|---|---|---|---|---|---|---|"
    )
    load = os.getloadavg()
    note = (
        f"\nThree `Conv(64, 3, padding='same') + ReLU`, then GAP or Flatten, then `Dense(10)`; "
        f"NNGP and NTK, `x2=None`. ntkit with {ours['threads']} torch threads on "
        f"{os.cpu_count()} cores ({platform.machine()}); load average {load[0]:.1f} at the end "
        "(other jobs share the machine: CPU time is the robust number). Peak RSS is the whole "
        "process, Python and torch included."
    )
    table = header + "\n" + "\n".join(rows) + "\n" + note + "\n"
    print("\n" + table)
    if args.out:
        Path(args.out).write_text("# CNN kernel benchmark (`benchmarks/cnn_kernel.py`)\n\n" + table)


if __name__ == "__main__":
    main()
