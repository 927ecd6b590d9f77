"""Report sections on inference and training: GP posteriors and predicted training curves.

- :func:`gp_section`: test accuracy and calibration of the NNGP and NTK-GP posteriors and of
  the trained infinite NTK ensemble (Lee et al. 2018, 2019).
- :func:`training_curve_section`: the train/test loss predicted by
  :func:`ntkit.predict.gradient_descent_mse` (analytic NTK, the finite network's own initial
  outputs) against a finite network of the report's architecture (NTK parameterization,
  ``config.width``) trained by full-batch gradient descent on the same data.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ntkit.predict import (
    gp_posterior,
    gradient_descent_mse,
    gradient_descent_mse_ensemble,
    max_learning_rate,
)
from ntkit.report.context import ReportContext
from ntkit.report.sections import Figure, Section, accuracy, figure_png, plt

__all__ = ["gp_section", "training_curve_section"]

#: Observation noise of the GP posteriors, relative to the mean kernel diagonal, unless the
#: report's ``ridge_relative`` is set.
GP_NOISE_RELATIVE = 1e-3
#: Full-batch gradient-descent steps of the finite network, and its learning rate as a
#: fraction of :func:`~ntkit.predict.max_learning_rate` of the analytic NTK.
TRAIN_STEPS = 200
LR_FRACTION = 0.7


def _noise(k: torch.Tensor, relative: float) -> float:
    """Observation-noise variance ``relative * mean(diag k)`` (the posteriors' ``s^2``)."""
    return relative * float(torch.diagonal(k).mean())


def _gaussian_nll(mean, var, y) -> float:
    """Mean negative log-likelihood per target entry of ``y`` under ``N(mean, var)``."""
    var = var[:, None].expand_as(mean)
    return float((0.5 * torch.log(2 * math.pi * var) + (y - mean) ** 2 / (2 * var)).mean())


def gp_section(ctx: ReportContext) -> Section:
    """NNGP and NTK-GP posteriors, and the infinite NTK ensemble trained to convergence."""
    d, cfg = ctx.data, ctx.config
    k_tt, k_st, k_ss = ctx.kernel("train_train"), ctx.kernel("test_train"), ctx.kernel("test_test")
    rel = cfg.ridge_relative or GP_NOISE_RELATIVE
    rows = []
    for name, label in (("nngp", "NNGP posterior"), ("ntk", "NTK-GP posterior")):
        k = getattr(k_tt, name)
        with ctx.timed(f"gp {name}"):
            post = gp_posterior(
                k,
                d.y_train,
                getattr(k_st, name),
                torch.diagonal(getattr(k_ss, name)),
                noise_relative=rel,
            )
        rows.append((label, post.mean, post.cov + _noise(k, rel)))

    def kernel_fn(x1, x2):  # serve the cached kernels to the ensemble predictor
        if x1 is d.x_train and x2 is None:
            return k_tt
        if x1 is d.x_test:
            return k_st if x2 is d.x_train else k_ss
        return ctx.net.kernel(x1, x2)

    with ctx.timed("ntk ensemble t=inf"):
        ens = gradient_descent_mse_ensemble(kernel_fn, d.x_train, d.y_train)(
            math.inf, d.x_test, cov="diag"
        )
    rows.append(("NTK ensemble, t = inf", ens.mean, ens.cov + _noise(k_tt.ntk, rel)))
    table = []
    for label, mean, var in rows:
        acc = accuracy(mean, d.labels_test)
        ctx.results[f"test accuracy {label}"] = acc
        rmse = float(torch.sqrt(((mean - d.y_test) ** 2).mean()))
        table.append(
            [
                label,
                f"{acc:.4f}",
                f"{rmse:.4f}",
                f"{float(torch.sqrt(var).mean()):.4f}",
                f"{_gaussian_nll(mean, var, d.y_test):.4f}",
            ]
        )
    return Section(
        title="Gaussian-process posteriors",
        paragraphs=[
            "Posterior means K(x, X)(K + s^2 I)^-1 Y with the NNGP (Bayesian inference in the "
            "infinitely wide network) and the NTK (NTK-GP), and the mean of the infinite "
            "ensemble of networks trained by gradient flow to convergence (Lee et al. "
            "2019, sec. 2.3: same mean as ridgeless NTK regression, a different covariance). "
            f"Observation noise s^2 = {rel:g} x mean diagonal; predictive standard deviations "
            "include it. NLL: Gaussian negative log-likelihood per one-hot target entry.",
        ],
        table_header=["model", "test accuracy", "RMSE", "mean predictive std", "NLL"],
        table_rows=table,
    )


def _half_mse(f: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``(1/2) mean`` over all entries; works on ``(..., n, m)`` stacks."""
    return 0.5 * ((f - y) ** 2).mean(dim=(-2, -1))


def _train_network(model, x, y, xs, lr, steps):
    """Full-batch GD on ``(1/2) mean`` squared error; outputs at every recorded step."""
    record = set(steps)
    train, test = {}, {}
    params = [p for p in model.parameters() if p.requires_grad]
    for step in range(max(steps) + 1):
        if step in record:
            with torch.no_grad():
                train[step], test[step] = model(x).double(), model(xs).double()
        if step == max(steps):
            break
        loss = 0.5 * ((model(x) - y) ** 2).mean()
        grads = torch.autograd.grad(loss, params)
        with torch.no_grad():
            for p, g in zip(params, grads):
                p.sub_(lr * g)
    return torch.stack([train[s] for s in steps]), torch.stack([test[s] for s in steps])


def training_curve_section(ctx: ReportContext) -> Section:
    """Predicted vs actual train/test loss of a finite network trained by gradient descent."""
    d, cfg = ctx.data, ctx.config
    k_tt, k_st = ctx.kernel("train_train"), ctx.kernel("test_train")
    n_out = d.n_classes
    lr = LR_FRACTION * max_learning_rate(k_tt.ntk, n_outputs=n_out, reduction="mean")
    steps = sorted(
        {0} | {int(s) for s in np.unique(np.round(np.logspace(0, math.log10(TRAIN_STEPS), 30)))}
    )
    dtype = torch.float32
    model = ctx.net.module(
        tuple(d.x_train.shape[1:]), seed=cfg.seed, dtype=dtype, device=ctx.device
    )
    x, xs, y = d.x_train.to(dtype), d.x_test.to(dtype), d.y_train.to(dtype)
    with ctx.timed("train finite network"):
        net_train, net_test = _train_network(model, x, y, xs, lr, steps)
    with ctx.timed("predict training curve"):
        pred = gradient_descent_mse(
            k_tt.ntk, d.y_train, learning_rate=lr, reduction="mean", discrete=True
        )(steps, fx_train_0=net_train[0], fx_test_0=net_test[0], k_test_train=k_st.ntk)
    curves = {
        "network train": _half_mse(net_train, d.y_train),
        "network test": _half_mse(net_test, d.y_test),
        "predicted train": _half_mse(pred.train, d.y_train),
        "predicted test": _half_mse(pred.test, d.y_test),
    }
    fig, ax = plt.subplots(figsize=(6.0, 3.8))
    t = np.asarray(steps, dtype=float)
    for name, color in (("train", "C0"), ("test", "C1")):
        ax.plot(t, curves[f"network {name}"], color=color, lw=2, label=f"finite network, {name}")
        ax.plot(
            t,
            curves[f"predicted {name}"],
            color=color,
            ls="--",
            lw=1.5,
            label=f"NTK prediction, {name}",
        )
    ax.set_xscale("symlog", linthresh=1.0)
    ax.set_yscale("log")
    ax.set_xlabel("gradient-descent step")
    ax.set_ylabel("(1/2) mean squared error")
    ax.set_title(f"Training dynamics, width {cfg.width}")
    ax.legend(fontsize=8)
    if not bool(torch.isfinite(net_train).all() and torch.isfinite(net_test).all()):
        plt.close(fig)
        return Section(
            title="Training dynamics: prediction vs a finite network",
            paragraphs=[
                f"The finite network (width {cfg.width}) diverged at learning rate {lr:.4g} "
                f"({LR_FRACTION} x the critical rate of the analytic NTK): its own kernel's top "
                "eigenvalue is larger at this width. Increase --width."
            ],
        )
    moved = torch.linalg.norm(net_test[-1] - net_test[0])
    gap = float(torch.linalg.norm(net_test[-1] - pred.test[-1]) / moved)
    acc_net = accuracy(net_test[-1], d.labels_test)
    acc_pred = accuracy(pred.test[-1], d.labels_test)
    ctx.results["GD network test accuracy"] = acc_net
    ctx.results["GD predicted test accuracy"] = acc_pred
    ctx.results["GD relative test output gap"] = gap
    rows = [
        [
            "finite network",
            f"{float(curves['network train'][-1]):.4g}",
            f"{float(curves['network test'][-1]):.4g}",
            f"{acc_net:.4f}",
        ],
        [
            "NTK prediction",
            f"{float(curves['predicted train'][-1]):.4g}",
            f"{float(curves['predicted test'][-1]):.4g}",
            f"{acc_pred:.4f}",
        ],
    ]
    return Section(
        title="Training dynamics: prediction vs a finite network",
        paragraphs=[
            f"A finite network of the same architecture (NTK parameterization, width "
            f"{cfg.width}, seed {cfg.seed}, float32) trained by full-batch gradient descent on "
            f"L = (1/2) mean squared error over all training targets, {steps[-1]} steps, "
            f"learning rate {lr:.4g} ({LR_FRACTION} x the critical rate 2 |Y| / lambda_max "
            "of the analytic NTK). The prediction is the closed-form discrete dynamics with "
            "the analytic (infinite-width) NTK started from the network's own initial outputs "
            "(Lee et al. 2019, eqs. 9-11). Their gap shrinks like width^-1/2.",
            f"Relative gap of the final test outputs, ||f_net - f_pred|| / ||f_net - f_0|| = "
            f"{gap:.3f}.",
        ],
        table_header=["after training", "train loss", "test loss", "test accuracy"],
        table_rows=rows,
        figures=[
            Figure(
                "Train and test loss over gradient-descent steps: finite network (solid) and "
                "closed-form NTK prediction from the same initialization (dashed).",
                figure_png(fig),
            )
        ],
    )
