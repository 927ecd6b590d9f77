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
from ntkit.report.sections import Figure, Section, accuracy, figure_png, plt, present

__all__ = ["gp_section", "training_curve_section"]

#: Observation noise of the GP posteriors, relative to the mean kernel diagonal, unless the
#: report's ``ridge_relative`` is set.
GP_NOISE_RELATIVE = 1e-3
#: Learning rate of the finite network as a fraction of
#: :func:`~ntkit.predict.max_learning_rate` of the analytic NTK.
LR_FRACTION = 0.7
#: Training has converged when the predicted test outputs are this close to their limit,
#: relative to their distance at initialization.
CONVERGED = 0.01


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
        rows.append((label, post.mean, present(post.cov, "posterior variance") + _noise(k, rel)))

    def kernel_fn(x1, x2):  # serve the cached kernels to the ensemble predictor
        if x1 is d.x_train and x2 is None:
            return k_tt
        if x1 is d.x_test:
            return k_st if x2 is d.x_train else k_ss
        return ctx.net.kernel(x1, x2, progress=False)

    with ctx.timed("ntk ensemble t=inf"):
        ens = gradient_descent_mse_ensemble(kernel_fn, d.x_train, d.y_train)(
            math.inf, d.x_test, cov="diag"
        )
    var = present(ens.cov, "ensemble variance") + _noise(k_tt.get_ntk(), rel)
    rows.append(("NTK ensemble, t = inf", ens.mean, var))
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


def _step_grid(horizon: float, points: int = 40) -> list[int]:
    """0 and about ``points`` log-spaced integer steps up to ``horizon``."""
    top = max(1.0, math.log10(max(horizon, 1.0)))
    grid = {int(v) for v in np.unique(np.round(np.logspace(0, top, points))) if v <= horizon}
    return sorted({0, int(horizon)} | grid)


def _converged_step(pred, grid: list[int], limit: torch.Tensor) -> int | None:
    """First step of ``grid`` whose predicted test outputs are within 1% of their limit."""
    start = torch.linalg.norm(pred.test[0] - limit)
    for step, out in zip(grid, pred.test):
        if torch.linalg.norm(out - limit) <= CONVERGED * start:
            return step
    return None


