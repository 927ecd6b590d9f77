"""User code that mypy must accept (``make test`` type-checks it with the public API).

Not collected by pytest (no ``test_`` prefix); it runs as a script in the type test.
"""

from __future__ import annotations

import torch

import ntkit as nk
from ntkit import layers as L
from ntkit.datasets import Split, load_digits
from ntkit.predict import gp_posterior, gradient_descent_mse, kernel_regression


def analytic(x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    net = L.serial(L.Dense(64, w_std=1.5, b_std=0.05), L.ReLU(), L.Dense(3))
    k: nk.Kernel = net.kernel(x)
    model: torch.nn.Module = net.module((x.shape[1],), seed=0)
    assert model(x.float()).shape == (x.shape[0], 3)
    return k.get_ntk() @ v + k.nngp @ v


def empirical(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    theta = nk.empirical_ntk(model, x, mode="trace")
    return theta.sum(0)


def inference(data: Split) -> tuple[torch.Tensor, torch.Tensor]:
    net = L.serial(L.Dense(64), L.ReLU(), L.Dense(10))
    k, kx = net.kernel(data.x_train), net.kernel(data.x_test, data.x_train)
    fit = kernel_regression(k.get_ntk(), data.y_train, kx.get_ntk(), ridge_relative=1e-4)
    post = gp_posterior(k.nngp, data.y_train, kx.nngp, noise=1e-3)
    out = gradient_descent_mse(k.get_ntk(), data.y_train, learning_rate=0.1)(
        10.0, k_test_train=kx.get_ntk()
    )
    return fit + post.mean, out.train


if __name__ == "__main__":
    x = torch.randn(5, 4, dtype=torch.float64)
    print(analytic(x, torch.ones(5, dtype=torch.float64)).shape)
    print(inference(load_digits(50, 20))[0].shape)
    print(empirical(torch.nn.Linear(4, 2).double(), x).shape)
