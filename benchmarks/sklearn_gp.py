"""NTKKernel against scikit-ntk's NeuralTangentKernel in the same GaussianProcessRegressor.

Both are fully connected ReLU NTKs of depth L. Where their conventions agree (no bias) they
are the same kernel up to a constant factor: scikit-ntk's ``NeuralTangentKernel(L, 0)`` equals
ntkit's ``NTKKernel(depth=L, w_std=sqrt(2), b_std=None)`` times ``d / (2 (L + 1))``
(docs/sklearn.md derives it); the script checks that before timing.

Measured, each the best of ``--repeats`` runs, in one process (n = 2000 by default):

1. ``K(X)``: the kernel matrix alone (the same kernel);
2. ``K(X)`` with ``eval_gradient=True`` for one free hyperparameter each (scikit-ntk: its
   ``bias``, analytic gradient in numpy; ntkit: ``w_std``, by its one-pass analytic tangents
   (``gradient="autograd"``, what ``"auto"`` picks for this spec), by forward-mode autograd
   through the layers (the general path other specs take), and by central differences);
3. one evaluation of ``GaussianProcessRegressor.log_marginal_likelihood(theta,
   eval_gradient=True)`` (what the optimizer calls; includes scikit-learn's own O(n^3)
   Cholesky and inverse, shared by both), and that shared part alone (the same call on a
   kernel that returns stored matrices): no kernel can make the evaluation faster than
   the shared part, so ``scikit-ntk's time / shared part`` bounds the ratio;
4. ``diag(X)`` (scikit-ntk computes the whole matrix for it).

Peak memory: the resident-set high-water mark (reset through /proc/self/clear_refs) minus the
resident size before the step.

Usage: ``python benchmarks/sklearn_gp.py [--n 2000] [--depth 3] [--threads 2] [--repeats 3]``.
"""

from __future__ import annotations

import argparse
import gc
import math
import time

import numpy as np
import torch
from _measure import machine, reset_peak_rss, status_bytes
from sklearn.gaussian_process import GaussianProcessRegressor
from sklearn.gaussian_process.kernels import Hyperparameter, Kernel
from threadpoolctl import threadpool_limits

from ntkit.sklearn import NTKKernel


def measure(fn, repeats: int) -> tuple[float, int]:
    """Best wall time of ``fn()`` and the peak resident-memory increase of one call."""
    best, peak = math.inf, 0
    for _ in range(repeats):
        gc.collect()
        reset_peak_rss()
        before = status_bytes("VmRSS")
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
        peak = max(peak, status_bytes("VmHWM") - before)
        del out
    return best, peak


def stored_kernel(k: np.ndarray, grad: np.ndarray) -> Kernel:
    """A kernel returning stored ``(K, dK)``: times scikit-learn's own share of an evaluation.

    The matrices live in the closure, not in ``get_params`` (scikit-learn clones the kernel
    on every evaluation; copying them would add to the time measured).
    """

    class StoredKernel(Kernel):
        def __init__(self, length=1.0):
            self.length = length

        @property
        def hyperparameter_length(self):
            return Hyperparameter("length", "numeric", (1e-3, 1e3))

        def __call__(self, X, Y=None, eval_gradient=False):
            return (k, grad) if eval_gradient else k

        def diag(self, X):
            return np.diag(k)

        def is_stationary(self):
            return False

    return StoredKernel()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--d", type=int, default=64)
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with threadpool_limits(args.threads):  # numpy's BLAS too: both sides get the same cores
        run(args)


