"""GP posteriors against scikit-learn's GaussianProcessRegressor on a fixed kernel."""

import math

import numpy as np
import pytest
import torch
from sklearn.gaussian_process import GaussianProcessRegressor
from sklearn.gaussian_process.kernels import Kernel as SkKernel

from ntkit import layers as L
from ntkit.predict import gp_posterior, kernel_regression
from tests.predict.helpers import randn


class Precomputed(SkKernel):
    """A scikit-learn kernel that looks entries up in a fixed matrix by integer index."""

    def __init__(self, matrix):
        self.matrix = matrix

    @property
    def hyperparameters(self):
        return []

    def __call__(self, X, Y=None, eval_gradient=False):
        i = X[:, 0].astype(int)
        j = i if Y is None else Y[:, 0].astype(int)
        out = self.matrix[np.ix_(i, j)]
        return (out, np.empty(out.shape + (0,))) if eval_gradient else out

    def diag(self, X):
        i = X[:, 0].astype(int)
        return self.matrix[i, i]

    def is_stationary(self):
        return False


def _net_kernels(n=12, n_test=6, seed=0):
    net = L.serial(
        L.Dense(64, 1.5, 0.1), L.ReLU(), L.Dense(64, 1.5, 0.1), L.ReLU(), L.Dense(1, 1.5, 0.1)
    )
    x = randn(n + n_test, 4, seed=seed)
    return net.kernel(x)


@pytest.mark.parametrize("kind", ["nngp", "ntk"])
@pytest.mark.parametrize("noise", [1e-6, 0.05])
def test_posterior_equals_sklearn_gaussian_process_regressor(kind, noise):
    full = getattr(_net_kernels(), kind)
    n = 12
    y = randn(n, 2, seed=1)
    idx = np.arange(18, dtype=float)[:, None]
    gpr = GaussianProcessRegressor(Precomputed(full.numpy()), alpha=noise, optimizer=None)
    gpr.fit(idx[:n], y.numpy())
    mean_sk, cov_sk = gpr.predict(idx[n:], return_cov=True)
    post = gp_posterior(full[:n, :n], y, full[n:, :n], full[n:, n:], noise=noise)
    np.testing.assert_allclose(post.mean.numpy(), mean_sk, atol=1e-9, rtol=1e-8)
    np.testing.assert_allclose(post.cov.numpy(), cov_sk[:, :, 0], atol=1e-9, rtol=1e-8)
    diag = gp_posterior(full[:n, :n], y, full[n:, :n], torch.diagonal(full[n:, n:]), noise=noise)
    torch.testing.assert_close(diag.cov, torch.diagonal(post.cov), atol=1e-12, rtol=0)
    torch.testing.assert_close(diag.mean, post.mean)
    # the posterior mean is kernel (ridge) regression
    torch.testing.assert_close(
        post.mean, kernel_regression(full[:n, :n], y, full[n:, :n], ridge=noise)
    )


def test_noise_relative_scales_with_the_mean_diagonal():
    full = _net_kernels().nngp
    y = randn(12, seed=2)
    a = gp_posterior(full[:12, :12], y, full[12:, :12], noise_relative=0.1)
    b = gp_posterior(
        full[:12, :12], y, full[12:, :12], noise=0.1 * float(full[:12, :12].diagonal().mean())
    )
    torch.testing.assert_close(a.mean, b.mean)
    assert a.mean.shape == (6,) and a.cov is None


def test_full_output_layout_equals_shared_kernel():
    full = _net_kernels().ntk
    eye = torch.eye(3, dtype=torch.float64)
    k4 = torch.einsum("ij,ab->ijab", full, eye)
    y = randn(12, 3, seed=3)
    a = gp_posterior(full[:12, :12], y, full[12:, :12], full[12:, 12:], noise=0.01)
    b = gp_posterior(k4[:12, :12], y, k4[12:, :12], k4[12:, 12:], noise=0.01)
    torch.testing.assert_close(b.mean, a.mean)
    torch.testing.assert_close(b.cov, torch.einsum("ij,ab->ijab", a.cov, eye), atol=1e-12, rtol=0)
    c = gp_posterior(
        k4[:12, :12], y, k4[12:, :12], torch.ones(6, 3, dtype=torch.float64), noise=0.01
    )
    assert c.cov.shape == (6, 3)


def test_noiseless_duplicated_inputs_are_finite_and_condition_on_distinct_points():
    x = randn(6, 3, seed=4)
    xs = randn(3, 3, seed=5)
    xd = torch.cat([x, x[:2]])  # two exact duplicates: K is singular
    k = lambda a, b: torch.exp(-(torch.cdist(a, b) ** 2) / 2)  # noqa: E731
    y = randn(6, seed=6)
    yd = torch.cat([y, y[:2]])
    post = gp_posterior(k(xd, xd), yd, k(xs, xd), k(xs, xs))
    ref = gp_posterior(k(x, x), y, k(xs, x), k(xs, xs))
    assert torch.isfinite(post.mean).all() and torch.isfinite(post.cov).all()
    torch.testing.assert_close(post.mean, ref.mean, atol=1e-7, rtol=1e-7)
    torch.testing.assert_close(post.cov, ref.cov, atol=1e-7, rtol=1e-7)
    # at a training input the noiseless posterior interpolates with ~zero variance
    at_train = gp_posterior(k(xd, xd), yd, k(x[:1], xd), k(x[:1], x[:1]))
    assert abs(float(at_train.mean[0] - y[0])) < 1e-7 and float(at_train.cov[0, 0]) < 1e-7
    assert float(at_train.cov[0, 0]) >= 0  # clamped, never a negative variance


def test_rank_deficient_kernel_gives_minimum_norm_regression():
    phi = randn(10, 3, seed=7)  # rank 3 kernel on 10 points
    phi_t = randn(4, 3, seed=8)
    y = phi @ randn(3, seed=9)  # realizable targets
    pred = kernel_regression(phi @ phi.T, y, phi_t @ phi.T)
    theta = torch.linalg.lstsq(phi, y[:, None]).solution[:, 0]
    torch.testing.assert_close(pred, phi_t @ theta, atol=1e-9, rtol=1e-9)


@pytest.mark.parametrize(
    "args, kwargs, match",
    [
        (
            (torch.eye(4), torch.ones(4), torch.ones(2, 3)),
            {},
            r"k_test_train must be \(n_test, 4\)",
        ),
        ((torch.eye(4), torch.ones(3), torch.ones(2, 4)), {}, "y_train"),
        ((torch.ones(4, 3), torch.ones(4), torch.ones(2, 4)), {}, "square"),
        ((torch.eye(4), torch.ones(4), torch.ones(2, 4), torch.ones(3, 3)), {}, "k_test_test"),
        ((torch.eye(4), torch.ones(4), torch.ones(2, 4)), {"noise": -1.0}, "noise"),
        ((torch.eye(4), torch.full((4,), math.inf), torch.ones(2, 4)), {}, "Inf"),
    ],
)
def test_bad_arguments_raise_clear_errors(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        gp_posterior(*args, **kwargs)


def test_non_tensor_input_is_a_type_error():
    with pytest.raises(TypeError, match="torch.Tensor or numpy"):
        gp_posterior("K", torch.ones(4), torch.ones(2, 4))
