"""Monte Carlo: random finite networks built from a description converge to its kernel.

Tolerances are derived from the samples themselves: the mean of S independent single-network
estimates must lie within 4 pooled standard errors (plus an O(1/width) bias allowance) of the
analytic kernel, and the root-mean-square error of single networks must fall like width^-1/2.
"""

import numpy as np
import pytest
import torch

import ntkit as nk
from ntkit import layers as L

pytestmark = pytest.mark.montecarlo


def _x(n, d, seed):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _rel_err(est, ref):
    return float(torch.linalg.norm(est - ref) / torch.linalg.norm(ref))


def _single_estimates(net, x, seeds, get):
    return [nk.monte_carlo_kernel(net, x, n_samples=1, seed=s, get=get) for s in seeds]


def _assert_within_standard_error(samples, ref, width):
    """The S-sample mean is within 4 pooled standard errors (+ an O(1/width) bias) of ref.

    Pooled over entries: ||mean - ref||_F <= 4 sqrt(sum_entries var / S) + 4/width ||ref||_F.
    Under the null (no bias) the left side is about one pooled standard error.
    """
    stack = torch.stack(samples)
    mean = stack.mean(0)
    pooled_se = float(torch.sqrt(stack.var(0).sum() / len(samples)))
    err = float(torch.linalg.norm(mean - ref))
    allowed = 4 * pooled_se + 4.0 / width * float(torch.linalg.norm(ref))
    assert err <= allowed, f"error {err:.4g} > allowed {allowed:.4g} (pooled SE {pooled_se:.3g})"


def _slope(widths, errors):
    return float(np.polyfit(np.log(widths), np.log(errors), 1)[0])


def test_ntk_error_falls_like_inverse_sqrt_width():
    x = _x(5, 6, 0)
    widths = [64, 128, 256, 512, 1024]

    def net(w):
        return L.serial(
            L.Dense(w, 1.5, 0.1), L.ReLU(), L.Dense(w, 1.5, 0.1), L.ReLU(), L.Dense(1, 1.5, 0.1)
        )

    ref = net(8).kernel(x).ntk  # the NTK-parameterized limit does not depend on widths
    rms = []
    for w in widths:
        errs = [_rel_err(k.ntk, ref) for k in _single_estimates(net(w), x, range(6), "ntk")]
        rms.append(float(np.sqrt(np.mean(np.square(errs)))))
    slope = _slope(widths, rms)
    assert -0.8 < slope < -0.3, (slope, rms)
    assert rms[-1] < 0.1


def test_nngp_error_falls_like_inverse_sqrt_width():
    x = _x(5, 6, 1)
    widths = [64, 128, 256, 512, 1024, 2048]

    def net(w):  # readout as wide as the hidden layers: f f^T / O averages over O outputs
        return L.serial(
            L.Dense(w, 1.3, 0.2), L.Erf(), L.Dense(w, 1.3, 0.2), L.GELU(), L.Dense(w, 1.0, 0.1)
        )

    ref = net(8).kernel(x, get="nngp").nngp
    rms = []
    for w in widths:
        errs = [_rel_err(k.nngp, ref) for k in _single_estimates(net(w), x, range(8), "nngp")]
        rms.append(float(np.sqrt(np.mean(np.square(errs)))))
    slope = _slope(widths, rms)
    assert -0.8 < slope < -0.3, (slope, rms)


ACTIVATIONS = [
    L.ReLU(),
    L.LeakyReLU(0.2),
    L.Abs(),
    L.Erf(1.2, 0.8, 0.1),
    L.GELU(),
    L.Sin(),
    L.Cos(),
    L.RBF(0.5),
    L.Exp(0.5, 0.5),
    L.Gaussian(),
    L.Monomial(2),
    L.RectifiedMonomial(2),
    L.Polynomial([0.2, 1.0, 0.4]),
    L.Hermite(2),
    L.Elementwise(torch.tanh, degree=40),
]


@pytest.mark.parametrize("act", ACTIVATIONS, ids=repr)
def test_every_activation_matches_random_networks(act):
    x = _x(4, 5, 2)
    width = 1024
    net = L.serial(L.Dense(width, 1.2, 0.1), act, L.Dense(1, 1.0, 0.1))
    k = net.kernel(x)
    samples = _single_estimates(net, x, range(12), ("nngp", "ntk"))
    _assert_within_standard_error([s.ntk for s in samples], k.ntk, width)
    wide = L.serial(L.Dense(width, 1.2, 0.1), act, L.Dense(width, 1.0, 0.1))
    nngp_samples = _single_estimates(wide, x, range(12), "nngp")
    _assert_within_standard_error([s.nngp for s in nngp_samples], k.nngp, width)


COMBINED = {
    "residual": lambda w: L.serial(
        L.Dense(w, 1.0, 0.1),
        L.FanOut(2),
        L.parallel(L.Identity(), L.serial(L.ReLU(), L.Dense(w, 1.4, 0.1))),
        L.FanInSum(),
        L.Erf(),
        L.Dense(1, 1.0, 0.1),
    ),
    "product": lambda w: L.serial(
        L.Dense(w, 1.0, 0.1),
        L.ReLU(),
        L.FanOut(2),
        L.parallel(L.Dense(w, 1.3), L.Dense(w, 0.9, 0.2)),
        L.FanInProd(),
        L.Dense(1, 1.0),
    ),
    "product_of_relu_branches": lambda w: L.serial(
        L.Dense(w, 1.0, 0.1),
        L.FanOut(2),
        L.parallel(L.serial(L.Dense(w, 1.3), L.ReLU()), L.serial(L.Dense(w, 0.9, 0.2), L.ReLU())),
        L.FanInProd(),
        L.Dense(1, 1.0),
    ),
    "concat": lambda w: L.serial(
        L.Dense(w, 1.0, 0.1),
        L.FanOut(3),
        L.parallel(L.ReLU(), L.serial(L.Erf(), L.Dense(w // 2, 1.1)), L.Dense(w // 4, 0.7, 0.3)),
        L.FanInConcat(),
        L.Dense(1, 1.2, 0.1),
    ),
    "standard": lambda w: L.serial(
        L.Dense(w, 1.3, 0.2, parameterization="standard"),
        L.ReLU(),
        L.Dense(w, 1.1, 0.1, parameterization="standard"),
        L.GELU(),
        L.Dense(1, 1.0, 0.3, parameterization="standard"),
    ),
}


@pytest.mark.parametrize("name", sorted(COMBINED))
def test_combinators_and_parameterizations_match_random_networks(name):
    width = 1024
    net = COMBINED[name](width)
    x = _x(4, 5, 3)
    k = net.kernel(x)
    samples = _single_estimates(net, x, range(12), ("nngp", "ntk"))
    _assert_within_standard_error([s.ntk for s in samples], k.ntk, width)