def run(args) -> None:
    try:
        from skntk import NeuralTangentKernel
    except ImportError as err:
        raise SystemExit("needs scikit-ntk: pip install -e '.[oracle]'") from err

    rng = np.random.default_rng(0)
    x = rng.normal(size=(args.n, args.d))
    y = np.sin(x[:, :3]).sum(1) + 0.1 * rng.normal(size=args.n)
    depth = args.depth
    scale = args.d / (2 * (depth + 1))

    ours = NTKKernel(depth=depth, w_std=math.sqrt(2), b_std=None)
    theirs = NeuralTangentKernel(depth=depth, bias=0.0)
    sub = x[:200]
    k0 = NeuralTangentKernel(depth=depth, bias=0.0)(sub)
    err = np.abs(ours(sub) * scale - k0).max() / np.abs(k0).max()
    print(f"machine: {machine()}; n = {args.n}, d = {args.d}, depth = {depth}")
    print(f"same kernel check (bias 0, 200 points): max relative difference {err:.1e}")

    rows = []

    def row(name, ours_fn, theirs_fn):
        t_o, m_o = measure(ours_fn, args.repeats)
        t_t, m_t = measure(theirs_fn, args.repeats)
        rows.append((name, t_o, m_o, t_t, m_t))
        print(
            f"{name:<40} ntkit {t_o:8.3f} s {m_o / 2**20:7.0f} MiB | scikit-ntk {t_t:8.3f} s "
            f"{m_t / 2**20:7.0f} MiB | {t_t / t_o:5.1f}x",
            flush=True,
        )

    row("K(X)", lambda: ours(x), lambda: theirs(x))
    theirs_g = NeuralTangentKernel(depth=depth, bias=0.1)
    general = NTKKernel(depth=depth, w_std=math.sqrt(2), b_std=None, gradient="autograd")
    general._fused = lambda x, names: None  # the forward-mode path every other spec takes
    row(
        "K(X) + gradient, 1 param (general fwd-AD)",
        lambda: general(x, eval_gradient=True),
        lambda: theirs_g(x, eval_gradient=True),
    )
    stored = stored_kernel(*theirs_g(x, eval_gradient=True))
    gp_s = GaussianProcessRegressor(stored, alpha=1e-2, optimizer=None)  # not fitted: the
    gp_s.kernel_, gp_s.X_train_, gp_s.y_train_ = stored, x, y  # state the evaluation reads
    t_shared, _ = measure(
        lambda: gp_s.log_marginal_likelihood(stored.theta, eval_gradient=True), args.repeats
    )
    print(f"scikit-learn's own part of one likelihood evaluation: {t_shared:.3f} s", flush=True)
    for gradient in ("autograd", "finite_difference"):
        ours_g = NTKKernel(depth=depth, w_std=math.sqrt(2), b_std=None, gradient=gradient)
        row(
            f"K(X) + gradient, 1 param ({gradient[:8]})",
            lambda k=ours_g: k(x, eval_gradient=True),
            lambda: theirs_g(x, eval_gradient=True),
        )
        gp_o = GaussianProcessRegressor(ours_g, alpha=1e-2, optimizer=None).fit(x[:10], y[:10])
        gp_t = GaussianProcessRegressor(theirs_g, alpha=1e-2, optimizer=None).fit(x[:10], y[:10])
        gp_o.X_train_, gp_o.y_train_ = x, y
        gp_t.X_train_, gp_t.y_train_ = x, y
        row(
            f"log likelihood + gradient ({gradient[:8]})",
            lambda g=gp_o, k=ours_g: g.log_marginal_likelihood(k.theta, eval_gradient=True),
            lambda g=gp_t: g.log_marginal_likelihood(theirs_g.theta, eval_gradient=True),
        )
        print(
            f"  largest ratio any kernel could reach here: {rows[-1][3] / t_shared:.1f}x "
            f"(scikit-ntk's evaluation / scikit-learn's own part)",
            flush=True,
        )
    row("diag(X)", lambda: ours.diag(x), lambda: theirs.diag(x))
    ours2 = NTKKernel(depth=depth, w_std=1.5, b_std=0.1, gradient="autograd")
    t2, m2 = measure(lambda: ours2(x, eval_gradient=True), args.repeats)
    print(f"ntkit K(X), eval_gradient for w_std and b_std: {t2:.3f} s, {m2 / 2**20:.0f} MiB")


if __name__ == "__main__":
    main()
