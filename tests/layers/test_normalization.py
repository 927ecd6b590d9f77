"""LayerNorm kernels against the slow joint-covariance reference (cnn_reference)."""

import ntkit.layers as L
from tests.layers import cnn_reference as R
from tests.layers.cnn_reference import check_kernel as _check
from tests.layers.cnn_reference import random_input as _x


def test_layernorm_matches_reference():
    x1, x2 = _x((2, 3, 4, 4), 8), _x((2, 3, 4, 4), 9)
    net = L.serial(
        L.Conv(4, 3, padding="same", b_std=0.3),
        L.LayerNorm(eps=1e-3),
        L.ReLU(),
        L.Conv(4, 2),
        L.LayerNorm(),
        L.GlobalAvgPool(),
    )
    k = net.kernel(x1, x2)
    J = R.layer_norm(R.conv(R.inputs(x1, x2), 4, 3, 1, "same", b_std=0.3), eps=1e-3)
    J = R.layer_norm(R.conv(R.relu(J), 4, 2))
    _check(k, R.global_pool(J), 2)


def test_layernorm_on_vectors():
    x1 = _x((4, 6), 10)
    net = L.serial(L.Dense(5, b_std=0.2), L.LayerNorm(), L.Erf(), L.Dense(1))
    k = net.kernel(x1)
    J = R.inputs(x1)
    J = R.dense(R.erf(R.layer_norm(R.dense(J, 5, b_std=0.2))), 1)
    _check(k, J, 4)


def test_layernorm_in_diagonal_layout():
    x1, x2 = _x((2, 2, 4, 5), 18), _x((3, 2, 4, 5), 19)
    net = L.serial(
        L.Conv(4, 3, padding="same", b_std=0.4), L.LayerNorm(eps=0.01), L.ReLU(), L.Flatten()
    )
    k = net.kernel(x1, x2)
    J = R.flatten(R.relu(R.layer_norm(R.conv(R.inputs(x1, x2), 4, 3, 1, "same", b_std=0.4), 0.01)))
    _check(k, J, 2)
