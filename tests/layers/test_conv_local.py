"""ConvLocal: explicit-loop reference, Conv equivalence under Flatten, Monte Carlo, errors."""

import math

import pytest
import torch

import ntkit.layers as L
from tests.layers import cnn_reference as R
from tests.layers.layer_checks import (
    assert_converges,
    assert_properties,
    assert_tiling_invariant,
    randn,
)


def _ref_local(J, out, k, stride, padding, w_std, b_std, param):
    """Shared-weight conv reference, then independent weights per location: the covariance
    between different output locations is zero (bias included)."""
    J = R.conv(J, out, k, stride, padding, w_std, b_std, param)
    S = math.prod(J.spatial)
    keep = torch.kron(torch.ones(J.n, J.n, dtype=torch.float64), torch.eye(S, dtype=torch.float64))
    return R.Joint(J.K * keep, J.T * keep, J.n, J.spatial, J.channels, J.same)


@pytest.mark.parametrize("padding", ["valid", "same", "circular"])
@pytest.mark.parametrize("param", ["ntk", "standard"])
def test_matches_explicit_reference_with_global_pooling(padding, param):
    x1, x2 = randn((3, 2, 4, 5), 0), randn((2, 2, 4, 5), 1)
    net = L.serial(
        L.ConvLocal(3, 3, padding=padding, w_std=1.3, b_std=0.2, parameterization=param),
        L.ReLU(),
        L.ConvLocal(3, (2, 1), padding=padding, w_std=0.9, b_std=0.1, parameterization=param),
        L.GlobalAvgPool(),
    )
    got = net.kernel(x1, x2)
    J = R.inputs(x1, x2)
    J = R.relu(_ref_local(J, 3, 3, 1, padding, 1.3, 0.2, param))
    J = R.global_pool(_ref_local(J, 3, (2, 1), 1, padding, 0.9, 0.1, param))
    torch.testing.assert_close(got.nngp, R.cross_block(J, 3, "K"), rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(got.ntk, R.cross_block(J, 3, "T"), rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("param", ["ntk", "standard"])
def test_flatten_readout_equals_conv_and_pooling_does_not(param):
    x = randn((4, 2, 5, 5), 2)

    def net(layer, pool):
        return L.serial(
            layer(4, 3, padding="same", b_std=0.3, parameterization=param),
            L.ReLU(),
            layer(4, 2, stride=2, parameterization=param),
            L.Erf(),
            pool,
            L.Dense(1, parameterization=param),
        )

    local, conv = net(L.ConvLocal, L.Flatten()).kernel(x), net(L.Conv, L.Flatten()).kernel(x)
    torch.testing.assert_close(local.nngp, conv.nngp, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(local.ntk, conv.ntk, rtol=1e-12, atol=1e-14)
    pooled = net(L.ConvLocal, L.GlobalAvgPool()).kernel(x).nngp
    assert float((pooled - net(L.Conv, L.GlobalAvgPool()).kernel(x).nngp).abs().max()) > 1e-3


CASES = {
    "same-gap": (
        lambda c: L.serial(
            L.ConvLocal(c, 3, padding="same", b_std=0.2),
            L.ReLU(),
            L.ConvLocal(c, 2),
            L.ReLU(),
            L.GlobalAvgPool(),
        ),
        (2, 3, 3),
    ),
    "strided-flatten-1d": (
        lambda c: L.serial(L.ConvLocal(c, 3, stride=2), L.Erf(), L.Flatten()),
        (2, 7),
    ),
    "circular-standard": (
        lambda c: L.serial(
            L.ConvLocal(c, 2, padding="circular", b_std=0.5, parameterization="standard"),
            L.ReLU(),
            L.GlobalAvgPool(),
        ),
        (2, 3, 3),
    ),
}


@pytest.mark.montecarlo
@pytest.mark.parametrize("case", sorted(CASES))
def test_finite_networks_converge(case):
    build, shape = CASES[case]
    assert_converges(build, randn((3, *shape), 3))


def test_finite_module_is_a_convolution_with_per_location_weights():
    """With every location's weights set to the same filter it computes Conv's output."""
    x = randn((2, 3, 5, 4), 4)
    conv = L.Conv(4, (3, 2), stride=(1, 2), padding="same", b_std=0.5).module((3, 5, 4), seed=0)
    local = L.ConvLocal(4, (3, 2), stride=(1, 2), padding="same", b_std=0.5).module((3, 5, 4))
    conv, local = conv.double(), local.double()
    with torch.no_grad():
        local.weight.copy_(conv.weight[..., None, None].expand_as(local.weight))
        local.bias.copy_(conv.bias[:, None, None].expand_as(local.bias))
    torch.testing.assert_close(local(x), conv(x))


def test_properties_and_tiling():
    net = L.serial(
        L.ConvLocal(4, 3, padding="same", b_std=0.1),
        L.ReLU(),
        L.ConvLocal(4, 2, stride=2),
        L.ReLU(),
        L.GlobalAvgPool(),
        L.Dense(1),
    )
    x1, x2 = randn((4, 2, 4, 4), 5), randn((3, 2, 4, 4), 6)
    assert_properties(net, x1, x2)
    assert_tiling_invariant(net, x1, x2)
    assert_tiling_invariant(net, x1)


def test_bad_input():
    with pytest.raises(ValueError, match="kernel_size 5 is larger than the input length 4"):
        L.ConvLocal(3, 5).kernel(randn((2, 1, 4, 4), 0))
    with pytest.raises(ValueError, match="channels-first"):
        L.ConvLocal(3, 2).kernel(randn((2, 4), 0))
    with pytest.raises(ValueError, match="out_channels"):
        L.ConvLocal(-1, 2)
    with pytest.raises(ValueError, match="padding"):
        L.ConvLocal(3, 2, padding="reflect")


def test_3d_matches_reference_and_finite_shape():
    x1, x2 = randn((2, 1, 3, 2, 3), 7), randn((1, 1, 3, 2, 3), 8)
    net = L.serial(L.ConvLocal(2, 2, padding="same", b_std=0.3), L.ReLU(), L.GlobalSumPool())
    got = net.kernel(x1, x2)
    J = R.relu(_ref_local(R.inputs(x1, x2), 2, 2, 1, "same", 1.0, 0.3, "ntk"))
    J = R.global_pool(J, average=False)
    torch.testing.assert_close(got.nngp, R.cross_block(J, 2, "K"), rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(got.ntk, R.cross_block(J, 2, "T"), rtol=1e-12, atol=1e-13)
    assert net.module((1, 3, 2, 3))(x1.float()).shape == (2, 2)
