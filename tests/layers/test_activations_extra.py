"""SigmoidLike, Gabor, ExpNormalized: quadrature and closed-form references, Monte Carlo."""

import math

import pytest
import torch

import ntkit.layers as L
from tests.layers.layer_checks import assert_converges, mc_errors, randn


def _dense_net(act):
    return L.serial(L.Dense(3, w_std=1.1, b_std=0.3), act, L.Dense(2, b_std=0.1), act, L.Dense(1))


@pytest.mark.parametrize(
    "act,fn",
    [
        (L.Gabor(), lambda x: torch.exp(-x * x) * torch.sin(x)),
        (L.SigmoidLike(), lambda x: 0.5 * torch.erf(x / 2.4020563531719796) + 0.5),
    ],
)
def test_closed_forms_match_gauss_hermite_quadrature(act, fn):
    """Both expectations against 2-D quadrature of the same function (its derivative by
    autograd): an independent route. 160 nodes: Gabor's exp(-x^2) factor at variances ~3
    needs more than 80 for 1e-8 (checked against scipy dblquad)."""
    x1, x2 = randn((4, 5), 0), randn((3, 5), 1)
    got = _dense_net(act).kernel(x1, x2)
    ref = _dense_net(L.Elementwise(fn, degree=160)).kernel(x1, x2)
    torch.testing.assert_close(got.nngp, ref.nngp, rtol=1e-8, atol=1e-12)
    torch.testing.assert_close(got.ntk, ref.ntk, rtol=1e-8, atol=1e-12)


def test_sigmoid_like_approximates_the_logistic_sigmoid():
    x = torch.linspace(-5, 5, 1001, dtype=torch.float64)
    assert float((L.SigmoidLike().fn(x) - torch.sigmoid(x)).abs().max()) < 0.02


@pytest.mark.parametrize("gamma,shift", [(0.7, -0.8), (1.5, -1.0)])
def test_exp_normalized_closed_form(gamma, shift):
    """nngp' = |x1| |x2| exp(gamma (cos + shift)) on the input kernel (no weights before it)."""
    x1, x2 = randn((4, 6), 2), randn((3, 6), 3)
    k = L.serial(L.Dense(1), L.ExpNormalized(gamma, shift)).kernel(x1, x2)
    n1, n2 = x1.norm(dim=1) / math.sqrt(6), x2.norm(dim=1) / math.sqrt(6)
    cos = (x1 @ x2.T) / 6 / (n1[:, None] * n2[None, :])
    ref = n1[:, None] * n2[None, :] * torch.exp(gamma * (cos + shift))
    torch.testing.assert_close(k.nngp, ref, rtol=1e-12, atol=1e-14)
    # NTK: dot = gamma exp(...), times the Dense layer's NTK (= its NNGP)
    torch.testing.assert_close(k.ntk, gamma * torch.exp(gamma * (cos + shift)) * (x1 @ x2.T) / 6)


@pytest.mark.montecarlo
@pytest.mark.parametrize("act", [L.Gabor(), L.SigmoidLike()], ids=repr)
def test_finite_networks_converge(act):
    def build(c):
        return L.serial(L.Conv(c, 2, padding="same", w_std=1.5, b_std=0.2), act, L.GlobalAvgPool())

    assert_converges(build, randn((3, 2, 3, 3), 4))


@pytest.mark.montecarlo
def test_exp_normalized_finite_network_converges():
    """The finite module (normalize, RBF sines, rescale): NNGP and NTK errors fall like
    width^-1/2 (measured ratios ~0.15-0.2 for a 16x wider layer; asserted < 0.5)."""
    x = randn((4, 5), 5)

    def build(c):
        return L.serial(L.Dense(c, b_std=0.2), L.ExpNormalized(0.8, -0.7))

    narrow, wide = mc_errors(build, x, 64), mc_errors(build, x, 1024)
    for e_small, e_big in zip(narrow, wide):
        assert e_big < 0.5 * e_small and e_big < 0.08, (narrow, wide)


def test_bad_input():
    with pytest.raises(ValueError, match="gamma"):
        L.ExpNormalized(gamma=0.0)
    with pytest.raises(ValueError, match="Gaussian pre-activations"):
        L.ExpNormalized().kernel(randn((3, 4), 0))
    with pytest.raises(ValueError, match="Gaussian pre-activations"):
        L.serial(L.Dense(2), L.ReLU(), L.Gabor()).kernel(randn((3, 4), 0))
