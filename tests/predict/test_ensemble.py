"""Infinite-ensemble predictions: formula, limits, and trained finite ensembles."""

import math

import pytest
import torch
from torch.func import functional_call, stack_module_state, vmap

from ntkit import layers as L
from ntkit.predict import gp_posterior, gradient_descent_mse_ensemble, kernel_regression
from tests.predict.helpers import randn


def _net(width=64):
    return L.serial(L.Dense(width, 1.5, 0.1), L.Erf(), L.Dense(1, 1.5, 0.1))


def _f4_reference(net, x, y, xs, eta, t):
    """Ensemble mean and covariance (Lee et al. 2019), with matrix_exp and an explicit inverse."""
    k, kx, kss = net.kernel(x), net.kernel(xs, x), net.kernel(xs)
    theta_inv = torch.linalg.inv(k.ntk)
    e = torch.eye(len(x), dtype=torch.float64) - torch.matrix_exp(-eta * k.ntk * t)
    a = kx.ntk @ theta_inv @ e
    mean = a @ y
    cov = kss.nngp + a @ k.nngp @ a.T - (a @ kx.nngp.T + kx.nngp @ a.T)
    return mean, cov


def test_mean_and_covariance_equal_formula_f4():
    net = _net()
    x, xs, y = randn(7, 3, seed=0), randn(4, 3, seed=1), randn(7, 2, seed=2)
    ens = gradient_descent_mse_ensemble(net, x, y, learning_rate=0.3)
    times = [0.0, 1.0, 5.0]
    out = ens(times, xs)
    for i, t in enumerate(times):
        mean, cov = _f4_reference(net, x, y, xs, 0.3, t)
        torch.testing.assert_close(out.mean[i], mean, atol=1e-8, rtol=1e-8)
        torch.testing.assert_close(out.cov[i], cov, atol=1e-8, rtol=1e-8)
    torch.testing.assert_close(out.cov[0], net.kernel(xs).nngp)  # the prior at t = 0
    diag = ens(times, xs, cov="diag")
    torch.testing.assert_close(diag.cov, torch.diagonal(out.cov, dim1=1, dim2=2))
    torch.testing.assert_close(diag.mean, out.mean)
    on_train = ens(times, cov="diag")  # x_test=None: the training inputs
    assert on_train.cov.shape == (3, 7) and on_train.mean.shape == (3, 7, 2)


