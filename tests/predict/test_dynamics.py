"""Closed-form MSE dynamics against ODE integration, feature-space GD and limits."""

import math

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp

from ntkit.predict import gradient_descent_mse, kernel_regression, max_learning_rate
from tests.predict.helpers import kernel_problem, randn


def _ode_reference(k, kt, y, f0, ft0, eta, times):
    """Integrate df/dt = -eta K (f - y), df_test/dt = -eta K_tX (f - y) with tight tolerances."""
    n, m = y.shape
    kn, ktn, yn = k.numpy(), kt.numpy(), y.numpy()

    def rhs(_t, s):
        f = s[: n * m].reshape(n, m)
        g = -eta * (kn @ (f - yn))
        gt = -eta * (ktn @ (f - yn))
        return np.concatenate([g.ravel(), gt.ravel()])

    s0 = np.concatenate([f0.numpy().ravel(), ft0.numpy().ravel()])
    sol = solve_ivp(rhs, (0, max(times)), s0, t_eval=times, rtol=1e-12, atol=1e-13, method="DOP853")
    tr = sol.y[: n * m].T.reshape(len(times), n, m)
    te = sol.y[n * m :].T.reshape(len(times), -1, m)
    return torch.from_numpy(tr), torch.from_numpy(te)


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_gradient_flow_equals_numerical_ode_integration(reduction):
    k, kt, _, y = kernel_problem(n=9, n_test=4, m=3, seed=1)
    f0, ft0 = randn(9, 3, seed=5), randn(4, 3, seed=6)
    lr = 0.3 if reduction == "sum" else 0.3 * y.numel()
    times = [0.0, 0.5, 2.0, 7.0, 30.0]
    pred = gradient_descent_mse(k, y, learning_rate=lr, reduction=reduction)
    out = pred(torch.tensor(times), fx_train_0=f0, fx_test_0=ft0, k_test_train=kt)
    # under "mean" the flow is the "sum" flow with eta / |Y|: the same reference applies
    ref_tr, ref_te = _ode_reference(k, kt, y, f0, ft0, 0.3, times)
    torch.testing.assert_close(out.train, ref_tr, atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(out.test, ref_te, atol=1e-9, rtol=1e-9)


def _feature_problem(n=10, p=4, n_test=5, m=2, seed=0):
    """Features with p < n (rank-deficient kernel) and a duplicated training input."""
    phi = randn(n, p, seed=seed)
    phi[3] = phi[7]  # duplicated input
    phi_t = randn(n_test, p, seed=seed + 1)
    y = randn(n, m, seed=seed + 2)
    return phi, phi_t, y


@pytest.mark.parametrize("ridge", [0.0, 0.3])
@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_discrete_gd_equals_feature_space_gd_even_when_singular(ridge, reduction):
    """A linear model f = f0 + Phi theta trained by GD is exactly what the closed form describes."""
    phi, phi_t, y = _feature_problem()
    k, kt = phi @ phi.T, phi_t @ phi.T
    f0, ft0 = randn(10, 2, seed=11), randn(5, 2, seed=12)
    scale = 1.0 if reduction == "sum" else 1.0 / y.numel()
    lr = 0.05 if reduction == "sum" else 0.05 * y.numel()
    pred = gradient_descent_mse(
        k, y, learning_rate=lr, ridge=ridge, reduction=reduction, discrete=True
    )
    steps = [0, 1, 7, 40, 200]
    out = pred(steps, fx_train_0=f0, fx_test_0=ft0, k_test_train=kt)
    theta = torch.zeros(phi.shape[1], 2, dtype=torch.float64)
    done = 0
    for i, s in enumerate(steps):
        for _ in range(s - done):
            f = f0 + phi @ theta
            theta = theta - lr * scale * (phi.T @ (f - y) + ridge * theta)
        done = s
        torch.testing.assert_close(out.train[i], f0 + phi @ theta, atol=1e-11, rtol=1e-10)
        torch.testing.assert_close(out.test[i], ft0 + phi_t @ theta, atol=1e-11, rtol=1e-10)


def test_discrete_converges_to_gradient_flow_as_learning_rate_shrinks():
    k, kt, _, y = kernel_problem(n=8, n_test=3, m=2, seed=2)
    tau = 5.0  # integrated learning rate eta * steps
    flow = gradient_descent_mse(k, y, learning_rate=1.0)(tau, k_test_train=kt)
    errors = []
    for lr in [0.1, 0.05, 0.025, 0.0125]:
        disc = gradient_descent_mse(k, y, learning_rate=lr, discrete=True)
        out = disc(round(tau / lr), k_test_train=kt)
        errors.append(
            float(
                torch.linalg.norm(out.train - flow.train) + torch.linalg.norm(out.test - flow.test)
            )
        )
    ratios = [a / b for a, b in zip(errors, errors[1:])]
    # Euler's global error is first order in the step: halving eta halves the error
    assert all(1.7 < r < 2.3 for r in ratios), (errors, ratios)
    assert errors[-1] < 0.05 * float(torch.linalg.norm(flow.train))


@pytest.mark.parametrize("ridge", [0.0, 0.1])
@pytest.mark.parametrize("discrete", [False, True])
def test_infinite_time_is_kernel_ridge_regression(ridge, discrete):
    k, kt, _, y = kernel_problem(n=8, n_test=4, m=2, seed=3)
    pred = gradient_descent_mse(k, y, learning_rate=0.1, ridge=ridge, discrete=discrete)
    out = pred(math.inf, k_test_train=kt)
    eye = torch.eye(8, dtype=torch.float64)
    alpha = torch.linalg.solve(k + ridge * eye, y)
    torch.testing.assert_close(out.test, kt @ alpha, atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(out.train, k @ alpha, atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(out.test, kernel_regression(k, y, kt, ridge=ridge))


def test_vector_of_times_equals_separate_calls_in_any_order():
    k, kt, _, y = kernel_problem(seed=4)
    pred = gradient_descent_mse(k, y[:, 0], learning_rate=0.2)
    times = [3.0, 0.0, math.inf, 1.5]
    out = pred(times, fx_train_0=0.5, k_test_train=kt)
    assert out.train.shape == (4, 8) and out.test.shape == (4, 5)
    for i, t in enumerate(times):
        single = pred(t, fx_train_0=0.5, k_test_train=kt)
        assert single.train.shape == (8,)
        torch.testing.assert_close(out.train[i], single.train, atol=1e-13, rtol=0)
        torch.testing.assert_close(out.test[i], single.test, atol=1e-13, rtol=0)
    torch.testing.assert_close(out.train[1], torch.full((8,), 0.5, dtype=torch.float64))


def test_full_output_kernel_layout_equals_shared_kernel():
    k, kt, _, y = kernel_problem(n=6, n_test=3, m=2, seed=5)
    eye = torch.eye(2, dtype=torch.float64)
    k4, kt4 = torch.einsum("ij,ab->ijab", k, eye), torch.einsum("ij,ab->ijab", kt, eye)
    f0 = randn(6, 2, seed=9)
    a = gradient_descent_mse(k, y, learning_rate=0.2)([1.0, 4.0], fx_train_0=f0, k_test_train=kt)
    b = gradient_descent_mse(k4, y, learning_rate=0.2)([1.0, 4.0], fx_train_0=f0, k_test_train=kt4)
    torch.testing.assert_close(a.train, b.train, atol=1e-12, rtol=0)
    torch.testing.assert_close(a.test, b.test, atol=1e-12, rtol=0)


def test_duplicated_inputs_with_conflicting_targets_converge_to_their_average():
    x = randn(5, 3, seed=6)
    x = torch.cat([x, x[:1]])  # input 5 duplicates input 0
    k = torch.exp(-(torch.cdist(x, x) ** 2))
    y = torch.tensor([1.0, 0.0, 2.0, -1.0, 0.5, 3.0], dtype=torch.float64)
    out = gradient_descent_mse(k, y, learning_rate=0.3)(math.inf)
    assert torch.isfinite(out.train).all()
    torch.testing.assert_close(out.train[[0, 5]], torch.full((2,), 2.0, dtype=torch.float64))
    torch.testing.assert_close(out.train[1:5], y[1:5], atol=1e-8, rtol=0)


def test_divergent_learning_rate_warns_then_raises_instead_of_returning_nan():
    k, _, _, y = kernel_problem(seed=7)
    lr = 1.5 * max_learning_rate(k)
    with pytest.warns(UserWarning, match="diverges"):
        pred = gradient_descent_mse(k, y, learning_rate=lr, discrete=True)
    assert torch.isfinite(pred(3).train).all()  # early steps are finite, just growing
    with pytest.raises(ValueError, match="diverged"):
        pred(math.inf)
    with pytest.raises(ValueError, match="diverged"):
        pred(100000)


def _spectral_radius_after(k, lr, momentum, steps=400):
    """Brute-force heavy-ball iteration on the residual; returns its growth factor."""
    n = k.shape[0]
    r_prev = r = torch.ones(n, 1, dtype=torch.float64)
    for _ in range(steps):
        r_next = r + momentum * (r - r_prev) - lr * k @ r
        r_prev, r = r, r_next
    return float(torch.linalg.norm(r))


@pytest.mark.parametrize("momentum", [0.0, 0.5])
def test_max_learning_rate_is_the_stability_edge(momentum):
    k, _, _, _ = kernel_problem(n=7, seed=8)
    lr = max_learning_rate(k, momentum=momentum)
    assert _spectral_radius_after(k, 0.98 * lr, momentum) < 1e3
    assert _spectral_radius_after(k, 1.02 * lr, momentum) > 1e3
    lr_mean = max_learning_rate(k, n_outputs=3, reduction="mean", momentum=momentum)
    assert lr_mean == pytest.approx(lr * 7 * 3)


def test_max_learning_rate_lanczos_path_matches_dense():
    x = randn(2100, 3, seed=9)
    k = torch.exp(-(torch.cdist(x, x) ** 2) / 2)
    dense = 2 / float(torch.linalg.eigvalsh(k)[-1])
    assert max_learning_rate(k) == pytest.approx(dense, rel=1e-8)


def _bad_calls():
    k, kt, _, y = kernel_problem(n=6, n_test=3, m=2, seed=10)
    return k, kt, y


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"k_train_train": torch.ones(6, 5, dtype=torch.float64)}, "square"),
        ({"y_train": torch.ones(5, 2, dtype=torch.float64)}, "y_train"),
        ({"learning_rate": -1.0}, "learning_rate"),
        ({"ridge": -0.1}, "ridge"),
        ({"ridge": 0.1, "ridge_relative": 0.1}, "not both"),
        ({"reduction": "avg"}, "reduction"),
        ({"k_train_train": torch.full((6, 6), math.nan, dtype=torch.float64)}, "NaN"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs, match):
    k, _, y = _bad_calls()
    args = {"k_train_train": k, "y_train": y, "learning_rate": 0.1} | kwargs
    with pytest.raises(ValueError, match=match):
        gradient_descent_mse(**args)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda p, kt: p(1.0, k_test_train=kt[:, :5]), r"k_test_train must be \(n_test, 6\)"),
        (lambda p, kt: p(1.0, fx_train_0=torch.zeros(6, 3)), "fx_train_0"),
        (lambda p, kt: p(1.0, fx_test_0=torch.zeros(2, 2), k_test_train=kt), "fx_test_0"),
        (lambda p, kt: p(1.0, fx_test_0=1.0), "without k_test_train"),
        (lambda p, kt: p(-1.0), ">= 0"),
        (lambda p, kt: p([[1.0]]), "1-D"),
    ],
)
def test_bad_calls_raise_clear_errors(call, match):
    k, kt, y = _bad_calls()
    with pytest.raises(ValueError, match=match):
        call(gradient_descent_mse(k, y, learning_rate=0.1), kt)