def training_curve_section(ctx: ReportContext) -> Section:
    """Predicted vs actual loss and accuracy of a finite network trained by gradient descent.

    The closed-form prediction says when training has converged (test outputs within 1% of
    their limit); the finite network trains up to that step or ``config.max_steps``,
    whichever comes first.
    """
    d, cfg = ctx.data, ctx.config
    k_tt, k_st = ctx.kernel("train_train"), ctx.kernel("test_train")
    n_out = d.n_classes
    lr = LR_FRACTION * max_learning_rate(k_tt.get_ntk(), n_outputs=n_out, reduction="mean")
    dtype = torch.float32
    model = ctx.net.module(ctx.in_shape, seed=cfg.seed, dtype=dtype, device=ctx.device)
    x, xs, y = d.x_train.to(dtype), d.x_test.to(dtype), d.y_train.to(dtype)
    with torch.no_grad():
        f0, ft0 = model(x).double(), model(xs).double()
    with ctx.timed("predict training curve"):
        predictor = gradient_descent_mse(
            k_tt.get_ntk(), d.y_train, learning_rate=lr, reduction="mean", discrete=True
        )
        start = dict(fx_train_0=f0, fx_test_0=ft0, k_test_train=k_st.get_ntk())
        limit = present(predictor(math.inf, **start).test, "test prediction")
        long_grid = _step_grid(1e8, 120)
        t_conv = _converged_step(predictor(long_grid, **start), long_grid, limit)
    stop = min(t_conv, cfg.max_steps) if t_conv is not None else cfg.max_steps
    steps = _step_grid(stop)
    with ctx.timed("train finite network"):
        net_train, net_test = _train_network(model, x, y, xs, lr, steps)
    shown = sorted(set(_step_grid(max(stop, t_conv or stop))) | set(steps))
    pred = predictor(shown, **start)
    pred_test = present(pred.test, "test prediction")
    if not bool(torch.isfinite(net_train).all() and torch.isfinite(net_test).all()):
        return Section(
            title="Training dynamics: prediction vs a finite network",
            paragraphs=[
                f"The finite network (width {cfg.width}) diverged at learning rate {lr:.4g} "
                f"({LR_FRACTION} x the critical rate of the analytic NTK): its own kernel's top "
                "eigenvalue is larger at this width. Increase --width."
            ],
        )
    t_net, t_pred = np.asarray(steps, dtype=float), np.asarray(shown, dtype=float)
    acc_net_curve = [accuracy(o, d.labels_test) for o in net_test]
    acc_pred_curve = [accuracy(o, d.labels_test) for o in pred_test]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11.5, 3.9))
    for name, net_out, pred_out, yy, color in (
        ("train", net_train, pred.train, d.y_train, "C0"),
        ("test", net_test, pred_test, d.y_test, "C1"),
    ):
        ax.plot(t_net, _half_mse(net_out, yy), color=color, lw=2, label=f"finite network, {name}")
        ax.plot(
            t_pred,
            _half_mse(pred_out, yy),
            color=color,
            ls="--",
            lw=1.5,
            label=f"NTK prediction, {name}",
        )
    ax2.plot(t_net, acc_net_curve, color="C1", lw=2, label="finite network")
    ax2.plot(t_pred, acc_pred_curve, color="C1", ls="--", lw=1.5, label="NTK prediction")
    for a in (ax, ax2):
        a.set_xscale("symlog", linthresh=1.0)
        a.set_xlabel("gradient-descent step")
        if t_conv is not None:
            a.axvline(t_conv, color="gray", lw=0.8, ls=":")
        if stop < t_pred[-1]:
            a.axvline(stop, color="k", lw=0.8)
    ax.set_yscale("log")
    ax.set_ylabel("(1/2) mean squared error")
    ax.set_title(f"Loss, width {cfg.width}")
    ax.legend(fontsize=7)
    ax2.set_ylabel("test accuracy")
    ax2.set_title("Test accuracy")
    ax2.legend(fontsize=7)
    moved = torch.linalg.norm(net_test[-1] - net_test[0])
    at_stop = pred_test[shown.index(stop)]
    gap = float(torch.linalg.norm(net_test[-1] - at_stop) / moved)
    acc_net = acc_net_curve[-1]
    acc_pred = accuracy(at_stop, d.labels_test)
    acc_limit = accuracy(limit, d.labels_test)
    mean_limit = predictor(math.inf, k_test_train=k_st.get_ntk()).test
    ensemble_acc = accuracy(present(mean_limit, "test prediction"), d.labels_test)
    ctx.results["GD predicted test accuracy at convergence"] = acc_limit
    ctx.results["GD network test accuracy"] = acc_net
    ctx.results["GD predicted test accuracy"] = acc_pred
    ctx.results["GD relative test output gap"] = gap
    ctx.results["GD steps trained"] = float(stop)
    pred_train_stop = pred.train[shown.index(stop)]
    rows = [
        [
            "finite network",
            f"{float(_half_mse(net_train[-1], d.y_train)):.4g}",
            f"{float(_half_mse(net_test[-1], d.y_test)):.4g}",
            f"{acc_net:.4f}",
        ],
        [
            "NTK prediction",
            f"{float(_half_mse(pred_train_stop, d.y_train)):.4g}",
            f"{float(_half_mse(at_stop, d.y_test)):.4g}",
            f"{acc_pred:.4f}",
        ],
    ]
    if t_conv is None:
        where = (
            f"the prediction has not converged within 1e8 steps; training stops at "
            f"max_steps = {cfg.max_steps}"
        )
    elif stop == t_conv:
        where = (
            f"the prediction converges (test outputs within {CONVERGED:.0%} of their "
            f"limit) at step {t_conv}, where training stops"
        )
    else:
        where = (
            f"the prediction converges at step {t_conv} (dotted line); training stops "
            f"earlier, at max_steps = {cfg.max_steps} (solid line), and the dashed "
            "curves continue the prediction to convergence"
        )
    return Section(
        title="Training dynamics: prediction vs a finite network",
        paragraphs=[
            f"A finite network of the same architecture (width {cfg.width}, seed {cfg.seed}, "
            "float32) trained by full-batch gradient descent on L = (1/2) mean squared error "
            f"over all training targets at learning rate {lr:.4g} ({LR_FRACTION} x the "
            "critical rate 2 |Y| / lambda_max of the analytic NTK). The prediction is the "
            "closed-form discrete dynamics with the analytic (infinite-width) NTK started "
            "from the network's own initial outputs (Lee et al. 2019, eqs. 9-11): "
            f"{where}.",
            f"Relative gap of the test outputs at step {stop}, ||f_net - f_pred|| / "
            f"||f_net - f_0|| = {gap:.3f}.",
        ],
        table_header=[f"after {stop} steps", "train loss", "test loss", "test accuracy"],
        table_rows=rows,
        figures=[
            Figure(
                "Loss (left) and test accuracy (right) over gradient-descent steps: finite "
                "network (solid) and closed-form NTK prediction from the same initialization "
                "(dashed).",
                figure_png(fig),
                reading=(
                    f"The finite network ends at test accuracy {acc_net:.3f}, the prediction at "
                    f"{acc_pred:.3f}; their outputs differ by {gap:.1%} of how far they moved. "
                    "The gap shrinks like width^-1/2: a wider network follows the kernel "
                    "more closely. Both start from the same random outputs, and the "
                    "prediction carries that random function to the end: at convergence it "
                    f"predicts test accuracy {acc_limit:.3f}, against "
                    f"{ensemble_acc:.3f} for the ensemble mean (zero initial outputs, "
                    "'Gaussian-process posteriors')."
                ),
            )
        ],
    )
