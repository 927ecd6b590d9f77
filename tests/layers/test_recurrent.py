"""Recurrent (Elman RNN, weights shared in time): unrolled reference, Monte Carlo, errors."""

import pytest
import torch

import ntkit.layers as L
from tests.layers.layer_checks import assert_converges, assert_tiling_invariant, randn


def _unrolled(steps, hidden, act, w_std, u_std, b_std, param):
    """The same recursion with fresh weights per step, from Index, Dense and fan-in layers:
    g_t = W_t phi(g_(t-1)) + U_t x_t + b_t. The infinite-width limit does not depend on
    whether the weights are shared in time (Alemohammad et al. 2021)."""

    def inject(t):
        return L.serial(L.Index(t), L.Dense(hidden, u_std, b_std, parameterization=param))

    g = inject(0)
    for t in range(1, steps):
        recur = L.serial(g, act, L.Dense(hidden, w_std, parameterization=param))
        g = L.serial(L.FanOut(2), L.parallel(recur, inject(t)), L.FanInSum())
    return L.serial(g, act)


@pytest.mark.parametrize("param", ["ntk", "standard"])
@pytest.mark.parametrize("act", [L.ReLU(), L.Erf(), L.Gabor()], ids=repr)
def test_matches_the_unrolled_network(param, act):
    x1, x2 = randn((3, 2, 4), 0), randn((2, 2, 4), 1)
    kw = dict(w_std=1.1, u_std=1.3, b_std=0.2)
    rnn = L.serial(
        L.Recurrent(5, act, parameterization=param, **kw), L.Dense(1, parameterization=param)
    )
    ref = L.serial(_unrolled(4, 5, act, param=param, **kw), L.Dense(1, parameterization=param))
    for a, b in ((x1, x2), (x1, None)):
        got, want = rnn.kernel(a, b), ref.kernel(a, b)
        torch.testing.assert_close(got.nngp, want.nngp, rtol=1e-12, atol=1e-13)
        torch.testing.assert_close(got.ntk, want.ntk, rtol=1e-12, atol=1e-13)


def test_after_a_convolution_over_time():
    """Only same-step input covariances enter; a Conv over time before it works too."""
    x = randn((3, 2, 6), 2)
    net = L.serial(L.Conv(4, 3, padding="same"), L.Recurrent(5, L.Erf(), b_std=0.1), L.Dense(1))
    ref = L.serial(
        L.Conv(4, 3, padding="same"), _unrolled(6, 5, L.Erf(), 1.0, 1.0, 0.1, "ntk"), L.Dense(1)
    )
    torch.testing.assert_close(net.kernel(x).ntk, ref.kernel(x).ntk, rtol=1e-12, atol=1e-13)


@pytest.mark.montecarlo
@pytest.mark.parametrize("param", ["ntk", "standard"])
@pytest.mark.parametrize("act", [L.ReLU(), L.Erf()], ids=repr)
def test_finite_rnns_converge(param, act):
    """Errors at widths 16 and 256 (measured ratios ~0.15-0.3; width^-1/2 predicts 0.25).

    Five ReLU steps fluctuate more than one layer: measured 0.15-0.21 at width 256, so the
    absolute bound is 0.25 (the ratio test carries the width^-1/2 claim)."""

    def build(c):
        return L.Recurrent(c, act, w_std=1.1, u_std=1.3, b_std=0.2, parameterization=param)

    assert_converges(build, randn((4, 3, 5), 0), bound=0.25)


def test_finite_module_is_an_elman_rnn():
    """Same numbers as torch.nn.RNN (tanh-free: relu) with the NTK scales folded in."""
    layer = L.Recurrent(6, L.ReLU(), w_std=1.2, u_std=0.8, b_std=0.5, parameterization="standard")
    mod = layer.module((3, 5), seed=1, dtype=torch.float64)
    rnn = torch.nn.RNN(3, 6, nonlinearity="relu", batch_first=True, dtype=torch.float64)
    with torch.no_grad():
        rnn.weight_ih_l0.copy_(mod.weight_ih)
        rnn.weight_hh_l0.copy_(mod.weight_hh)
        rnn.bias_ih_l0.copy_(mod.bias)
        rnn.bias_hh_l0.zero_()
    x = randn((2, 3, 5), 3)
    _, h = rnn(x.transpose(1, 2))
    torch.testing.assert_close(mod(x), h[0])


def test_tiling():
    net = L.serial(L.Recurrent(4, L.ReLU(), b_std=0.1), L.Dense(1))
    x1, x2 = randn((6, 2, 7), 4), randn((5, 2, 7), 5)
    assert_tiling_invariant(net, x1, x2)
    assert_tiling_invariant(net, x1)


def test_bad_input():
    with pytest.raises(ValueError, match=r"expects sequences \(n, C, T\)"):
        L.Recurrent(4).kernel(randn((3, 5), 0))
    with pytest.raises(ValueError, match=r"expects sequences \(n, C, T\)"):
        L.Recurrent(4).kernel(randn((3, 2, 4, 4), 0))
    with pytest.raises(TypeError, match="ntkit activation layer"):
        L.Recurrent(4, torch.relu)
    with pytest.raises(ValueError, match="hidden"):
        L.Recurrent(0)
    with pytest.raises(ValueError, match="u_std"):
        L.Recurrent(3, u_std=-1.0)
