"""Training networks vs the closed forms: linearized networks exactly, wide ones as width grows."""

import numpy as np
import pytest
import torch

import ntkit as nk
from ntkit import layers as L
from ntkit.predict import gradient_descent, gradient_descent_mse, max_learning_rate
from tests.predict.helpers import Linearized, randn, train_linearized

# torch.func.jvp of some modules goes through a deprecated torch.jit path internally
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _small_model(seed=0, n_out=3):
    net = L.serial(
        L.Dense(16, 1.5, 0.1), L.Erf(), L.Dense(16, 1.5, 0.1), L.ReLU(), L.Dense(n_out, 1.5, 0.1)
    )
    return net.module((3,), seed=seed, dtype=torch.float64)


@pytest.mark.parametrize(
    "reduction, ridge", [("sum", 0.0), ("sum", 0.5), ("mean", 0.0), ("mean", 0.5)]
)
def test_linearized_network_gd_reproduces_gradient_descent_mse(reduction, ridge):
    model = _small_model()
    x, xs, y = randn(8, 3, seed=1), randn(4, 3, seed=2), randn(8, 3, seed=3)
    lin = Linearized(model)
    ntk = nk.empirical_ntk(model, x, mode="full")  # shape: (8, 8, 3, 3)
    ntk_test = nk.empirical_ntk(model, xs, x, mode="full")
    scale = 1.0 if reduction == "sum" else 1.0 / y.numel()
    lr = 0.5 * max_learning_rate(ntk, reduction=reduction, ridge=ridge)
    steps = [1, 5, 25, 60]
    ref = train_linearized(lin, x, y, xs, lr=lr, steps=steps, ridge=ridge, scale=scale)
    with torch.no_grad():
        f0, ft0 = model(x), model(xs)
    pred = gradient_descent_mse(
        ntk, y, learning_rate=lr, ridge=ridge, reduction=reduction, discrete=True
    )(steps, fx_train_0=f0, fx_test_0=ft0, k_test_train=ntk_test)
    for i, s in enumerate(steps):
        torch.testing.assert_close(pred.train[i], ref[s][0], atol=1e-10, rtol=1e-10)
        torch.testing.assert_close(pred.test[i], ref[s][1], atol=1e-10, rtol=1e-10)
    # the network actually trained: the last train outputs moved well away from f0
    assert float(torch.linalg.norm(ref[60][0] - f0)) > 0.3 * float(torch.linalg.norm(y - f0))


def test_linearized_network_cross_entropy_approaches_the_ode_as_lr_shrinks():
    model = _small_model(seed=4)
    x, xs = randn(8, 3, seed=5), randn(3, 3, seed=6)
    y = torch.nn.functional.one_hot(torch.arange(8) % 3, 3).double()
    lin = Linearized(model)
    ntk = nk.empirical_ntk(model, x, mode="full")
    ntk_test = nk.empirical_ntk(model, xs, x, mode="full")
    with torch.no_grad():
        f0, ft0 = model(x), model(xs)
    tau = 2.0
    ode = gradient_descent("cross_entropy", ntk, y, learning_rate=1.0, rtol=1e-10, atol=1e-12)(
        tau, fx_train_0=f0, fx_test_0=ft0, k_test_train=ntk_test
    )
    errors = []
    for lr in [0.04, 0.02, 0.01]:
        steps = round(tau / lr)
        delta = lin.zeros()

        def loss(d):
            return -(y * torch.log_softmax(lin(d, x), 1)).sum()

        g = torch.func.grad(loss)
        for _ in range(steps):
            gd = g(delta)
            delta = {k: delta[k] - lr * gd[k] for k in delta}
        with torch.no_grad():
            err = torch.linalg.norm(lin(delta, x) - ode.train) + torch.linalg.norm(
                lin(delta, xs) - ode.test
            )
        errors.append(float(err))
    ratios = [a / b for a, b in zip(errors, errors[1:])]
    assert all(1.6 < r < 2.4 for r in ratios), (errors, ratios)


def _train_real(model, x, y, xs, lr, steps):
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        (0.5 * ((model(x) - y) ** 2).sum()).backward()
        opt.step()
    with torch.no_grad():
        return model(x), model(xs)


@pytest.mark.montecarlo
def test_wide_network_training_approaches_the_prediction_like_inverse_sqrt_width():
    """Finite nets vs the analytic-NTK prediction from their own f0: error ~ width^-1/2."""
    widths = [64, 256, 1024, 4096]
    x, xs = randn(10, 3, seed=7), randn(5, 3, seed=8)
    y = torch.sin(x[:, :2])

    def net(w):
        return L.serial(L.Dense(w, 1.5, 0.1), L.ReLU(), L.Dense(2, 1.5, 0.1))

    k, kt = net(1).kernel(x), net(1).kernel(xs, x)
    lr, steps = 0.5 * max_learning_rate(k.ntk), 100
    predictor = gradient_descent_mse(k.ntk, y, learning_rate=lr, discrete=True)
    rms = []
    for w in widths:
        errs = []
        for seed in range(4):
            model = net(w).module((3,), seed=seed, dtype=torch.float64)
            with torch.no_grad():
                f0, ft0 = model(x), model(xs)
            f, ft = _train_real(model, x, y, xs, lr, steps)
            pred = predictor(steps, fx_train_0=f0, fx_test_0=ft0, k_test_train=kt.ntk)
            moved = torch.linalg.norm(torch.cat([f - f0, ft - ft0]))
            errs.append(
                float(torch.linalg.norm(torch.cat([f - pred.train, ft - pred.test])) / moved)
            )
        rms.append(float(np.sqrt(np.mean(np.square(errs)))))
    slope = float(np.polyfit(np.log(widths), np.log(rms), 1)[0])
    assert -0.75 < slope < -0.3, (rms, slope)
    assert rms[-1] < 0.05, rms
