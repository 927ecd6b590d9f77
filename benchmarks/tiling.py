"""Tiled kernel matrices: overhead, Dask scaling, and bounded memory with a store.

Three measurements (each in fresh processes; ratios from the same process):

1. overhead of ``kernel_matrix(net, x)`` (tiles chosen by the memory model, in memory)
   over one ``net.kernel(x)`` call, FC depth-3 ReLU MLP, n = 10000, d = 784, NNGP + NTK
   float64; the two calls alternate in one process, best of ``--repeats`` each; plus
   ``kernel_store`` (the same, written to a zarr store) for the cost of the disk;
2. throughput of a CNN kernel (three 3x3 ``same`` Conv(64) + ReLU, global average pooling,
   Dense(10); 8x8x1 inputs) on a Dask ``LocalCluster`` with 1 and 2 single-threaded worker
   processes (cluster started and warmed up before timing);
3. peak memory of a result twice the memory budget (``max_memory``) computed to a store with
   ``kernel_store``, against ``net.kernel`` holding it in memory.

Usage: ``python benchmarks/tiling.py [--n-fc 10000] [--n-cnn 200] [--write]``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import torch
from _measure import machine, run_case

FC = """
import shutil, tempfile
from ntkit import layers as L
from ntkit.tiling import kernel_matrix, kernel_store
torch.manual_seed(0)
x = torch.randn({n}, 784, dtype=torch.float64)
net = L.serial(L.Dense(512, 1.5, 0.05), L.ReLU(), L.Dense(512, 1.5, 0.05), L.ReLU(),
               L.Dense(10, 1.5, 0.05))
tmp = tempfile.mkdtemp()

def to_store(**opts):
    shutil.rmtree(tmp + "/k.zarr", ignore_errors=True)
    return kernel_store(net, x, store=tmp + "/k.zarr", progress=False, **opts)
"""

CNN = """
import logging
import distributed
from ntkit import layers as L
from ntkit.tiling import kernel_matrix
torch.manual_seed(0)
x = torch.randn({n}, 1, 8, 8, dtype=torch.float64)
conv = [L.Conv(64, 3, padding="same", w_std=1.5, b_std=0.05), L.ReLU()]
net = L.serial(*conv * 3, L.GlobalAvgPool(), L.Dense(10, 1.5, 0.05))
workers = {workers}
if workers:
    cluster = distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                       dashboard_address=None, silence_logs=logging.ERROR)
    client = distributed.Client(cluster)
    kernel_matrix(net, x[:8], tile=4, executor=client, progress=False)  # warm up the workers
else:
    client = None
