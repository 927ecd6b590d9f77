"""Function-space ODE for general losses: against closed forms and a fixed-step RK4."""

import math

import numpy as np
import pytest
import scipy.linalg
import torch

from ntkit.predict import gradient_descent, gradient_descent_mse
from tests.predict.helpers import kernel_problem, randn


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_mse_ode_equals_closed_form(reduction):
    k, kt, _, y = kernel_problem(n=7, n_test=3, m=2, seed=0)
    f0, ft0 = randn(7, 2, seed=1), randn(3, 2, seed=2)
    times = [0.0, 0.7, 3.0, 12.0]
    lr = 0.2 if reduction == "sum" else 0.2 * y.numel()
    a = gradient_descent_mse(k, y, learning_rate=lr, reduction=reduction)(
        times, fx_train_0=f0, fx_test_0=ft0, k_test_train=kt
    )
    b = gradient_descent(
        "mse", k, y, learning_rate=lr, reduction=reduction, rtol=1e-11, atol=1e-12
    )(times, fx_train_0=f0, fx_test_0=ft0, k_test_train=kt)
    torch.testing.assert_close(b.train, a.train, atol=1e-8, rtol=1e-8)
    torch.testing.assert_close(b.test, a.test, atol=1e-8, rtol=1e-8)


def _softmax(z):
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def _rk4_cross_entropy(k, kt, y, f0, ft0, eta, t_end, steps):
    """Fixed-step RK4 of df/dt = -eta K (softmax(f) - y), written from scratch."""
    h = t_end / steps

    def rhs(f):
        return -eta * k @ (_softmax(f) - y)

    f, ft = f0.copy(), ft0.copy()
    for _ in range(steps):
        k1 = rhs(f)
        k2 = rhs(f + h / 2 * k1)
        k3 = rhs(f + h / 2 * k2)
        k4 = rhs(f + h * k3)
        grads = [_softmax(g) - y for g in (f, f + h / 2 * k1, f + h / 2 * k2, f + h * k3)]
        ft = ft - eta * h / 6 * kt @ (grads[0] + 2 * grads[1] + 2 * grads[2] + grads[3])
        f = f + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    return f, ft


def test_cross_entropy_ode_matches_fixed_step_rk4():
    k, kt, _, _ = kernel_problem(n=8, n_test=3, m=3, seed=3)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    y = torch.nn.functional.one_hot(labels, 3).double()
    f0, ft0 = 0.3 * randn(8, 3, seed=4), 0.3 * randn(3, 3, seed=5)
    pred = gradient_descent("cross_entropy", k, y, learning_rate=0.5, rtol=1e-10, atol=1e-12)
    out = pred(4.0, fx_train_0=f0, fx_test_0=ft0, k_test_train=kt)
    ref_f, ref_ft = _rk4_cross_entropy(
        k.numpy(), kt.numpy(), y.numpy(), f0.numpy(), ft0.numpy(), 0.5, 4.0, 2000
    )
    np.testing.assert_allclose(out.train.numpy(), ref_f, atol=1e-8)
    np.testing.assert_allclose(out.test.numpy(), ref_ft, atol=1e-8)
    # the training loss went down
    ce = lambda f: -(y * torch.log_softmax(f, 1)).sum()  # noqa: E731
    assert ce(out.train) < ce(f0)


def test_cross_entropy_mean_reduction_is_sum_with_rescaled_time():
    k, _, _, _ = kernel_problem(n=6, m=2, seed=6)
    y = torch.nn.functional.one_hot(torch.tensor([0, 1, 1, 0, 1, 0]), 2).double()
    a = gradient_descent("cross_entropy", k, y, reduction="mean", learning_rate=0.6)(3.0)
    b = gradient_descent("cross_entropy", k, y, reduction="sum", learning_rate=0.1)(3.0)
    torch.testing.assert_close(a.train, b.train, atol=1e-7, rtol=1e-7)


