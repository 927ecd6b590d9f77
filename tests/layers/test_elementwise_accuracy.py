"""``Elementwise(fn)`` at any scale against scipy's adaptive quadrature.

The reference integrates ``E[f(u) g(v)]`` as nested ``scipy.integrate.quad`` calls in the
functions' own variables with every kink/jump passed as a break point (independent of
ntkit's method: Hermite series, tables, Gauss-Legendre panels). The guarantee checked is the
documented one: ``|error| <= rtol * sqrt(E[f(u)^2] E[f(v)^2])`` with ``rtol = 1e-8`` (the
reference itself is converged to ~1e-11).
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from scipy import integrate

from ntkit import layers as L

RTOL = 1e-8


def _np(fn):
    def f(x):
        return float(fn(torch.tensor(x, dtype=torch.float64)))

    return f


def _dnp(fn):
    def f(x):
        t = torch.tensor(x, dtype=torch.float64, requires_grad=True)
        y = fn(t)
        if not y.requires_grad:
            return 0.0
        (g,) = torch.autograd.grad(y, t)
        return float(g)

    return f


def _step(x):
    return (x > 0).to(x.dtype)


# (name, torch fn, kinks/jumps of fn)
FUNCTIONS = {
    "tanh": (torch.tanh, []),
    "sigmoid": (torch.sigmoid, []),
    "softplus": (F.softplus, []),
    "silu": (F.silu, []),
    "mish": (F.mish, []),
    "elu": (F.elu, [0.0]),
    "hardtanh": (F.hardtanh, [-1.0, 1.0]),
    "relu6": (F.relu6, [0.0, 6.0]),
    "selu": (F.selu, [0.0]),
    "step": (_step, [0.0]),
}


def _reference(f, g, q11, q12, q22, kinks):
    """E[f(u) g(v)], u = s1 z1, v = a z1 + b z2, nested adaptive quadrature with break points."""
    s1 = math.sqrt(q11)
    a = q12 / s1
    b = math.sqrt(max(q22 - a * a, 0.0))
    lim = 12.0

    def dens(z):
        return math.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)

    def inner(z1):
        if b < 1e-14 * math.sqrt(q22):
            return g(a * z1)
        pts = [(k - a * z1) / b for k in kinks]
        pts = [p for p in pts if -lim < p < lim] or None
        val, _ = integrate.quad(
            lambda z2: dens(z2) * g(a * z1 + b * z2),
            -lim,
            lim,
            points=pts,
            limit=400,
            epsabs=1e-15,
            epsrel=1e-12,
        )
        return val

    pts = sorted({k / s1 for k in kinks} | {k / a for k in kinks if a != 0})
    pts = [p for p in pts if -lim < p < lim] or None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", integrate.IntegrationWarning)
        val, _ = integrate.quad(
            lambda z1: dens(z1) * f(s1 * z1) * inner(z1),
            -lim,
            lim,
            points=pts,
            limit=400,
            epsabs=1e-15,
            epsrel=1e-12,
        )
    return val


def _self(f, q, kinks):
    return _reference(f, f, q, q, q, kinks)


def _check(name, q11, rho, q22=None):
    fn, kinks = FUNCTIONS[name]
    q22 = q11 * 1.7 if q22 is None else q22
    q12 = rho * math.sqrt(q11 * q22)
    layer = L.Elementwise(fn)
    t = lambda v: torch.tensor([[v]], dtype=torch.float64)  # noqa: E731
    nngp, dot = layer.expectations(t(q12), t(q11), t(q22), need_dot=True)
    for got, f in ((nngp, _np(fn)), (dot, _dnp(fn))):
        ref = _reference(f, f, q11, q12, q22, kinks)
        scale = math.sqrt(_self(f, q11, kinks) * _self(f, q22, kinks))
        err = abs(float(got) - ref)
        assert err <= RTOL * scale, (name, q11, rho, float(got), ref, err / scale)


@pytest.mark.parametrize(
    "name,q11,rho",
    [
        ("tanh", 1e-4, 0.5),
        ("tanh", 3.0, 1.0),
        ("tanh", 20.0, 0.97),
        ("relu6", 30.0, 0.6),
        ("step", 1.0, 0.995),  # near-perfect correlation: direct 2-D quadrature
    ],
)
def test_elementwise_matches_adaptive_quadrature(name, q11, rho):
    _check(name, q11, rho)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(FUNCTIONS))
@pytest.mark.parametrize("q11", [1e-4, 1e-2, 1.0, 1e2, 1e4])
@pytest.mark.parametrize("rho", [-1.0, -0.9, -0.3, 0.0, 0.5, 0.99, 1.0])
def test_elementwise_grid(name, q11, rho):
    """The full grid: every listed function, variances 1e-4..1e4, correlations -1..1."""
    _check(name, q11, rho)


def test_old_failure_case_kernel_level():
    """A tanh network at raw-pixel scale (q ~ 60 w^2): Elementwise equals a closed form.

    ``Erf(a=1, b=sqrt(pi)/2)`` is not tanh, but ``Elementwise(erf-like fn)`` vs ``Erf`` is an
    end-to-end check through the driver at large variances.
    """
    b = math.sqrt(math.pi) / 2
    fn = lambda x: torch.erf(b * x)  # noqa: E731
    x = torch.randn(5, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 8
    ref = L.serial(L.Dense(4, w_std=2.0, b_std=0.1), L.Erf(1.0, b), L.Dense(1)).kernel(x)
    got = L.serial(L.Dense(4, w_std=2.0, b_std=0.1), L.Elementwise(fn), L.Dense(1)).kernel(x)
    scale = torch.sqrt(torch.diagonal(ref.nngp)[:, None] * torch.diagonal(ref.nngp)[None, :])
    assert float(((got.nngp - ref.nngp).abs() / scale).max()) <= 2 * RTOL
    ntk_scale = torch.sqrt(torch.diagonal(ref.ntk)[:, None] * torch.diagonal(ref.ntk)[None, :])
    assert float(((got.ntk - ref.ntk).abs() / ntk_scale).max()) <= 1e-7


def test_out_of_range_variance_raises():
    layer = L.serial(L.Dense(2, w_std=1.0), L.Elementwise(torch.tanh))
    with pytest.raises(ValueError, match=r"variance of .* outside the range 1e-6..1e6"):
        layer.kernel(torch.full((2, 3), 3e3, dtype=torch.float64))


def test_undeclared_kink_is_detected():
    """A kink at 0.3 (not an integer, not declared) fails the error estimate and raises."""
    with pytest.raises(ValueError, match="breakpoints="):
        L.Elementwise(lambda x: torch.relu(x - 0.3), rtol=1e-10).expectations(
            torch.tensor([[0.2]], dtype=torch.float64),
            torch.tensor([[0.5]], dtype=torch.float64),
            torch.tensor([[0.5]], dtype=torch.float64),
            need_dot=False,
        )
    layer = L.Elementwise(lambda x: torch.relu(x - 0.3), breakpoints=[0.3])
    q = torch.tensor([[0.5]], dtype=torch.float64)
    got = float(layer.expectations(q * 0.4, q, q, need_dot=False)[0])
    f = lambda v: max(v - 0.3, 0.0)  # noqa: E731
    ref = _reference(f, f, 0.5, 0.2, 0.5, [0.3])
    assert abs(got - ref) <= RTOL * _self(f, 0.5, [0.3])


def test_non_integrable_function_raises():
    with pytest.raises(ValueError, match="not finite"):
        L.serial(L.Dense(2), L.Elementwise(torch.sqrt)).kernel(
            torch.randn(2, 3, dtype=torch.float64)
        )
