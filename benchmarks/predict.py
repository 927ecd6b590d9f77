"""Training-dynamics predictors and large solves: time, peak memory, accuracy vs baselines.

Part 1 -- ``gradient_descent_mse`` on an n x n NTK (one-hidden-layer ReLU network, random
inputs, 10 outputs, 1000 test points): set-up (one eigendecomposition) and evaluation of
train + test outputs at 100 times. Baselines in the same process:
- gradient flow: ``torch.linalg.matrix_exp(-eta K t)`` per time point (the gradient-flow
  solution of Lee et al. 2019, eqs. 9-11, as written), measured on 3 time points and
  reported per time point;
- discrete GD: iterating gradient descent in function space to step 1000 (what one does
  without the closed form), recording 100 snapshots.

Part 2 -- ``(K + r I) X = Y`` at n = 20000 (3.2 GB in float64), 10 right-hand sides:
- direct: ``solve_psd`` (Cholesky, factor in place on a copy) on the stored NTK;
- CG: ``conjugate_gradient`` (Nystrom preconditioner) on the same stored NTK;
- matrix-free CG: an RBF kernel recomputed block by block at every product (never stored).
The NTK itself is built tile by tile (``kernel_operator(...).to_dense()``).

Peak memory is the resident-set high-water mark (reset through /proc/self/clear_refs)
minus the resident size before the step, so it counts what the step itself added; on CUDA
``torch.cuda.max_memory_allocated`` minus the allocation before it.

Usage: ``python benchmarks/predict.py [--sizes 2000 8000] [--cg-n 20000] [--threads 2]
[--device cpu] [--write]`` (``--write`` records docs/benchmarks/predict.md).
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import math
import os
import time
from contextlib import contextmanager, suppress
from pathlib import Path

import torch
from _measure import machine

from ntkit import layers as L
from ntkit.predict import gradient_descent_mse, max_learning_rate, solve_psd
from ntkit.predict.solvers import (
    BlockKernelOperator,
    DenseOperator,
    conjugate_gradient,
    kernel_operator,
)

N_OUT, N_TEST, D_IN = 10, 1000, 64


def _trim() -> None:
    """Return freed heap memory to the OS so that reuse shows up in the resident size."""
    with suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _rss(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field):
                return int(line.split()[1]) * 1024
    return 0


class Measure:
    """Wall time and peak memory added by a block."""

    def __init__(self, device: torch.device):
        self.device = device
        self.seconds = 0.0
        self.peak = 0

    @contextmanager
    def __call__(self):
        gc.collect()
        cuda = self.device.type == "cuda"
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        else:
            _trim()
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")
            base = _rss("VmRSS")
        start = time.perf_counter()
        yield self
        if cuda:
            torch.cuda.synchronize()
        self.seconds = time.perf_counter() - start
        self.peak = (torch.cuda.max_memory_allocated() if cuda else _rss("VmHWM")) - base


def _gib(b: int) -> str:
    return f"{b / 2**30:.2f} GiB" if abs(b) >= 2**28 else f"{b / 2**20:.0f} MiB"


def _net():
    return L.serial(L.Dense(512, 1.5, 0.05), L.ReLU(), L.Dense(N_OUT, 1.5, 0.05))


def _data(n: int, device, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n + N_TEST, D_IN, generator=gen, dtype=torch.float64).to(device)
    labels = torch.randint(0, N_OUT, (n,), generator=gen)
    y = torch.nn.functional.one_hot(labels, N_OUT).double().to(device)
    return x[:n], x[n:], y


def bench_predictor(n: int, device) -> list[list[str]]:
    """Part 1 rows for one training-set size."""
    x, xt, y = _data(n, device)
    net = _net()
    k = kernel_operator(net, x).to_dense()
    kt = kernel_operator(net, xt, x).to_dense()
    f0 = 0.1 * torch.randn(
        n, N_OUT, dtype=torch.float64, generator=torch.Generator().manual_seed(1)
    )
    f0 = f0.to(device)
    m = Measure(device)
    rows = []
    with m():
        lr = 0.5 * max_learning_rate(k)
    rows.append([f"{n}", "max_learning_rate", f"{m.seconds:.2f}", _gib(m.peak), "", ""])
    times = torch.logspace(-1, 4, 100, dtype=torch.float64)
    with m():
        pred = gradient_descent_mse(k, y, learning_rate=lr)
    setup = m.seconds
    rows.append([f"{n}", "flow: set-up (eigh)", f"{m.seconds:.2f}", _gib(m.peak), "", ""])
    with m():
        out = pred(times, fx_train_0=f0, k_test_train=kt)
    rows.append([f"{n}", "flow: 100 times, train + test", f"{m.seconds:.2f}", _gib(m.peak), "", ""])
    ours_total = setup + m.seconds
    # baseline: matrix_exp per time (train outputs only); ~25 n^3 flops per time point, so
    # measured on 3 time points up to n = 4000 and on 1 beyond
    check = [5, 50, 95] if n <= 4000 else [50]
    with m():
        base = [y + torch.linalg.matrix_exp(-lr * float(times[i]) * k) @ (f0 - y) for i in check]
    per_t = m.seconds / len(check)
    err = max(float((b - out.train[i]).abs().max()) for b, i in zip(base, check))
    rows.append(
        [
            f"{n}",
            f"baseline: matrix_exp, per time (train only, {len(check)} measured)",
            f"{per_t:.2f}",
            _gib(m.peak),
            f"{100 * per_t / ours_total:.1f}x (100 times)",
            f"{err:.1e}",
        ]
    )
    del base, out
    # discrete: closed form vs iterating GD in function space
    steps = sorted({int(s) for s in torch.logspace(0, 3, 100).round().tolist()})
    with m():
        dpred = gradient_descent_mse(k, y, learning_rate=lr, discrete=True)
        dout = dpred(steps, fx_train_0=f0, k_test_train=kt)
    ours = m.seconds
    rows.append(
        [f"{n}", f"GD: set-up + {len(steps)} step counts", f"{ours:.2f}", _gib(m.peak), "", ""]
    )
    with m():
        f, ft = f0.clone(), torch.zeros(N_TEST, N_OUT, dtype=torch.float64, device=device)
        snaps, j = [], 0
        for s in range(1, steps[-1] + 1):
            r = f - y
            f, ft = f - lr * (k @ r), ft - lr * (kt @ r)
            if s == steps[j]:
                snaps.append((f, ft))
                j += 1
    err = max(
        max(float((a - dout.train[i]).abs().max()), float((b - dout.test[i]).abs().max()))
        for i, (a, b) in enumerate(snaps)
    )
    rows.append(
        [
            f"{n}",
            f"baseline: iterate GD to step {steps[-1]}",
            f"{m.seconds:.2f}",
            _gib(m.peak),
            f"{m.seconds / ours:.1f}x",
            f"{err:.1e}",
        ]
    )
    return rows


def _rbf(a, b):
    d2 = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T
    return torch.exp(-d2.clamp_min_(0) / (2 * D_IN))


def bench_solvers(n: int, device, rank: int, ridge_relative: float) -> list[list[str]]:
    """Part 2 rows."""
    x, _, y = _data(n, device, seed=2)
    m = Measure(device)
    rows = []
    with m():
        k = kernel_operator(_net(), x).to_dense()
    rows.append(["NTK built tile by tile", f"{m.seconds:.1f}", _gib(m.peak), "", "", ""])
    ridge = ridge_relative * float(k.diagonal().mean())

    def residual(mat, sol):
        r = mat @ sol + ridge * sol - y
        return float((torch.linalg.norm(r, dim=0) / torch.linalg.norm(y, dim=0)).max())

    with m():
        direct = solve_psd(k, y, ridge=ridge)
    rows.append(
        [
            "direct (Cholesky)",
            f"{m.seconds:.1f}",
            _gib(m.peak),
            "-",
            f"{residual(k, direct):.1e}",
            "",
        ]
    )
    with m():
        res = conjugate_gradient(DenseOperator(k), y, ridge=ridge, rank=rank, tol=1e-8)
    diff = float(torch.linalg.norm(res.solution - direct) / torch.linalg.norm(direct))
    rows.append(
        [
            f"CG, stored kernel (Nystrom {rank})",
            f"{m.seconds:.1f}",
            _gib(m.peak),
            f"{res.iterations}",
            f"{float(res.residual.max()):.1e}",
            f"{diff:.1e}",
        ]
    )
    with m():
        res = conjugate_gradient(DenseOperator(k), y, ridge=ridge, preconditioner=None, tol=1e-8)
    diff = float(torch.linalg.norm(res.solution - direct) / torch.linalg.norm(direct))
    rows.append(
        [
            "CG, stored kernel (no preconditioner)",
            f"{m.seconds:.1f}",
            _gib(m.peak),
            f"{res.iterations}",
            f"{float(res.residual.max()):.1e}",
            f"{diff:.1e}",
        ]
    )
    del k, direct
    gc.collect()
    op = BlockKernelOperator(_rbf, x)
    ridge_rbf = ridge_relative  # the RBF diagonal is 1
    with m():
        res = conjugate_gradient(op, y, ridge=ridge_rbf, rank=rank, tol=1e-8)
    rows.append(
        [
            f"CG, matrix-free RBF (Nystrom {rank}, blocks of {op.block_size} rows)",
            f"{m.seconds:.1f}",
            _gib(m.peak),
            f"{res.iterations}",
            f"{float(res.residual.max()):.1e}",
            "",
        ]
    )
    return rows


def _table(header, rows) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[2000, 8000])
    parser.add_argument("--cg-n", type=int, default=20000)
    parser.add_argument("--rank", type=int, default=200)
    parser.add_argument("--ridge-relative", type=float, default=1e-4)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else math.nan
    where = machine(str(device))
    env = f"device: {where}; torch {torch.__version__}; load average at start {load:.1f}"
    print(env)
    rows1 = []
    for n in args.sizes:
        rows1 += bench_predictor(n, device)
        print(
            _table(
                ["n", "step", "seconds", "peak memory", "baseline / ours", "max abs diff"], rows1
            )
        )
    rows2 = []
    if args.cg_n:
        rows2 = bench_solvers(args.cg_n, device, args.rank, args.ridge_relative)
    head2 = ["method", "seconds", "peak memory", "iterations", "relative residual", "vs direct"]
    text = (
        "# Benchmark: training-dynamics predictors and large solves\n\n"
        f"`python benchmarks/predict.py {' '.join(os.sys.argv[1:])}`; {env}.\n\n"
        "## Predictor set-up and evaluation (NTK of a one-hidden-layer ReLU net, "
        f"{N_OUT} outputs, {N_TEST} test points, float64)\n\n"
        + _table(["n", "step", "seconds", "peak memory", "baseline / ours", "max abs diff"], rows1)
        + "\n"
    )
    if rows2:
        text += (
            f"\n## Solving (K + r I) X = Y at n = {args.cg_n}, {N_OUT} right-hand sides, "
            f"r = {args.ridge_relative:g} x mean diag, tol 1e-8, float64\n\n"
            + _table(head2, rows2)
            + "\n"
        )
    print(text)
    if args.write:
        out = Path(__file__).resolve().parents[1] / "docs" / "benchmarks" / "predict.md"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        print(f"written to {out}")


if __name__ == "__main__":
    main()
