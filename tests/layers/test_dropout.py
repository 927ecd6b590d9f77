"""Dropout kernels against the slow joint-covariance reference (cnn_reference)."""

import pytest

import ntkit.layers as L
from tests.layers import cnn_reference as R
from tests.layers.cnn_reference import check_kernel as _check
from tests.layers.cnn_reference import random_input as _x


@pytest.mark.parametrize("explicit_x2", [False, True])
def test_dropout_matches_reference(explicit_x2):
    x1 = _x((3, 2, 4, 4), 14)
    x2 = _x((2, 2, 4, 4), 15) if explicit_x2 else None
    net = L.serial(
        L.Conv(4, 3, padding="same"),
        L.ReLU(),
        L.Dropout(0.3),
        L.Conv(4, 2),
        L.ReLU(),
        L.GlobalAvgPool(),
    )
    k = net.kernel(x1, x2)
    J = R.inputs(x1, x2)
    J = R.dropout(R.relu(R.conv(J, 4, 3, 1, "same")), 0.3)
    J = R.global_pool(R.relu(R.conv(J, 4, 2)))
    _check(k, J, 3)


def test_dropout_flatten_diagonal_layout():
    x1 = _x((3, 2, 4, 4), 16)
    net = L.serial(L.Conv(4, 3, padding="same"), L.ReLU(), L.Dropout(0.5), L.Flatten(), L.Dense(1))
    k = net.kernel(x1)
    J = R.dense(R.flatten(R.dropout(R.relu(R.conv(R.inputs(x1), 4, 3, 1, "same")), 0.5)), 1)
    _check(k, J, 3)


def test_dropout_and_layernorm_on_vectors():
    x1 = _x((4, 6), 17)
    net = L.serial(L.Dense(5, b_std=0.2), L.LayerNorm(), L.ReLU(), L.Dropout(0.25), L.Dense(1))
    k = net.kernel(x1)
    J = R.inputs(x1)
    J = R.dense(R.dropout(R.relu(R.layer_norm(R.dense(J, 5, b_std=0.2))), 0.25), 1)
    _check(k, J, 4)
