"""Depth-3 ReLU MLP kernel (NNGP + NTK, float64): time and peak memory against the Gram matrix.

Baselines, run in the same session (each case in a fresh process for honest peak memory):
- ``x @ x.T``: the single Gram matrix of the inputs, the unavoidable part;
- untiled torch: the same recursion with whole-matrix torch ops (how a direct port computes).

Usage: ``python benchmarks/fc_kernel.py [--sizes 2000 10000] [--device cuda] [--write]``.
"""

from __future__ import annotations

import argparse
import datetime
from pathlib import Path

import torch
from _measure import machine, run_case

SETUP = """
import math
from ntkit import layers as L
torch.manual_seed(0)
n, d = {n}, 784
x = torch.randn(n, d, dtype=torch.float64, device="{device}")
x2 = torch.randn(n, d, dtype=torch.float64, device="{device}")
net = L.serial(L.Dense(512, 1.5, 0.05), L.ReLU(), L.Dense(512, 1.5, 0.05), L.ReLU(),
               L.Dense(10, 1.5, 0.05))

def untiled(x):
    q = x @ x.T / d
    v = (x * x).sum(1) / d
    q, v = 2.25 * q + 0.0025, 2.25 * v + 0.0025
    t = q.clone()
    for _ in range(2):
        norm = torch.sqrt(v[:, None] * v[None, :])
        theta = torch.arccos(torch.clamp(q / norm, -1, 1))
        e = norm * (torch.sin(theta) + (math.pi - theta) * torch.cos(theta)) / (2 * math.pi)
        t = t * (math.pi - theta) / (2 * math.pi)
        q = 2.25 * e + 0.0025
        v = 2.25 * v / 2 + 0.0025
        t = q + 2.25 * t
    return q, t
"""

CASES = {
    "gram x @ x.T (baseline)": "x @ x.T",
    "untiled torch recursion": "untiled(x)",
    "ntkit net.kernel(x)": "net.kernel(x)",
    "ntkit net.kernel(x, x2)": "net.kernel(x, x2)",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 10000])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--write", action="store_true", help="write docs/benchmarks/fc_kernel.md")
    args = parser.parse_args()
    lines = [
        f"`python benchmarks/fc_kernel.py --sizes {' '.join(map(str, args.sizes))}"
        f"{'' if args.device == 'cpu' else ' --device ' + args.device}` on "
        f"{machine(args.device)}, torch {torch.__version__}, {datetime.date.today()}. "
        "Depth-3 ReLU MLP (Dense(512) + ReLU twice, Dense(10); "
        "w_std 1.5, b_std 0.05), NNGP + NTK, float64, d = 784, inputs standard normal. "
        "Each case in a fresh process; time: best of 2-3 calls; peak memory: increase of the "
        "resident-set peak (CPU) or of `max_memory_allocated` (CUDA) over the process after "
        "its inputs were made. The ratio is to the time of the Gram matrix `x @ x.T`.",
        "",
        "| n | case | time (s) | ratio to Gram | peak memory increase (GiB) |",
        "|---|---|---|---|---|",
    ]
    for n in args.sizes:
        setup = SETUP.format(n=n, device=args.device)
        gram = None
        for name, stmt in CASES.items():
            res = run_case(setup, stmt, device=args.device, repeats=2 if n > 5000 else 3)
            gram = gram or res["seconds"]
            row = (
                f"| {n} | {name} | {res['seconds']:.3f} | {res['seconds'] / gram:.2f} | "
                f"{res['peak_bytes'] / 2**30:.2f} |"
            )
            print(row, flush=True)
            lines.append(row)
    if args.write:
        path = Path(__file__).resolve().parents[1] / "docs" / "benchmarks" / "fc_kernel.md"
        path.write_text("# Fully connected kernel benchmark\n\n" + "\n".join(lines) + "\n")
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
