"""GlobalSelfAttention kernels against the slow joint-covariance reference (cnn_reference)."""

import pytest

import ntkit.layers as L
from tests.layers import cnn_reference as R
from tests.layers.cnn_reference import check_kernel as _check
from tests.layers.cnn_reference import random_input as _x


@pytest.mark.parametrize("mechanism", ["softmax", "identity", "relu", "abs"])
def test_attention_matches_reference(mechanism):
    x1, x2 = _x((2, 3, 3, 4), 11), _x((3, 3, 3, 4), 12)
    net = L.serial(
        L.Conv(4, 2, padding="same"),
        L.GlobalSelfAttention(5, qk_std=0.7, ov_std=1.2, b_std=0.1, mechanism=mechanism),
        L.ReLU(),
        L.GlobalAvgPool(),
    )
    k = net.kernel(x1, x2)
    J = R.conv(R.inputs(x1, x2), 4, 2, 1, "same")
    J = R.attention(J, 5, qk_std=0.7, ov_std=1.2, b_std=0.1, mechanism=mechanism)
    _check(k, R.global_pool(R.relu(J)), 2)


def test_attention_on_sequences_full_output():
    x1 = _x((3, 4, 6), 13)
    net = L.serial(L.Conv(4, 3, padding="circular"), L.GlobalSelfAttention(4), L.Erf())
    k = net.kernel(x1)
    J = R.erf(R.attention(R.conv(R.inputs(x1), 4, 3, 1, "circular"), 4))
    _check(k, J, 3)
