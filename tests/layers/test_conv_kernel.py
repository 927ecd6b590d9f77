"""Fast conv/pool kernels against the slow joint-covariance reference (cnn_reference)."""

import pytest
import torch

import ntkit.layers as L
from tests.layers import cnn_reference as R
from tests.layers.cnn_reference import check_kernel as _check
from tests.layers.cnn_reference import random_input as _x

PADDINGS = ["valid", "same", "circular", 1]


@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("ksize", [3, 2, (2, 3)])
def test_conv_relu_conv_matches_reference(padding, stride, ksize):
    x1, x2 = _x((2, 2, 6, 5), 0), _x((3, 2, 6, 5), 1)
    net = L.serial(
        L.Conv(4, ksize, stride=stride, padding=padding, w_std=1.3, b_std=0.2),
        L.ReLU(),
        L.Conv(4, 2, padding=padding, w_std=0.9),
    )
    k = net.kernel(x1, x2)
    J = R.inputs(x1, x2)
    J = R.conv(J, 4, ksize, stride, padding, w_std=1.3, b_std=0.2)
    J = R.relu(J)
    J = R.conv(J, 4, 2, 1, padding, w_std=0.9)
    _check(k, J, 2)
    # the variances are the batch diagonal of the joint covariance
    ks = net.kernel(x1)
    Js = R.conv(
        R.relu(R.conv(R.inputs(x1), 4, ksize, stride, padding, w_std=1.3, b_std=0.2)),
        4,
        2,
        1,
        padding,
        w_std=0.9,
    )
    _check(ks, Js, 2)
    torch.testing.assert_close(ks.cov1, torch.diagonal(ks.nngp, dim1=0, dim2=1).movedim(-1, 0))


@pytest.mark.parametrize("padding", ["same", "circular", "valid"])
def test_flatten_readout_uses_diagonal_layout(padding):
    x1, x2 = _x((2, 3, 5, 5), 2), _x((2, 3, 5, 5), 3)
    body = L.serial(
        L.Conv(4, 3, padding=padding, b_std=0.1), L.Erf(), L.Conv(4, 3, padding=padding)
    )
    net = L.serial(body, L.ReLU(), L.Flatten(), L.Dense(1, w_std=1.1, b_std=0.3))
    k = net.kernel(x1, x2)
    J = R.inputs(x1, x2)
    J = R.conv(J, 4, 3, 1, padding, b_std=0.1)
    J = R.erf(J)
    J = R.conv(J, 4, 3, 1, padding)
    J = R.dense(R.flatten(R.relu(J)), 1, w_std=1.1, b_std=0.3)
    _check(k, J, 2)
    # the body alone, in diagonal layout, equals the location diagonal of the full one
    assert body.input_layout(True) is True


@pytest.mark.parametrize("param", ["ntk", "standard"])
@pytest.mark.parametrize("dims", [(7,), (4, 5), (3, 3, 4)])
def test_conv_1d_2d_3d_and_parameterizations(param, dims):
    x1 = _x((2, 2, *dims), 4)
    net = L.serial(
        L.Conv(3, 2, padding="same", b_std=0.5, parameterization=param),
        L.ReLU(),
        L.Conv(3, 3, padding="circular", parameterization=param, w_std=1.2),
        L.ReLU(),
        L.GlobalAvgPool(),
        L.Dense(1, b_std=0.1, parameterization=param),
    )
    k = net.kernel(x1)
    J = R.inputs(x1)
    J = R.relu(R.conv(J, 3, 2, 1, "same", b_std=0.5, param=param))
    J = R.relu(R.conv(J, 3, 3, 1, "circular", w_std=1.2, param=param))
    J = R.dense(R.global_pool(J), 1, b_std=0.1, param=param)
    _check(k, J, 2)


@pytest.mark.parametrize("average", [True, False])
@pytest.mark.parametrize(
    "kwargs",
    [
        dict(k=2),
        dict(k=3, stride=1, padding=1),
        dict(k=(2, 3), stride=(1, 2)),
        dict(k=3, stride=1, padding="circular"),
        dict(k=2, stride=2, padding="same"),
    ],
)
def test_window_pooling_matches_reference(average, kwargs):
    x1, x2 = _x((2, 2, 5, 6), 5), _x((1, 2, 5, 6), 6)
    kw = dict(kwargs)
    size = kw.pop("k")
    pool = (L.AvgPool if average else L.SumPool)(size, **kw)
    net = L.serial(
        L.Conv(3, 3, padding="same"), L.ReLU(), pool, L.Conv(2, 2), L.ReLU(), L.GlobalSumPool()
    )
    k = net.kernel(x1, x2)
    J = R.relu(R.conv(R.inputs(x1, x2), 3, 3, 1, "same"))
    J = R.avg_pool(J, size, kw.get("stride"), kw.get("padding", 0), average=average)
    J = R.global_pool(R.relu(R.conv(J, 2, 2)), average=False)
    _check(k, J, 2)


def test_pool_then_flatten_is_consistent():
    # AvgPool needs the full covariance even though Flatten only needs the diagonal after it
    x1 = _x((3, 1, 4, 4), 7)
    net = L.serial(L.Conv(3, 3, padding="same"), L.ReLU(), L.AvgPool(2), L.Flatten())
    k = net.kernel(x1)
    J = R.flatten(R.avg_pool(R.relu(R.conv(R.inputs(x1), 3, 3, 1, "same")), 2))
    _check(k, J, 3)
