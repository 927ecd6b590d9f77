"""Bombari, Amani & Mondelli 2022 at small scale: the smallest NTK eigenvalue against P/N.

Claim reproduced: the smallest eigenvalue of the empirical NTK is
(numerically) zero while the network has fewer parameters P than samples N -- the N x N
kernel ``J J^T`` has rank at most P -- and bounded away from zero once P exceeds N (up to
logarithmic factors), approaching the infinite-width NTK's smallest eigenvalue.
"""

from __future__ import annotations

import numpy as np
import torch

import ntkit as nk
from ntkit import layers as L
from ntkit.report.sections import Figure, Section, figure_png

NAME = "min-eigenvalue"
TITLE = "Smallest NTK eigenvalue against over-parameterization (Bombari, Amani & Mondelli 2022)"
DIM = 6


def _spec(width: int) -> L.Layer:
    return L.serial(L.Dense(width, 1.0, 0.1), L.ReLU(), L.Dense(1, 1.0, 0.1))


def _sphere(n: int, seed: int) -> torch.Tensor:
    """``n`` points uniform on the sphere of radius ``sqrt(DIM)`` (input kernel diagonal 1)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, DIM, generator=g, dtype=torch.float64)
    return x / x.norm(dim=1, keepdim=True) * DIM**0.5


def run(quick: bool = False, seed: int = 0) -> tuple[list[Section], dict[str, float]]:
    """Run the experiment; return report sections and the headline numbers."""
    import matplotlib.pyplot as plt

    n = 100 if quick else 200
    x = _sphere(n, seed)
    params_per_unit = DIM + 2  # weights in, bias, weight out
    ratios = (
        [0.25, 0.5, 0.8, 1.5, 3, 6, 12]
        if quick
        else [0.2, 0.35, 0.5, 0.7, 0.9, 1.2, 1.6, 2.5, 4, 8, 16, 32, 64]
    )
    analytic = _spec(1).kernel(x).ntk
    lam_inf = float(torch.linalg.eigvalsh(analytic)[0])
    rows, p_over_n, lam_min, rel_min = [], [], [], []
    for r in ratios:
        width = max(1, round(r * n / params_per_unit))
        model = _spec(width).module((DIM,), seed=seed + width, dtype=torch.float64)
        p = sum(t.numel() for t in model.parameters())
        evals = torch.linalg.eigvalsh(nk.empirical_ntk(model, x, mode="trace"))
        p_over_n.append(p / n)
        lam_min.append(float(evals[0]))
        rel_min.append(abs(float(evals[0] / evals[-1])))
        rows.append([str(width), str(p), f"{p / n:.2f}", f"{evals[0]:.3e}", f"{rel_min[-1]:.3e}"])

    below = [v for q, v in zip(p_over_n, rel_min) if q < 1]
    above = [v for q, v in zip(p_over_n, lam_min) if q >= 4]
    results = {
        "largest lambda_min / lambda_max with P < N": max(below),
        "smallest lambda_min / lambda_inf with P >= 4N": min(above) / lam_inf,
        "lambda_min / lambda_inf at the largest P": lam_min[-1] / lam_inf,
        "infinite-width lambda_min": lam_inf,
    }
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.loglog(p_over_n, np.maximum(lam_min, 1e-18), "o-", label="empirical NTK lambda_min")
    ax.axhline(lam_inf, color="k", ls=":", label="infinite-width NTK lambda_min")
    ax.axvline(1.0, color="gray", ls="--", label="P = N")
    ax.set_xlabel("parameters / samples (P / N)")
    ax.set_ylabel("smallest eigenvalue")
    ax.legend(fontsize=8)
    section = Section(
        title=TITLE,
        paragraphs=[
            f"One-hidden-layer ReLU network (NTK parameterization, w_std 1, b_std 0.1, one "
            f"output), N = {n} points uniform on the sphere in {DIM} dimensions, float64; "
            "empirical NTK at initialization for widths giving P / N from "
            f"{ratios[0]} to {ratios[-1]}.",
            "Below P = N the kernel J J^T has rank at most P < N, so its smallest eigenvalue "
            "is zero up to rounding (relative to lambda_max: at most "
            f"{results['largest lambda_min / lambda_max with P < N']:.1e}); from P = 4N on it "
            "is at least "
            f"{results['smallest lambda_min / lambda_inf with P >= 4N']:.2f} of the "
            f"infinite-width NTK's lambda_min ({lam_inf:.3e}), and "
            f"{results['lambda_min / lambda_inf at the largest P']:.2f} of it at the largest "
            "width.",
        ],
        table_header=["width", "P", "P / N", "lambda_min", "lambda_min / lambda_max"],
        table_rows=rows,
        figures=[Figure("Smallest NTK eigenvalue against P / N (log-log).", figure_png(fig))],
    )
    return [section], results