"""


def alternate(setup: str, a: str, b: str, repeats: int) -> dict:
    """Best times of statements ``a`` and ``b`` run alternately in one fresh process."""
    code = textwrap.dedent(
        f"""
        import json, time, gc
        import torch
        {textwrap.indent(textwrap.dedent(setup), "        ").strip()}
        best = {{"a": float("inf"), "b": float("inf")}}
        for _ in range({repeats}):
            for key, stmt in (("a", lambda: {a}), ("b", lambda: {b})):
                gc.collect()
                t0 = time.perf_counter()
                out = stmt()
                best[key] = min(best[key], time.perf_counter() - t0)
                del out
        print(json.dumps(best))
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def load_average() -> str:
    try:
        with open("/proc/loadavg") as fh:
            return fh.read().split()[0]
    except OSError:
        return "?"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n-fc", type=int, default=10000)
    parser.add_argument("--n-cnn", type=int, default=200)
    parser.add_argument("--tile-cnn", type=int, default=25)
    parser.add_argument("--budget-mib", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--write", action="store_true", help="write docs/benchmarks/tiling.md")
    parser.add_argument(
        "--parts", nargs="+", default=["fc", "cnn", "waits", "memory"], help="what to measure"
    )
    args = parser.parse_args()
    rows = []

    def emit(*cells):
        row = "| " + " | ".join(str(c) for c in cells) + " |"
        print(row, flush=True)
        rows.append(row)

    # 1. overhead over one in-memory call
    if "fc" in args.parts:
        fc_part(args, emit)
    if "cnn" in args.parts:
        cnn_part(args, emit)
    if "waits" in args.parts:
        waits_part(emit)
    if "memory" in args.parts:
        memory_part(args, emit)
    write(args, rows)


def fc_part(args, emit) -> None:
    """1. overhead of kernel_matrix (and kernel_store) over one net.kernel call."""
    setup = FC.format(n=args.n_fc)
    t = alternate(setup, "net.kernel(x)", "kernel_matrix(net, x, progress=False)", args.repeats)
    emit(f"FC n={args.n_fc}", "net.kernel(x) (baseline)", f"{t['a']:.2f} s", "1.00", "")
    emit(
        f"FC n={args.n_fc}",
        "kernel_matrix(net, x), tiles from the memory model",
        f"{t['b']:.2f} s",
        f"{t['b'] / t['a']:.3f}",
        f"overhead {100 * (t['b'] / t['a'] - 1):+.1f}% (target < 10%)",
    )
    s = alternate(setup, "net.kernel(x)", "to_store()", args.repeats)
    emit(
        f"FC n={args.n_fc}",
        "kernel_store(net, x, store=...) (written to disk)",
        f"{s['b']:.2f} s",
        f"{s['b'] / s['a']:.3f}",
        "zarr store, uncompressed, checksummed",
    )


def cnn_part(args, emit) -> None:
    """2. CNN kernel throughput with 1 and 2 Dask worker processes."""
    pairs = args.n_cnn * (args.n_cnn + 1) / 2
    stmt = f"kernel_matrix(net, x, tile={args.tile_cnn}, executor=client, progress=False)"
    times = {}
    for workers in (1, 2):
        res = run_case(CNN.format(n=args.n_cnn, workers=workers), stmt, repeats=2)
        times[workers] = res["seconds"]
        note = "" if workers == 1 else f"speed-up {times[1] / times[2]:.2f}x (target >= 1.7x)"
        emit(
            f"CNN 8x8 GAP n={args.n_cnn}",
            f"Dask LocalCluster, {workers} worker process(es), tile {args.tile_cnn}",
            f"{res['seconds']:.2f} s",
            f"{pairs / res['seconds']:.0f} pairs/s",
            note,
        )


def waits_part(emit) -> None:
    """2b. the executor itself: tiles that wait (0.5 s) instead of computing, so that the
    speed-up does not depend on free cores on a shared machine."""
    sleepy = CNN.format(n=40, workers="{workers}").replace(
        "x = torch.randn(40", "import os, time\nx = torch.randn(40"
    )
    sleepy += textwrap.dedent(
        """
        def waits(a, b):
            time.sleep(0.5)
            return torch.zeros(len(a), len(b), dtype=torch.float64)
        """
    )
    waits = {}
    for workers in (1, 2):
        res = run_case(
            sleepy.format(workers=workers),
            "kernel_matrix(waits, x, x, tile=10, executor=client, progress=False)",
            repeats=1,
        )
        waits[workers] = res["seconds"]
        note = "" if workers == 1 else f"speed-up {waits[1] / waits[2]:.2f}x (ideal 2x)"
        emit(
            "16 tiles of 0.5 s (sleep)",
            f"Dask LocalCluster, {workers} worker process(es)",
            f"{res['seconds']:.2f} s",
            "",
            note,
        )


def memory_part(args, emit) -> None:
    """3. peak memory of a result twice the budget, computed to a store."""
    budget = args.budget_mib * 2**20
    n = int((2 * budget / 16) ** 0.5)  # NNGP + NTK, float64: 16 bytes per pair
    setup = FC.format(n=n)
    mem = run_case(setup, f"to_store(max_memory={budget})", repeats=1)
    ref = run_case(setup, "net.kernel(x)", repeats=1)
    result_mib = 16 * n * n / 2**20
    emit(
        f"FC n={n} (result {result_mib:.0f} MiB)",
        f"kernel_store(..., max_memory={args.budget_mib} MiB)",
        f"{mem['seconds']:.2f} s",
        f"peak +{mem['peak_bytes'] / 2**20:.0f} MiB",
        f"net.kernel(x) in memory: {ref['seconds']:.2f} s, peak +"
        f"{ref['peak_bytes'] / 2**20:.0f} MiB",
    )


def write(args, rows) -> None:
    """Print the header and, with --write, write docs/benchmarks/tiling.md."""
    header = [
        "# Tiling benchmark (`benchmarks/tiling.py`)",
        "",
        f"`python benchmarks/tiling.py --n-fc {args.n_fc} --n-cnn {args.n_cnn}` on "
        f"{machine()}, torch {torch.__version__}, {datetime.date.today()}; load average "
        f"{load_average()} at the end (a shared machine, busy with other jobs: absolute times "
        "are noisy, ratios come from the same process or back-to-back runs). No GPU was "
        "available for these measurements.",
        "",
        "| case | what | time | ratio / throughput / peak | note |",
        "|---|---|---|---|---|",
    ]
    if args.write:
        path = Path(__file__).resolve().parents[1] / "docs" / "benchmarks" / "tiling.md"
        path.write_text("\n".join(header + rows) + "\n")
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