def test_callable_loss_equals_closed_form_at_unsorted_times():
    k, kt, _, y = kernel_problem(n=6, n_test=2, m=2, seed=7)

    def half_sse(f, t):
        return 0.5 * ((f - t) ** 2).sum()

    times = [2.0, 0.0, 1.0, 2.0]  # unsorted, repeated and zero times
    a = gradient_descent(half_sse, k, y, learning_rate=0.3)(times, k_test_train=kt)
    b = gradient_descent_mse(k, y, learning_rate=0.3)(times, k_test_train=kt)
    torch.testing.assert_close(a.train, b.train, atol=1e-7, rtol=0)
    torch.testing.assert_close(a.test, b.test, atol=1e-7, rtol=0)


def test_momentum_mse_matches_exact_second_order_solution():
    """f'' + (1 - beta) f' = -eta K (f - y), f'(0) = 0, solved by one matrix exponential.

    State (r, v, w, u) with r = f - y on the training inputs, w the test outputs and v, u
    their velocities: r' = v, v' = -eta K r - (1 - beta) v, w' = u, u' = -eta K_tX r - (1 - beta) u.
    """
    k, kt, _, y = kernel_problem(n=5, n_test=2, m=1, seed=8)
    beta, eta, t = 0.8, 0.4, 6.0
    n, nt, c = 5, 2, 1 - 0.8
    a = np.zeros((2 * n + 2 * nt, 2 * n + 2 * nt))
    a[:n, n : 2 * n] = np.eye(n)
    a[n : 2 * n, :n] = -eta * k.numpy()
    a[n : 2 * n, n : 2 * n] = -c * np.eye(n)
    w, u = 2 * n, 2 * n + nt
    a[w:u, u:] = np.eye(nt)
    a[u:, :n] = -eta * kt.numpy()
    a[u:, u:] = -c * np.eye(nt)
    f0 = randn(5, 1, seed=9)
    ft0 = randn(2, 1, seed=10)
    s0 = np.concatenate([(f0 - y).numpy(), np.zeros((n, 1)), ft0.numpy(), np.zeros((nt, 1))])
    state = scipy.linalg.expm(a * t) @ s0
    out = gradient_descent("mse", k, y, learning_rate=eta, momentum=beta, rtol=1e-11, atol=1e-12)(
        t, fx_train_0=f0, fx_test_0=ft0, k_test_train=kt
    )
    np.testing.assert_allclose(out.train.numpy(), state[:n] + y.numpy(), atol=1e-8)
    np.testing.assert_allclose(out.test.numpy(), state[w:u], atol=1e-8)


def test_momentum_ode_tracks_discrete_heavy_ball_for_small_steps():
    """Discrete heavy ball approaches the ODE as eta -> 0 with 1 - beta ~ sqrt(eta)."""
    k, _, _, y = kernel_problem(n=5, m=1, seed=10)
    tau = 2.0  # time in units of sqrt(eta) * steps
    errors = []
    for eta in [0.04, 0.01, 0.0025]:
        beta = 1 - 0.5 * math.sqrt(eta)
        steps = round(tau / math.sqrt(eta))
        f, v = torch.zeros_like(y), torch.zeros_like(y)
        for _ in range(steps):
            v = beta * v - eta * k @ (f - y)
            f = f + v
        ode = gradient_descent("mse", k, y, learning_rate=eta, momentum=beta)(float(steps))
        errors.append(float(torch.linalg.norm(ode.train - f) / torch.linalg.norm(f)))
    assert errors[0] > errors[1] > errors[2]
    assert errors[-1] < 0.05


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        ({"loss": "hinge"}, ValueError, "loss must be one of"),
        ({"loss": 3}, TypeError, "loss must be"),
        ({"loss": lambda f, y: f.sum(), "reduction": "mean"}, ValueError, "callable"),
        ({"momentum": 1.0}, ValueError, "momentum"),
        (
            {"loss": "cross_entropy", "y_train": torch.ones(6, dtype=torch.float64)},
            ValueError,
            "m >= 2",
        ),
        ({"y_train": torch.ones(4, 2, dtype=torch.float64)}, ValueError, "y_train"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs, exc, match):
    k, _, _, y = kernel_problem(n=6, m=2, seed=11)
    args = {"loss": "mse", "k_train_train": k, "y_train": y} | kwargs
    with pytest.raises(exc, match=match):
        gradient_descent(**args)


def test_infinite_time_is_rejected():
    k, _, _, y = kernel_problem(n=6, m=2, seed=12)
    with pytest.raises(ValueError, match="finite"):
        gradient_descent("mse", k, y)(math.inf)
