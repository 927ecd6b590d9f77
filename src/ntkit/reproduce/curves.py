"""Wang, Buchanan, Gilboa & Wright 2021 at small scale: deep ReLU NTKs localize.

Claims reproduced: the NTK of a deep ReLU network, as a function of the
angle between two points on the sphere, concentrates around 0 with a half-width that shrinks
roughly like 1/depth (depth is a resource for fitting), and NTK regression separates two
close curves on the sphere that the shallowest network cannot.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ntkit import layers as L
from ntkit.predict import kernel_regression
from ntkit.report.sections import Figure, Section, figure_png
from ntkit.reproduce._common import loglog_slope

NAME = "curves"
TITLE = "Deep ReLU NTKs localize; separating two curves (Wang, Buchanan, Gilboa & Wright 2021)"
SEPARATION = 0.1  # half the latitude gap between the curves (radians)
WIGGLE = 0.3  # amplitude of the curves' latitude oscillation


def _spec(depth: int) -> L.Layer:
    """``depth`` hidden ReLU layers, NTK parameterization, ``w_std = sqrt(2)``, no bias."""
    layers = []
    for _ in range(depth):
        layers += [L.Dense(1, 2**0.5), L.ReLU()]
    return L.serial(*layers, L.Dense(1, 1.0))


def _half_width(depth: int, angles: torch.Tensor) -> tuple[float, torch.Tensor]:
    """Angle where ``(Theta(a) - Theta(pi)) / (Theta(0) - Theta(pi))`` first drops below 1/2."""
    x1 = torch.tensor([[2**0.5, 0.0]], dtype=torch.float64)
    x2 = torch.stack([torch.cos(angles), torch.sin(angles)], 1) * 2**0.5
    ntk = _spec(depth).kernel(x1, x2).ntk[0]
    profile = (ntk - ntk[-1]) / (ntk[0] - ntk[-1])
    return float(angles[int((profile < 0.5).nonzero()[0])]), profile


def _curve(t: torch.Tensor, side: int) -> torch.Tensor:
    """Points of curve ``side`` (+1 / -1) on the sphere of radius sqrt(3) in 3-D."""
    lat = side * SEPARATION + WIGGLE * torch.sin(3 * t)
    pts = torch.stack(
        [torch.cos(t) * torch.cos(lat), torch.sin(t) * torch.cos(lat), torch.sin(lat)]
    )
    return pts.T * 3**0.5


def _curve_data(n_per_curve: int):
    t = torch.linspace(0, 2 * math.pi, n_per_curve + 1, dtype=torch.float64)[:-1]
    shift, mid = 0.5 * math.pi / n_per_curve, math.pi / n_per_curve
    x = torch.cat([_curve(t, 1), _curve(t + shift, -1)])
    xt = torch.cat([_curve(t + mid, 1), _curve(t + mid + shift, -1)])
    y = torch.cat([torch.ones(n_per_curve), -torch.ones(n_per_curve)]).double()
    return x, y[:, None], xt, y


def run(quick: bool = False, seed: int = 0) -> tuple[list[Section], dict[str, float]]:
    """Run the experiment (deterministic: no random draws); return sections and numbers."""
    import matplotlib.pyplot as plt

    del seed  # analytic kernels on fixed curves
    depths = [1, 2, 4, 8, 16, 32] if quick else [1, 2, 4, 8, 16, 32, 64, 128]
    angles = torch.linspace(0, math.pi, 20001, dtype=torch.float64)
    widths, profiles = [], []
    for depth in depths:
        hw, prof = _half_width(depth, angles)
        widths.append(hw)
        profiles.append(prof)
    deep = [i for i, d in enumerate(depths) if d >= 8]
    slope = loglog_slope([depths[i] for i in deep], [widths[i] for i in deep])

    x, y, xt, yt = _curve_data(40)
    accuracy = []
    for depth in depths:
        net = _spec(depth)
        pred = kernel_regression(net.kernel(x).ntk, y, net.kernel(xt, x).ntk, ridge_relative=1e-8)[
            :, 0
        ]
        accuracy.append(float((torch.sign(pred) == yt).double().mean()))

    results = {
        "slope of half-width vs depth (depth >= 8)": slope,
        f"half-width at depth {depths[-1]} (rad)": widths[-1],
        "curve test accuracy, depth 1": accuracy[0],
        "curve test accuracy, depth 4": accuracy[depths.index(4)],
        "deepest depth with accuracy 1": float(max(d for d, a in zip(depths, accuracy) if a == 1.0))
        if 1.0 in accuracy
        else 0.0,
    }
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for depth, prof in zip(depths, profiles):
        axes[0].plot(angles.numpy(), prof.numpy(), label=f"depth {depth}")
    axes[0].set_xlabel("angle (rad)")
    axes[0].set_ylabel("(Theta(a) - Theta(pi)) / (Theta(0) - Theta(pi))")
    axes[0].legend(fontsize=7)
    axes[1].loglog(depths, widths, "o-", label="half-width")
    ref = np.asarray(depths, dtype=float)
    axes[1].loglog(ref, widths[-1] * depths[-1] / ref, "k:", label="1 / depth")
    axes[1].set_xlabel("depth")
    axes[1].legend(fontsize=8)
    section = Section(
        title=TITLE,
        paragraphs=[
            "Analytic NTK of ReLU networks with `depth` hidden layers (NTK parameterization, "
            "w_std sqrt(2), no bias) between points on the circle, as a function of their "
            "angle, normalized to 1 at angle 0 and 0 at angle pi; the half-width is where "
            f"it falls to 1/2. Fitted slope over depth >= 8: {slope:.2f} (1/depth: -1).",
            "Two curves on the sphere in 3-D, latitude +-"
            f"{SEPARATION} + {WIGGLE} sin(3 t) (closest approach {2 * SEPARATION} rad), 40 "
            "training points per curve (labels +1 / -1), 80 test points between them; "
            "ridgeless NTK regression (ridge 1e-8 x mean diagonal), sign of the prediction. "
            "A one-hidden-layer ReLU NTK without bias is not universal on the sphere (no odd "
            "harmonics above degree 1), and fails here.",
        ],
        table_header=["depth", "half-width (rad)", "curve test accuracy"],
        table_rows=[[str(d), f"{w:.4f}", f"{a:.3f}"] for d, w, a in zip(depths, widths, accuracy)],
        figures=[Figure("NTK angular profiles and their half-width.", figure_png(fig))],
    )
    return [section], results
