"""ConvTranspose: explicit-loop reference, Monte Carlo, torch mapping, properties, errors."""

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

import ntkit.layers as L
from tests.layers import cnn_reference as R
from tests.layers.layer_checks import (
    assert_converges,
    assert_properties,
    assert_tiling_invariant,
    randn,
)


def _tf_geometry(n, k, s, padding):
    """TF/JAX conv_transpose: (lo, hi) padding of the dilated input and the output length."""
    if padding == "same":
        lo = k - 1 if s > k - 1 else math.ceil((k + s - 2) / 2)
        hi = k + s - 2 - lo
    else:
        lo, hi = k - 1, k + s - 2 + max(k - s, 0) - (k - 1)
    return lo, hi, (n - 1) * s + 1 + lo + hi - k + 1


def _transpose_taps(spatial, ks, strides, padding):
    """One (S_out, S_in) 0/1 matrix per tap, by loops: output o reads input i when
    o + a - lo == i * s; circular folds the valid output onto n * s locations."""
    geo = [_tf_geometry(n, k, s, padding) for n, k, s in zip(spatial, ks, strides)]
    outs = [g[2] for g in geo]
    finals = [n * s if padding == "circular" else g[2] for n, s, g in zip(spatial, strides, geo)]
    mats = []
    for tap in itertools.product(*[range(k) for k in ks]):
        P = torch.zeros(math.prod(finals), math.prod(spatial), dtype=torch.float64)
        for o in itertools.product(*[range(m) for m in outs]):
            src, dst = [], []
            for ax, (n, s) in enumerate(zip(spatial, strides)):
                j = o[ax] + tap[ax] - geo[ax][0]
                if j % s or not 0 <= j // s < n:
                    break
                src.append(j // s)
                shift = (outs[ax] - finals[ax]) // 2
                dst.append((o[ax] - shift) % finals[ax])
            else:
                P[
                    sum(d * math.prod(finals[a + 1 :]) for a, d in enumerate(dst)),
                    sum(i * math.prod(spatial[a + 1 :]) for a, i in enumerate(src)),
                ] += 1.0
        mats.append(P)
    return mats, tuple(finals)


def _ref_conv_t(J, k, s, padding, w_std, b_std, param):
    nd = len(J.spatial)
    ks, st = (k,) * nd, (s,) * nd
    mats, outs = _transpose_taps(J.spatial, ks, st, padding)
    # circular folding makes the map a sum of taps per tap position: covariance of
    # y = sum_a P_a x_a with independent x_a is sum_a P_a K P_a^T
    lift = [R._lift(P, J.n) for P in mats]
    SK = sum(M @ J.K @ M.T for M in lift)
    ST = sum(M @ J.T @ M.T for M in lift)
    b2 = 0.0 if b_std is None else b_std**2
    K = w_std**2 / len(mats) * SK + b2
    if param == "ntk":
        T = K + w_std**2 / len(mats) * ST
    else:
        T = J.channels * SK + w_std**2 / len(mats) * ST + (0.0 if b_std is None else 1.0)
    return R.Joint(K, T, J.n, outs, 3, J.same)


@pytest.mark.parametrize("padding", ["valid", "same", "circular"])
@pytest.mark.parametrize("k,s", [(3, 2), (2, 3), (4, 2), (3, 1)])
@pytest.mark.parametrize("param", ["ntk", "standard"])
def test_matches_explicit_loop_reference(padding, k, s, param):
    x1, x2 = randn((3, 2, 4), 0), randn((2, 2, 4), 1)
    net = L.serial(
        L.ConvTranspose(
            3, k, stride=s, padding=padding, w_std=1.3, b_std=0.2, parameterization=param
        ),
        L.ReLU(),
        L.ConvTranspose(3, k, stride=s, padding=padding, w_std=0.9, parameterization=param),
    )
    got = net.kernel(x1, x2)
    J = R.inputs(x1, x2)
    J = _ref_conv_t(J, k, s, padding, 1.3, 0.2, param)
    J = R.relu(J)
    J = _ref_conv_t(J, k, s, padding, 0.9, None, param)
    torch.testing.assert_close(got.nngp, R.cross_block(J, 3, "K"), rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(got.ntk, R.cross_block(J, 3, "T"), rtol=1e-12, atol=1e-13)


def test_2d_matches_reference_and_flatten_uses_the_diagonal_layout():
    x1 = randn((3, 2, 3, 2), 2)
    J = R.inputs(x1)
    J = R.relu(_ref_conv_t(J, 3, 2, "same", 1.0, 0.1, "ntk"))
    J = R.flatten(J)
    net = L.serial(
        L.ConvTranspose(3, 3, stride=2, padding="same", b_std=0.1), L.ReLU(), L.Flatten()
    )
    got = net.kernel(x1)
    torch.testing.assert_close(got.nngp, J.K, rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(got.ntk, J.T, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("k,s", [(3, 2), (2, 3), (4, 2), (1, 2)])
def test_finite_valid_and_same_match_torch_conv_transpose(k, s):
    """The docstring's map to torch.nn.ConvTranspose1d: valid = padding 0 and
    output_padding max(s - k, 0); same = padding k - 1 - lo, output_padding hi - lo."""
    x = randn((2, 3, 5), 3)
    for padding in ("valid", "same"):
        layer = L.ConvTranspose(4, k, stride=s, padding=padding, b_std=0.5)
        mod = layer.module((3, 5), seed=1, dtype=torch.float64)
        lo, hi, out = _tf_geometry(5, k, s, padding)
        if hi < lo:
            continue
        ref = F.conv_transpose1d(
            x, mod.weight, stride=s, padding=k - 1 - lo, output_padding=hi - lo
        ) * (1.0 / math.sqrt(3 * k)) + 0.5 * mod.bias.view(1, -1, 1)
        y = mod(x)
        assert y.shape == (2, 4, out) == (2, *layer.out_shape((3, 5)))
        torch.testing.assert_close(y, ref)


CASES = {
    "same-s2": (
        lambda c: L.serial(
            L.ConvTranspose(c, 3, stride=2, padding="same", b_std=0.2),
            L.ReLU(),
            L.ConvTranspose(c, 2, stride=1),
            L.ReLU(),
            L.GlobalAvgPool(),
        ),
        (2, 3, 3),
    ),
    "valid-1d": (
        lambda c: L.serial(L.ConvTranspose(c, 2, stride=3, padding="valid"), L.Erf(), L.Flatten()),
        (2, 4),
    ),
    "circular": (
        lambda c: L.serial(
            L.ConvTranspose(c, 4, stride=2, padding="circular", w_std=1.2),
            L.ReLU(),
            L.GlobalAvgPool(),
        ),
        (2, 3, 2),
    ),
    "standard": (
        lambda c: L.serial(
            L.ConvTranspose(c, 3, stride=2, padding="same", b_std=0.3, parameterization="standard"),
            L.ReLU(),
            L.ConvTranspose(c, 3, parameterization="standard"),
            L.GlobalAvgPool(),
        ),
        (2, 3, 3),
    ),
}


@pytest.mark.montecarlo
@pytest.mark.parametrize("case", sorted(CASES))
def test_finite_networks_converge(case):
    build, shape = CASES[case]
    assert_converges(build, randn((3, *shape), 4))


def test_properties_and_tiling():
    net = L.serial(
        L.ConvTranspose(4, 3, stride=2, padding="circular", b_std=0.1),
        L.ReLU(),
        L.Conv(4, 3, padding="same"),
        L.ReLU(),
        L.GlobalAvgPool(),
        L.Dense(1),
    )
    x1, x2 = randn((4, 2, 3, 3), 5), randn((3, 2, 3, 3), 6)
    assert_properties(net, x1, x2)
    assert_tiling_invariant(net, x1, x2)
    assert_tiling_invariant(net, x1)


def test_bad_input():
    with pytest.raises(ValueError, match="padding must be one of"):
        L.ConvTranspose(4, 3, padding=1)
    with pytest.raises(ValueError, match="out_channels"):
        L.ConvTranspose(0, 3)
    with pytest.raises(ValueError, match="kernel_size"):
        L.ConvTranspose(4, 0)
    with pytest.raises(ValueError, match="channels-first"):
        L.ConvTranspose(4, 3).kernel(randn((3, 5), 0))
    with pytest.raises(ValueError, match="kernel_size has 1 entries but the input has 2"):
        L.ConvTranspose(4, (3,)).kernel(randn((3, 2, 4, 4), 0))


def test_3d_matches_reference_and_finite_shape():
    x1, x2 = randn((2, 1, 2, 2, 2), 7), randn((1, 1, 2, 2, 2), 8)
    net = L.serial(L.ConvTranspose(2, 2, stride=2, padding="valid", b_std=0.3), L.ReLU())
    got = net.kernel(x1, x2)
    J = R.relu(_ref_conv_t(R.inputs(x1, x2), 2, 2, "valid", 1.0, 0.3, "ntk"))
    torch.testing.assert_close(got.nngp, R.cross_block(J, 2, "K"), rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(got.ntk, R.cross_block(J, 2, "T"), rtol=1e-12, atol=1e-13)
    assert net.module((1, 2, 2, 2))(x1.float()).shape == (2, 2, 4, 4, 4)
