"""Whole-network kernels against the infinite-width recursion, pair by pair (quadrature)."""

import math

import numpy as np
import pytest
import torch

from ntkit import layers as L
from tests.reference import mlp_kernels


def _data(n, d, seed):
    g = np.random.default_rng(seed)
    return g.standard_normal((n, d))


@pytest.mark.parametrize(
    "acts",
    [
        ("relu", L.ReLU, lambda x: max(x, 0.0), lambda x: float(x > 0)),
        (
            "erf",
            L.Erf,
            math.erf,
            lambda x: 2 / math.sqrt(math.pi) * math.exp(-x * x),
        ),
    ],
    ids=lambda a: a[0],
)
def test_mlp_matches_recursion_reference(acts):
    _, cls, phi, dphi = acts
    x1, x2 = _data(3, 5, 0), _data(2, 5, 1)
    spec = [
        ("dense", 1.4, 0.3),
        ("act", phi, dphi),
        ("dense", 0.9, None),
        ("act", phi, dphi),
        ("dense", 1.1, 0.1),
    ]
    ref_nngp, ref_ntk = mlp_kernels(x1, x2, spec)
    net = L.serial(L.Dense(7, 1.4, 0.3), cls(), L.Dense(7, 0.9), cls(), L.Dense(3, 1.1, 0.1))
    k = net.kernel(x1, x2)
    np.testing.assert_allclose(k.nngp.numpy(), ref_nngp, rtol=1e-8)
    np.testing.assert_allclose(k.ntk.numpy(), ref_ntk, rtol=1e-8)
    assert k.nngp.shape == (3, 2) and k.ntk.shape == (3, 2)


def test_input_kernel_and_dense_closed_form():
    # one Dense layer: nngp = w^2 x.x'/d + b^2; NTK parameterization: ntk = nngp
    x1 = torch.tensor(_data(4, 6, 2))
    x2 = torch.tensor(_data(3, 6, 3))
    k = L.Dense(5, 1.7, 0.4).kernel(x1, x2)
    expected = 1.7**2 * (x1 @ x2.T) / 6 + 0.4**2
    torch.testing.assert_close(k.nngp, expected, rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(k.ntk, expected, rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(k.cov1, 1.7**2 * (x1 * x1).sum(1) / 6 + 0.16, rtol=1e-14, atol=0)


def test_relu_kernel_on_identical_inputs_is_exactly_half_the_variance():
    # theta = 0 on the diagonal: E[relu(u)^2] = q/2 and dot = 1/2, both exactly
    x = torch.tensor(_data(5, 8, 4))
    k = L.serial(L.Dense(3), L.ReLU()).kernel(x)
    q = (x * x).sum(1) / 8
    assert torch.equal(torch.diagonal(k.nngp), q / 2)
    assert torch.equal(torch.diagonal(k.ntk), q / 2)  # ntk = q * 1/2


def test_get_nngp_skips_ntk_and_numpy_inputs_are_accepted():
    x = _data(4, 3, 5)
    net = L.serial(L.Dense(3), L.GELU(), L.Dense(1))
    k_np = net.kernel(x, get="nngp")
    assert k_np.ntk is None and k_np.nngp.dtype == torch.float64
    k_t = net.kernel(torch.tensor(x))
    torch.testing.assert_close(k_np.nngp, k_t.nngp, rtol=0, atol=0)
    assert net.kernel(x, get="ntk").ntk is not None


def test_kernel_follows_input_device_and_requested_dtype():
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
    net = L.serial(L.Dense(3), L.ReLU(), L.Dense(1))
    assert net.kernel(x).nngp.dtype == torch.float64
    assert net.kernel(x, dtype=torch.float32).nngp.dtype == torch.float32
    assert net.kernel(x).nngp.device == x.device