def test_infinite_time_limits():
    net = _net()
    x, xs, y = randn(8, 3, seed=3), randn(3, 3, seed=4), randn(8, seed=5)
    k, kx, kss = net.kernel(x), net.kernel(xs, x), net.kernel(xs)
    ntk_inf = gradient_descent_mse_ensemble(net, x, y)(math.inf, xs)
    torch.testing.assert_close(ntk_inf.mean, kernel_regression(k.ntk, y, kx.ntk))
    # readout-only training (Theta = K) converges to the exact NNGP posterior
    nngp_inf = gradient_descent_mse_ensemble(net, x, y, kernel="nngp")(math.inf, xs)
    post = gp_posterior(k.nngp, y, kx.nngp, kss.nngp)
    torch.testing.assert_close(nngp_inf.mean, post.mean, atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(nngp_inf.cov, post.cov, atol=1e-9, rtol=1e-9)
    # on the training inputs the converged ensemble interpolates with no variance
    train = gradient_descent_mse_ensemble(net, x, y)(math.inf)
    torch.testing.assert_close(train.mean, y, atol=1e-8, rtol=0)
    assert float(train.cov.abs().max()) < 1e-8


def test_discrete_ridge_ensemble_equals_brute_force_linear_map():
    """f_t(x) = f0(x) + A_t (Y - f0(X)); iterate A_t and propagate the prior covariance."""
    net = _net()
    x, xs, y = randn(6, 3, seed=6), randn(3, 3, seed=7), randn(6, 1, seed=8)
    k, kx, kss = net.kernel(x), net.kernel(xs, x), net.kernel(xs)
    eta, ridge, steps = 0.05, 0.2, 30
    # train outputs u = f - f0 and test outputs w obey (weight decay toward init):
    # u <- u - eta (Theta (u + f0 - Y) + r u),  w <- w - eta (Theta_xX (u + f0 - Y) + r w);
    # both are linear in (Y - f0(X)): track the matrices B_u, B_w with u = B_u (Y - f0)
    bu = torch.zeros(6, 6, dtype=torch.float64)
    bw = torch.zeros(3, 6, dtype=torch.float64)
    eye = torch.eye(6, dtype=torch.float64)
    for _ in range(steps):
        bu, bw = (
            bu - eta * (k.ntk @ (bu - eye) + ridge * bu),
            bw - eta * (kx.ntk @ (bu - eye) + ridge * bw),
        )
    mean = bw @ y
    cov = kss.nngp - bw @ kx.nngp.T - kx.nngp @ bw.T + bw @ k.nngp @ bw.T
    ens = gradient_descent_mse_ensemble(net, x, y, learning_rate=eta, ridge=ridge, discrete=True)
    out = ens(steps, xs)
    torch.testing.assert_close(out.mean, mean, atol=1e-10, rtol=1e-9)
    torch.testing.assert_close(out.cov, cov, atol=1e-10, rtol=1e-9)


def test_kernel_function_input_and_errors():
    net = _net()
    x, y = randn(5, 3, seed=9), randn(5, seed=10)
    a = gradient_descent_mse_ensemble(net, x, y)(2.0, x[:2], cov="none")
    b = gradient_descent_mse_ensemble(lambda x1, x2: net.kernel(x1, x2), x, y)(2.0, x[:2])
    torch.testing.assert_close(a.mean, b.mean)
    assert a.cov is None and b.cov.shape == (2, 2)
    with pytest.raises(ValueError, match="cov must be one of"):
        gradient_descent_mse_ensemble(net, x, y)(2.0, x[:2], cov=True)
    with pytest.raises(ValueError, match="kernel must be one of"):
        gradient_descent_mse_ensemble(net, x, y, kernel="gp")
    with pytest.raises(ValueError, match="y_train"):
        gradient_descent_mse_ensemble(net, x, y[:4])
    with pytest.raises(TypeError, match="layer description"):
        gradient_descent_mse_ensemble(3, x, y)
    conv_like = L.serial(L.Dense(8), L.ReLU())
    with pytest.raises(ValueError, match="readout"):
        gradient_descent_mse_ensemble(lambda a, b: conv_like.kernel(a, b, get="nngp"), x, y)


def _train_ensemble(net, x, y, xs, *, n_nets, lr, steps, seed=100):
    """Full-batch GD ((1/2) sum loss) of n_nets independent finite networks, vectorized.

    The summed loss over networks has per-network gradients (the networks share nothing).
    """
    models = [net.module((x.shape[1],), seed=seed + s, dtype=torch.float64) for s in range(n_nets)]
    params, _ = stack_module_state(models)
    params = {k: v.detach() for k, v in params.items()}
    base = models[0]
    f = vmap(lambda p, inp: functional_call(base, p, (inp,)), in_dims=(0, None))
    for _ in range(steps):
        live = {k: v.requires_grad_(True) for k, v in params.items()}
        loss = 0.5 * ((f(live, x) - y) ** 2).sum()
        grads = torch.autograd.grad(loss, list(live.values()))
        params = {k: (v - lr * g).detach() for (k, v), g in zip(live.items(), grads)}
    with torch.no_grad():
        return f(params, xs)[..., 0]  # shape: (n_nets, n_test)


@pytest.mark.montecarlo
def test_trained_finite_ensemble_matches_mean_and_covariance_within_mc_error():
    width, n_nets, steps, lr = 512, 300, 40, 0.15
    net = _net(width)
    x, xs = randn(6, 2, seed=11), randn(4, 2, seed=12)
    y = torch.sin(2 * x[:, :1])
    out = _train_ensemble(net, x, y, xs, n_nets=n_nets, lr=lr, steps=steps)
    pred = gradient_descent_mse_ensemble(net, x, y, learning_rate=lr, discrete=True)(steps, xs)
    mean, cov = pred.mean[:, 0], pred.cov
    emp_mean = out.mean(0)
    emp_cov = torch.cov(out.T)
    # mean: z-scores with the predicted standard error sqrt(var / n_nets)
    z = (emp_mean - mean) / torch.sqrt(cov.diagonal() / n_nets)
    assert float(z.abs().max()) < 4.0, z
    # covariance: a sample covariance entry has variance (C_ii C_jj + C_ij^2) / n_nets
    se = torch.sqrt((cov.diagonal()[:, None] * cov.diagonal()[None, :] + cov**2) / n_nets)
    zc = (emp_cov - cov) / se
    assert float(zc.abs().max()) < 4.5, zc
    # the check has power: the untrained prior is far outside these error bars
    prior = net.kernel(xs).nngp
    assert float(((emp_cov - prior) / se).abs().max()) > 50
