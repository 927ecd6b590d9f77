"""Closed-form Gaussian expectations against independent quadrature."""

import math

import numpy as np
import pytest
import torch
from scipy.special import eval_hermitenorm

from ntkit import layers as L
from tests.reference import gaussian_expectation

SQRT2PI = math.sqrt(2 * math.pi)


def _gelu(x):
    return x * 0.5 * (1 + math.erf(x / math.sqrt(2)))


def _dgelu(x):
    return 0.5 * (1 + math.erf(x / math.sqrt(2))) + x * math.exp(-x * x / 2) / SQRT2PI


def _herm(n):
    c = 1 / math.sqrt(math.factorial(n))
    return (lambda x: c * eval_hermitenorm(n, x)), (lambda x: c * n * eval_hermitenorm(n - 1, x))


# (layer, phi, phi') with phi written independently of ntkit (scalar numpy/math functions)
CASES = [
    (L.ReLU(), lambda x: max(x, 0.0), lambda x: float(x > 0)),
    (L.LeakyReLU(0.2), lambda x: x if x > 0 else 0.2 * x, lambda x: 1.0 if x > 0 else 0.2),
    (L.ABReLU(-0.5, 2.0), lambda x: 2 * x if x > 0 else -0.5 * x, lambda x: 2.0 if x > 0 else -0.5),
    (L.Abs(), abs, lambda x: 1.0 if x > 0 else -1.0),
    (
        L.Erf(1.3, 0.7, 0.2),
        lambda x: 1.3 * math.erf(0.7 * x) + 0.2,
        lambda x: 1.3 * 0.7 * 2 / math.sqrt(math.pi) * math.exp(-0.49 * x * x),
    ),
    (L.GELU(), _gelu, _dgelu),
    (
        L.Sin(1.2, 0.8, 0.3),
        lambda x: 1.2 * math.sin(0.8 * x + 0.3),
        lambda x: 0.96 * math.cos(0.8 * x + 0.3),
    ),
    (
        L.Cos(1.1, 0.6, 0.4),
        lambda x: 1.1 * math.cos(0.6 * x + 0.4),
        lambda x: -0.66 * math.sin(0.6 * x + 0.4),
    ),
    (
        L.RBF(0.7),
        lambda x: math.sqrt(2) * math.sin(math.sqrt(1.4) * x + math.pi / 4),
        lambda x: math.sqrt(2) * math.sqrt(1.4) * math.cos(math.sqrt(1.4) * x + math.pi / 4),
    ),
    (L.Exp(0.8, 0.5), lambda x: 0.8 * math.exp(0.5 * x), lambda x: 0.4 * math.exp(0.5 * x)),
    (
        L.Gaussian(1.2, -0.6),
        lambda x: 1.2 * math.exp(-0.6 * x * x),
        lambda x: -1.44 * x * math.exp(-0.6 * x * x),
    ),
    (L.Monomial(3), lambda x: x**3, lambda x: 3 * x * x),
    (L.Monomial(0), lambda x: 1.0, lambda x: 0.0),
    (L.RectifiedMonomial(1), lambda x: max(x, 0.0), lambda x: float(x > 0)),
    (L.RectifiedMonomial(2), lambda x: max(x, 0.0) ** 2, lambda x: 2 * max(x, 0.0)),
    (L.RectifiedMonomial(3), lambda x: max(x, 0.0) ** 3, lambda x: 3 * max(x, 0.0) ** 2),
    (
        L.Polynomial([0.3, -1.0, 0.5, 0.2]),
        lambda x: 0.3 - x + 0.5 * x * x + 0.2 * x**3,
        lambda x: -1 + x + 0.6 * x * x,
    ),
    (L.Hermite(3), *_herm(3)),
    (L.Hermite(4), *_herm(4)),
]

# (q11, q12, q22): generic, negative correlation, nearly collinear, identical arguments
COVS = [(0.7, 0.3, 0.9), (1.3, -0.9, 0.8), (1.1, 1.0979, 1.1), (0.6, 0.6, 0.6)]


def _closed_form(layer, q11, q12, q22):
    t = lambda v: torch.tensor([v], dtype=torch.float64)  # noqa: E731
    nngp, dot = layer.expectations(t(q12), t(q11), t(q22), need_dot=True)
    return float(nngp[0]), float(dot[0])


@pytest.mark.parametrize("layer,phi,dphi", CASES, ids=[repr(c[0]) for c in CASES])
@pytest.mark.parametrize("cov", COVS, ids=["generic", "anti", "collinear", "same"])
def test_closed_form_matches_quadrature(layer, phi, dphi, cov):
    q11, q12, q22 = cov
    nngp, dot = _closed_form(layer, q11, q12, q22)
    ref_nngp = gaussian_expectation(phi, phi, q11, q12, q22)
    ref_dot = gaussian_expectation(dphi, dphi, q11, q12, q22)
    assert nngp == pytest.approx(ref_nngp, rel=1e-8, abs=1e-11)
    assert dot == pytest.approx(ref_dot, rel=1e-7, abs=1e-10)


def test_sign_nngp_is_arcsine_and_ntk_term_vanishes():
    # E[sign u sign v] = (2/pi) arcsin(rho) (Sheppard); the derivative vanishes a.e.
    for q11, q12, q22 in COVS:
        nngp, dot = _closed_form(L.Sign(), q11, q12, q22)
        rho = min(1.0, q12 / math.sqrt(q11 * q22))
        assert nngp == pytest.approx(2 / math.pi * math.asin(rho), rel=1e-12, abs=1e-12)
        assert dot == 0.0


