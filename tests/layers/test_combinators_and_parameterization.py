"""Combinator rules and parameterizations against closed forms written out in the tests."""

import math

import numpy as np
import pytest
import torch

from ntkit import layers as L


def _x(n, d, seed):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def relu_expectations(q11, q12, q22):
    """Arc-cosine formulas (Cho & Saul 2009) for (E[relu relu], E[relu' relu'])."""
    norm = np.sqrt(np.outer(q11, q22)) if np.ndim(q11) else math.sqrt(q11 * q22)
    theta = np.arccos(np.clip(q12 / norm, -1, 1))
    return (
        norm * (np.sin(theta) + (np.pi - theta) * np.cos(theta)) / (2 * np.pi),
        (np.pi - theta) / (2 * np.pi),
    )


def test_standard_and_ntk_parameterizations_same_nngp_different_ntk():
    x1, x2 = _x(4, 6, 0), _x(3, 6, 1)
    w1, w2, s1, b1, s2, b2 = 37, 5, 1.4, 0.3, 0.8, 0.2
    kinds = {
        p: L.serial(
            L.Dense(w1, s1, b1, parameterization=p),
            L.ReLU(),
            L.Dense(w2, s2, b2, parameterization=p),
        ).kernel(x1, x2)
        for p in ("ntk", "standard")
    }
    torch.testing.assert_close(kinds["ntk"].nngp, kinds["standard"].nngp, rtol=1e-14, atol=0)
    a, b = x1.numpy(), x2.numpy()
    q12 = s1**2 * a @ b.T / 6 + b1**2
    q11 = s1**2 * (a * a).sum(1) / 6 + b1**2
    q22 = s1**2 * (b * b).sum(1) / 6 + b1**2
    e, dot = relu_expectations(q11, q12, q22)
    # NTK parameterization: Theta = s2^2 E + b2^2 + s2^2 dot * Sigma1 (Theta1 = Sigma1)
    ntk_ntk = s2**2 * e + b2**2 + s2**2 * dot * q12
    # standard: gradients of W2 give w1 * E, of b2 give 1, of layer 1 give s2^2 dot (x.x' + 1)
    ntk_std = w1 * e + 1.0 + s2**2 * dot * (a @ b.T + 1.0)
    np.testing.assert_allclose(kinds["ntk"].ntk.numpy(), ntk_ntk, rtol=1e-12)
    np.testing.assert_allclose(kinds["standard"].ntk.numpy(), ntk_std, rtol=1e-12)


def test_standard_parameterization_bias_zero_still_counts_in_ntk():
    x = _x(3, 4, 2)
    with_bias = L.Dense(3, 1.0, 0.0, parameterization="standard").kernel(x)
    without = L.Dense(3, 1.0, None, parameterization="standard").kernel(x)
    torch.testing.assert_close(with_bias.ntk - without.ntk, torch.ones(3, 3, dtype=torch.float64))
    torch.testing.assert_close(with_bias.ntk, x @ x.T + 1.0)


def test_fan_in_sum_residual_block():
    x = _x(4, 5, 3)
    net = L.serial(
        L.Dense(6, 1.2, 0.1),
        L.FanOut(2),
        L.parallel(L.Identity(), L.serial(L.ReLU(), L.Dense(6, 1.5, 0.2))),
        L.FanInSum(),
    )
    k = net.kernel(x)
    a = x.numpy()
    q = 1.44 * a @ a.T / 5 + 0.01
    d = np.diag(q)
    e, dot = relu_expectations(d, q, d)
    branch_nngp = 2.25 * e + 0.04
    branch_ntk = branch_nngp + 2.25 * dot * q  # Theta_in = q (first Dense)
    np.testing.assert_allclose(k.nngp.numpy(), q + branch_nngp, rtol=1e-12)
    np.testing.assert_allclose(k.ntk.numpy(), q + branch_ntk, rtol=1e-12)
    assert k.is_gaussian


def test_fan_in_prod_uses_the_product_rule():
    x = _x(4, 5, 4)
    branches = [L.Dense(6, 1.3), L.Dense(6, 0.7, 0.5), L.serial(L.Erf(), L.Dense(6, 1.1))]
    net = L.serial(L.Dense(6, 1.0, 0.2), L.FanOut(3), L.parallel(*branches), L.FanInProd())
    k = net.kernel(x)
    ks = [L.serial(L.Dense(6, 1.0, 0.2), b).kernel(x) for b in branches]
    nngp = ks[0].nngp * ks[1].nngp * ks[2].nngp
    ntk = (
        ks[0].ntk * ks[1].nngp * ks[2].nngp
        + ks[0].nngp * ks[1].ntk * ks[2].nngp
        + ks[0].nngp * ks[1].nngp * ks[2].ntk
    )
    torch.testing.assert_close(k.nngp, nngp, rtol=1e-13, atol=0)
    torch.testing.assert_close(k.ntk, ntk, rtol=1e-13, atol=0)
    assert not k.is_gaussian


