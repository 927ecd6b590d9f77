"""Noci et al. 2024 at small scale: sharpness trajectories under muP and NTK parameterization.

Claim reproduced: under muP the sharpness (top eigenvalue of the loss
Hessian) follows the same trajectory at every width and settles near the edge of stability
``2 / lr`` ("super consistency"); under NTK parameterization it changes with width (wide
networks train lazily and do not sharpen).

Set-up: a two-layer tanh network ``64 -> width -> 10`` on 256 bundled digits, MSE loss
``(1/2) mean_i ||f(x_i) - y_i||^2``, full-batch gradient descent with one learning rate for
every parameter. muP (base width 64) has its per-layer SGD learning-rate scales folded into
multipliers (``fold_lr="sgd"``), so the plain Hessian is the one gradient descent sees and
``lr * sharpness = 2`` is the stability threshold in both parameterizations. The learning
rates put ``lr * sharpness`` at about 1.3-1.8 at initialisation in both.
"""

from __future__ import annotations

import numpy as np
import torch

from ntkit.analysis import sharpness
from ntkit.datasets import load_digits
from ntkit.parametrization import parametrize
from ntkit.report.sections import Figure, Section, figure_png

NAME = "super-consistency"
TITLE = "Super consistency of the sharpness under muP (Noci et al. 2024)"
BASE_WIDTH = 64
LEARNING_RATES = {"mup": 0.26, "ntk": 17.0}


def _loss(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return 0.5 * ((out - target) ** 2).sum(1).mean()


def _trajectory(kind, width, x, y, steps, every, seed):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(
        torch.nn.Linear(x.shape[1], width), torch.nn.Tanh(), torch.nn.Linear(width, y.shape[1])
    )
    fold = "sgd" if kind == "mup" else None
    base = BASE_WIDTH if kind == "mup" else None
    parametrize(model, kind, base_width=base, w_std=1.0, b_std=0.0, seed=seed, fold_lr=fold)
    lr = LEARNING_RATES[kind]
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    record, loss = [], float("nan")
    for step in range(steps + 1):
        if step % every == 0:
            top = sharpness(model, _loss, x, y, tol=1e-3, max_iter=80, seed=step)
            record.append(lr * float(top[0]))
        if step == steps:
            break
        opt.zero_grad()
        out = _loss(model(x), y)
        out.backward()
        opt.step()
        loss = float(out.detach())
    return record, loss


def run(quick: bool = False, seed: int = 0) -> tuple[list[Section], dict[str, float]]:
    """Run the experiment; return report sections and the headline numbers."""
    import matplotlib.pyplot as plt

    data = load_digits(256, 10, seed=seed)
    x, y = data.x_train.float(), (data.y_train - 0.1).float()
    widths = [128, 512, 2048] if quick else [64, 128, 256, 512, 1024, 2048, 4096]
    steps, every = (400, 50) if quick else (600, 30)
    steps_axis = np.arange(0, steps + 1, every)
    late = steps_axis >= 0.6 * steps  # the settled phase: the last 40% of training
    curves, rows, late_mean, losses = {}, [], {}, {}
    for kind in ("mup", "ntk"):
        for w in widths:
            traj, loss = _trajectory(kind, w, x, y, steps, every, seed)
            curves[kind, w] = traj
            late_mean[kind, w] = float(np.mean(np.asarray(traj)[late]))
            losses[kind, w] = loss
            rows.append(
                [kind, str(w), f"{traj[0]:.2f}", f"{late_mean[kind, w]:.2f}", f"{loss:.4f}"]
            )
    mup_late = [late_mean["mup", w] for w in widths]
    ntk_late = [late_mean["ntk", w] for w in widths]
    results = {
        "muP: late lr*sharpness, mean over widths": float(np.mean(mup_late)),
        "muP: smallest late lr*sharpness over widths": min(mup_late),
        "muP: largest late lr*sharpness over widths": max(mup_late),
        "muP: late lr*sharpness, spread over widths (max - min)": max(mup_late) - min(mup_late),
        "NTK: late lr*sharpness, spread over widths (max - min)": max(ntk_late) - min(ntk_late),
        "NTK: late lr*sharpness at the smallest width": ntk_late[0],
        "NTK: late lr*sharpness at the largest width": ntk_late[-1],
        "NTK: sharpening at the largest width (late / initial)": (
            ntk_late[-1] / curves["ntk", widths[-1]][0]
        ),
        "muP: sharpening at the largest width (late / initial)": (
            mup_late[-1] / curves["mup", widths[-1]][0]
        ),
        "NTK: late lr*sharpness falls as the width grows (1 yes, 0 no)": float(
            all(a > b for a, b in zip(ntk_late, ntk_late[1:]))
        ),
    }
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    cmap = plt.get_cmap("viridis")
    for ax, kind in zip(axes, ("mup", "ntk"), strict=True):
        for i, w in enumerate(widths):
            color = cmap(i / max(len(widths) - 1, 1))
            ax.plot(steps_axis, curves[kind, w], "o-", ms=3, color=color, label=f"width {w}")
        ax.axhline(2.0, color="k", ls=":", label="edge of stability (2)")
        name = "muP" if kind == "mup" else "NTK parameterization"
        ax.set_title(f"{name}, lr = {LEARNING_RATES[kind]}")
        ax.set_xlabel("gradient-descent step")
        ax.legend(fontsize=7)
    axes[0].set_ylabel("lr x sharpness")
    section = Section(
        title=TITLE,
        paragraphs=[
            f"Two-layer tanh network 64 -> width -> 10 on {x.shape[0]} digits, MSE, full-batch "
            f"gradient descent for {steps} steps; sharpness (top Hessian eigenvalue, Lanczos "
            f"on Hessian-vector products) every {every} steps. muP with base width "
            f"{BASE_WIDTH} and its SGD learning-rate scales folded into multipliers; NTK "
            "parameterization with one learning rate. Late = mean over the last 40% of steps.",
            f"muP: late lr*sharpness {results['muP: late lr*sharpness, mean over widths']:.2f} "
            "on average (edge of stability: 2), spread over widths "
            f"{results['muP: late lr*sharpness, spread over widths (max - min)']:.2f}. "
            "NTK parameterization: spread "
            f"{results['NTK: late lr*sharpness, spread over widths (max - min)']:.2f}, from "
            f"{ntk_late[0]:.2f} at width {widths[0]} to {ntk_late[-1]:.2f} at width "
            f"{widths[-1]}, where the sharpness barely moves from its initial value "
            f"(late / initial {ntk_late[-1] / curves['ntk', widths[-1]][0]:.2f}): wide "
            "NTK-parameterized networks train lazily.",
        ],
        table_header=["parameterization", "width", "initial lr*sharpness", "late", "final loss"],
        table_rows=rows,
        figures=[
            Figure("lr x sharpness during training, per width.", figure_png(fig)),
        ],
    )
    return [section], results