def test_discrete_needs_integer_steps():
    k, _, y = _bad_calls()
    with pytest.raises(ValueError, match="integer step"):
        gradient_descent_mse(k, y, learning_rate=0.1, discrete=True)(2.5)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_predictors_run_on_gpu_and_match_cpu():
    from ntkit.predict import gp_posterior, gradient_descent

    k, kt, kss, y = kernel_problem(seed=20)
    times = [0.0, 2.0, math.inf]
    cpu = gradient_descent_mse(k, y, learning_rate=0.1)(times, k_test_train=kt)
    gpu = gradient_descent_mse(k.cuda(), y.cuda(), learning_rate=0.1)(times, k_test_train=kt.cuda())
    assert gpu.train.device.type == "cuda"
    torch.testing.assert_close(gpu.test.cpu(), cpu.test, atol=1e-9, rtol=1e-9)
    post = gp_posterior(k.cuda(), y.cuda(), kt.cuda(), kss.cuda(), noise=0.01)
    ref = gp_posterior(k, y, kt, kss, noise=0.01)
    torch.testing.assert_close(post.cov.cpu(), ref.cov, atol=1e-9, rtol=1e-9)
    ode = gradient_descent("cross_entropy", k.cuda(), y.softmax(1).cuda())(1.0)
    assert ode.train.device.type == "cuda" and torch.isfinite(ode.train).all()


def test_nearly_duplicated_inputs_behave_like_exact_duplicates():
    """cond(K) ~ 1e17: the tiny eigenvalue falls in the numerical null space, no blow-up."""
    x = randn(5, 3, seed=21)
    xs = randn(2, 3, seed=22)
    near = torch.cat([x, x[:1] + 1e-9])
    exact = torch.cat([x, x[:1]])
    y = torch.tensor([1.0, 0.0, 2.0, -1.0, 0.5, 3.0], dtype=torch.float64)

    def k(a, b):
        return torch.exp(-(torch.cdist(a, b) ** 2))

    outs = [
        gradient_descent_mse(k(z, z), y, learning_rate=0.3)(math.inf, k_test_train=k(xs, z))
        for z in (near, exact)
    ]
    for out in outs:
        assert torch.isfinite(out.train).all() and torch.isfinite(out.test).all()
    torch.testing.assert_close(outs[0].test, outs[1].test, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(outs[0].train[[0, 5]], torch.full((2,), 2.0, dtype=torch.float64))