def test_fan_in_prod_of_relu_branches_is_the_product_of_their_kernels():
    # independent factors: E[X Y X' Y'] = E[X X'] E[Y Y'] even though ReLU outputs have
    # nonzero mean (a sum of the same branches is refused)
    x = _x(4, 5, 7)
    branches = [L.serial(L.Dense(6, 1.3), L.ReLU()), L.serial(L.Dense(6, 0.8, 0.3), L.GELU())]
    net = L.serial(L.Dense(6, 1.0, 0.2), L.FanOut(2), L.parallel(*branches), L.FanInProd())
    k = net.kernel(x)
    k1, k2 = (L.serial(L.Dense(6, 1.0, 0.2), b).kernel(x) for b in branches)
    torch.testing.assert_close(k.nngp, k1.nngp * k2.nngp, rtol=1e-13, atol=0)
    torch.testing.assert_close(k.ntk, k1.ntk * k2.nngp + k1.nngp * k2.ntk, rtol=1e-13, atol=0)


def test_fan_in_concat_is_width_weighted():
    x = _x(3, 5, 5)
    net = L.serial(L.FanOut(2), L.parallel(L.Dense(2, 1.3), L.Dense(6, 0.6, 0.4)), L.FanInConcat())
    k = net.kernel(x)
    k1, k2 = L.Dense(2, 1.3).kernel(x), L.Dense(6, 0.6, 0.4).kernel(x)
    torch.testing.assert_close(k.nngp, (2 * k1.nngp + 6 * k2.nngp) / 8, rtol=1e-14, atol=0)
    assert k.shape == (8,) and not k.is_gaussian
    model = net.module((5,), seed=0)
    assert model(x.float()).shape == (3, 8)


def test_repeat_builds_independent_layers():
    block = L.serial(L.Dense(4, 1.2, 0.1), L.ReLU())
    net = L.serial(L.repeat(block, 3), L.Dense(1))
    flat = L.serial(block, block, block, L.Dense(1))
    x = _x(3, 2, 6)
    torch.testing.assert_close(net.kernel(x).ntk, flat.kernel(x).ntk, rtol=0, atol=0)
    mod = net.module((2,), seed=1)
    linears = [m for m in mod.modules() if hasattr(m, "weight")]
    assert len(linears) == 4
    assert not torch.equal(linears[1].weight, linears[2].weight)


def test_module_is_reproducible_and_shapes_follow_spec():
    net = L.serial(L.Dense(7, 1.5, 0.1), L.GELU(), L.Dense(3))
    a, b = net.module((5,), seed=3), net.module((5,), seed=3)
    x = _x(4, 5, 7).float()
    torch.testing.assert_close(a(x), b(x), rtol=0, atol=0)
    assert a(x).shape == (4, 3)
    assert net.out_shape((5,)) == (3,)
    assert not torch.equal(a(x), net.module((5,), seed=4)(x))


def test_identity_and_flatten_on_vectors_are_no_ops():
    x = _x(3, 4, 8)
    base = L.Dense(2, 1.1, 0.2)
    k = base.kernel(x)
    for extra in (L.Identity(), L.Flatten()):
        k2 = L.serial(base, extra).kernel(x)
        torch.testing.assert_close(k2.ntk, k.ntk, rtol=0, atol=0)


@pytest.mark.parametrize("depth", [1, 4])
def test_deep_relu_networks_keep_unit_diagonal_at_critical_init(depth):
    # w_std^2 = 2, no bias: the ReLU NNGP diagonal is preserved exactly (q -> 2 * q / 2)
    x = _x(3, 4, 9)
    net = L.serial(L.Dense(5, math.sqrt(2.0)), *[L.ReLU(), L.Dense(5, math.sqrt(2.0))] * depth)
    k = net.kernel(x)
    q = 2.0 * (x * x).sum(1) / 4
    torch.testing.assert_close(torch.diagonal(k.nngp), q, rtol=1e-13, atol=0)
    torch.testing.assert_close(torch.diagonal(k.ntk), (depth + 1) * q, rtol=1e-13, atol=0)