SMOOTH = [
    c
    for c in CASES
    if isinstance(c[0], (L.Erf, L.GELU, L.Sin, L.RBF, L.Exp, L.Gaussian, L.Polynomial))
]


@pytest.mark.parametrize("layer,phi,dphi", SMOOTH, ids=[repr(c[0]) for c in SMOOTH])
def test_closed_form_matches_gauss_hermite_elementwise(layer, phi, dphi):
    """Issue requirement: closed forms == 2-D Gauss-Hermite quadrature to 1e-6 relative."""
    quad = L.Elementwise(layer.fn, degree=64)
    q11 = torch.tensor([[0.7], [1.3], [0.4]], dtype=torch.float64)
    q22 = torch.tensor([[0.9, 1.1, 0.5]], dtype=torch.float64)
    q12 = torch.tensor([[0.3, -0.2, 0.1], [0.5, 0.9, -0.4], [0.1, 0.2, 0.44]], dtype=torch.float64)
    n_cf, d_cf = layer.expectations(q12, q11, q22, need_dot=True)
    n_q, d_q = quad.expectations(q12, q11, q22, need_dot=True)
    torch.testing.assert_close(n_cf, n_q, rtol=1e-6, atol=1e-12)
    torch.testing.assert_close(d_cf, d_q, rtol=1e-6, atol=1e-12)


def test_elementwise_closed_form_with_autograd_derivative_matches_erf():
    def nngp_fn(q12, q11, q22):
        return 2 / math.pi * torch.arcsin(2 * q12 / torch.sqrt((1 + 2 * q11) * (1 + 2 * q22)))

    custom = L.Elementwise(torch.erf, nngp_fn=nngp_fn)
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    net_a = L.serial(L.Dense(4, 1.3, 0.2), custom, L.Dense(1))
    net_b = L.serial(L.Dense(4, 1.3, 0.2), L.Erf(), L.Dense(1))
    ka, kb = net_a.kernel(x), net_b.kernel(x)
    torch.testing.assert_close(ka.nngp, kb.nngp, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(ka.ntk, kb.ntk, rtol=1e-12, atol=1e-14)


def test_finite_modules_compute_the_documented_functions():
    x = torch.linspace(-3, 3, 41, dtype=torch.float64)
    for layer, phi, _ in CASES:
        mod = layer.build_module((41,), torch.Generator())
        expected = torch.tensor([phi(float(v)) for v in x], dtype=torch.float64)
        torch.testing.assert_close(mod(x), expected, rtol=1e-12, atol=1e-12)


def test_zero_variance_inputs_give_finite_kernels():
    # an all-zero input row with no bias has zero variance at every layer
    x = torch.zeros(3, 4, dtype=torch.float64)
    x[1] = torch.tensor([1.0, -2.0, 0.5, 3.0])
    for layer, phi, _ in CASES:
        net = L.serial(L.Dense(8, 1.2), layer, L.Dense(2))
        k = net.kernel(x)
        assert torch.isfinite(k.nngp).all() and torch.isfinite(k.ntk).all(), repr(layer)
        # the zero input's output is phi(0) deterministically: nngp = w^2 phi(0)^2
        assert float(k.nngp[0, 0]) == pytest.approx(phi(0.0) ** 2, abs=1e-12), repr(layer)


def test_gaussian_activation_with_divergent_expectation_raises():
    x = torch.ones(2, 3, dtype=torch.float64)
    net = L.serial(L.Dense(4, 2.0), L.Gaussian(1.0, 0.5), L.Dense(1))
    with pytest.raises(ValueError, match="infinite"):
        net.kernel(x)


@pytest.mark.parametrize("degree", [1, 2, 5])
def test_hermite_is_exact_off_unit_variance(degree):
    phi, dphi = _herm(degree)
    nngp, dot = _closed_form(L.Hermite(degree), 2.0, 0.7, 0.5)
    assert nngp == pytest.approx(gaussian_expectation(phi, phi, 2.0, 0.7, 0.5), rel=1e-9)
    assert dot == pytest.approx(gaussian_expectation(dphi, dphi, 2.0, 0.7, 0.5), rel=1e-9)


def test_monomial_matches_isserlis_moments():
    # E[u^2 v^2] = q11 q22 + 2 q12^2 and E[u^3 v^3] = 9 q11 q22 q12 + 6 q12^3 (Isserlis)
    q11, q12, q22 = 0.8, -0.3, 1.7
    assert _closed_form(L.Monomial(2), q11, q12, q22)[0] == pytest.approx(
        q11 * q22 + 2 * q12**2, rel=1e-13
    )
    assert _closed_form(L.Monomial(3), q11, q12, q22)[0] == pytest.approx(
        9 * q11 * q22 * q12 + 6 * q12**3, rel=1e-13
    )


def test_invalid_activation_arguments():
    with pytest.raises(ValueError):
        L.Monomial(-1)
    with pytest.raises(ValueError):
        L.Polynomial([])
    with pytest.raises(ValueError):
        L.GELU(approximate="cubic")
    with pytest.raises(ValueError):
        L.Elementwise()
    with pytest.raises(TypeError):
        L.Elementwise(fn=3)
    assert np.isfinite(L.Hermite(2).coef).all()
