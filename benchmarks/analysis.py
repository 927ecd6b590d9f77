"""Sharpness (Lanczos on Hessian-vector products) and NTKTracker overhead.

Part 1 -- ``ntkit.analysis.sharpness`` on a ReLU MLP 784-1024-256-10 (1.07M parameters),
512 random inputs with random labels, cross-entropy, float32. Baseline in the same
process: one gradient evaluation (forward + backward of the loss in all parameters). Ours:
one Lanczos iteration = the whole ``sharpness(k=1)`` call divided by the number of
Hessian-vector products it made (so the one-off gradient graph and the tridiagonal solves
are included), for the torch-native Lanczos and for scipy's ARPACK. Target: one
Lanczos iteration at most 3x one gradient evaluation.

Part 2 -- ``NTKTracker(mode="sum_logits", every=10)`` on 128 probe inputs during 300 SGD
steps (batch 128) of a ReLU MLP 784-512-512-10: the tracker's calls and the training
steps timed separately inside one loop.

Each case runs in its own subprocess (peak memory = increase of the resident-set high-water
mark over the state after set-up).

Usage: ``python benchmarks/analysis.py [--threads 2] [--write]`` (``--write`` records
docs/benchmarks/analysis.md).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from _measure import machine, run_case

SETUP_MLP = """
import sys
import torch, torch.nn.functional as F
from ntkit.analysis import sharpness
S = sys.modules["ntkit.analysis.sharpness"]  # the module (the package exports the function)
torch.set_num_threads({threads})
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(784, 1024), torch.nn.ReLU(),
                            torch.nn.Linear(1024, 256), torch.nn.ReLU(),
                            torch.nn.Linear(256, 10))
x, y = torch.randn(512, 784), torch.randint(0, 10, (512,))
calls = [0]
_orig = S._HVP.__call__
def counted(self, v):
    calls[0] += 1
    return _orig(self, v)
S._HVP.__call__ = counted
def grad_once():
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()
    return 0
def sharp(method):
    calls[0] = 0
    sharpness(model, F.cross_entropy, x, y, method=method, tol=1e-4, max_iter=200)
    return calls[0]
grad_once()
"""


def tracker_overhead(threads: int, repeats: int = 3) -> tuple[float, float]:
    """Best loop time without the tracker, and the tracker's share measured inside the loop.

    The tracker's calls are timed inside the same loop (so machine load drifts cancel);
    returns ``(plain loop seconds, tracker seconds)``, each the minimum over ``repeats``.
    """
    import time

    import torch
    import torch.nn.functional as F

    from ntkit.analysis import NTKTracker

    torch.set_num_threads(threads)
    best_train, best_track = float("inf"), float("inf")
    for _ in range(repeats):
        torch.manual_seed(0)
        model = torch.nn.Sequential(
            torch.nn.Linear(784, 512),
            torch.nn.ReLU(),
            torch.nn.Linear(512, 512),
            torch.nn.ReLU(),
            torch.nn.Linear(512, 10),
        )
        g = torch.Generator().manual_seed(1)
        x, y = torch.randn(2048, 784, generator=g), torch.randint(0, 10, (2048,), generator=g)
        t0 = time.perf_counter()
        tracker = NTKTracker(model, x[:128], every=10, mode="sum_logits")
        track = time.perf_counter() - t0
        train = 0.0
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        for step in range(1, 301):
            t0 = time.perf_counter()
            idx = torch.randint(0, 2048, (128,), generator=g)
            opt.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
            t1 = time.perf_counter()
            tracker.step(step)
            train += t1 - t0
            track += time.perf_counter() - t1
        best_train, best_track = min(best_train, train), min(best_track, track)
    return best_train, best_track


def _iterations(threads: int, method: str) -> int:
    """Number of Hessian-vector products one ``sharpness`` call makes (counted in-process)."""
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent(SETUP_MLP.format(threads=threads)) + (
        f"\nimport json; print(json.dumps(sharp({method!r})))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(json.loads(out.stdout.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    t = args.threads
    import torch

    torch.set_num_threads(t)
    setup = SETUP_MLP.format(threads=t)
    grad = run_case(setup, "grad_once()", repeats=5)
    rows = [("gradient (baseline)", 1, grad["seconds"], grad["peak_bytes"])]
    for method in ("lanczos", "scipy"):
        n = _iterations(t, method)
        case = run_case(setup, f"sharp({method!r})", repeats=2)
        rows.append((f"sharpness, {method}", n, case["seconds"], case["peak_bytes"]))
    lines = [
        f"Machine: {machine()} (busy shared machine: 8 developers' jobs; each case ran alone "
        "in a subprocess of one session; the ratios are the meaningful numbers).",
        "",
        "**Sharpness** (MLP 784-1024-256-10, 1.07M parameters, 512 samples, float32, "
        "cross-entropy, `tol=1e-4`):",
        "",
        "| case | Hessian-vector products | total time | time per iteration | "
        "per iteration / gradient | peak memory |",
        "|---|---|---|---|---|---|",
    ]
    g = grad["seconds"]
    for name, n, sec, peak in rows:
        lines.append(
            f"| {name} | {n if 'sharp' in name else '-'} | {sec:.3f} s | {sec / n:.4f} s | "
            f"{sec / n / g:.2f}x | {peak / 2**20:.0f} MiB |"
        )
    train, track = tracker_overhead(t)
    lines += [
        "",
        "**NTKTracker overhead** (MLP 784-512-512-10, 300 SGD steps of batch 128, "
        '`mode="sum_logits"` on 128 probe inputs every 10 steps = 31 kernels; both parts '
        "timed inside the same loop, best of 3):",
        "",
        "| training steps | tracker calls | overhead |",
        "|---|---|---|",
        f"| {train:.2f} s | {track:.2f} s | {100 * track / train:.0f}% |",
    ]
    text = "\n".join(lines)
    print(text)
    if args.write:
        out = Path(__file__).resolve().parents[1] / "docs" / "benchmarks" / "analysis.md"
        out.write_text(
            "# Analysis benchmarks\n\n"
            "`python benchmarks/analysis.py --threads 2 --write`; see the script's docstring "
            "for the set-up.\n\n" + text + "\n"
        )


if __name__ == "__main__":
    main()
