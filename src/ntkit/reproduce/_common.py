"""Pieces shared by the reproductions: the MLP family, error measures, slope fits, plots."""

from __future__ import annotations

import numpy as np
import torch

from ntkit import layers as L
from ntkit.report.sections import Figure, figure_png


def mlp_spec(width: int, n_out: int = 10) -> L.Layer:
    """Depth-3 ReLU MLP, NTK parameterization, ``w_std = 1.5``, ``b_std = 0.05``."""
    return L.serial(
        L.Dense(width, 1.5, 0.05),
        L.ReLU(),
        L.Dense(width, 1.5, 0.05),
        L.ReLU(),
        L.Dense(n_out, 1.5, 0.05),
    )


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """``||a - b||_F / ||b||_F``."""
    return float(torch.linalg.norm(a - b) / torch.linalg.norm(b))


def loglog_slope(widths, values) -> float:
    """Least-squares slope of ``log(values)`` against ``log(widths)``."""
    return float(np.polyfit(np.log(widths), np.log(values), 1)[0])


def rms(values) -> float:
    """Root mean square of a sequence of errors (over seeds)."""
    return float(np.sqrt(np.mean(np.square(values))))


def loglog_figure(widths, curves: dict[str, list[float]], ylabel: str, caption: str) -> Figure:
    """Log-log plot of ``curves`` against width with a ``width^-1/2`` guide line."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for label, values in curves.items():
        ax.loglog(widths, values, "o-", label=label)
    ref = np.asarray(widths, dtype=float)
    first = next(iter(curves.values()))[0]
    ax.loglog(ref, first * (ref / ref[0]) ** -0.5, "k:", label="width^-1/2")
    ax.set_xlabel("width")
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)
    return Figure(caption, figure_png(fig))
