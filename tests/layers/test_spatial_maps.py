"""ImageResize and Index: torch references, explicit joint-covariance reference, Monte Carlo."""

import pytest
import torch
import torch.nn.functional as F

import ntkit.layers as L
from ntkit.layers.spatial_maps import resize_matrix
from tests.layers import cnn_reference as R
from tests.layers.layer_checks import (
    assert_converges,
    assert_properties,
    assert_tiling_invariant,
    randn,
)


def _torch_matrix(n, s, mode):
    """The (s, n) matrix of torch's 1-D interpolation, read off by resizing the identity."""
    eye = torch.eye(n, dtype=torch.float64).reshape(n, 1, n)
    kwargs = {"align_corners": False} if mode == "linear" else {}
    return F.interpolate(eye, size=s, mode=mode, **kwargs).reshape(n, s).T.contiguous()


@pytest.mark.parametrize("n,s", [(5, 7), (5, 3), (4, 2), (7, 3), (3, 8)])
def test_resize_matrices_match_torch(n, s):
    """Half-pixel centres: torch's linear (align_corners=False, no antialias) and
    nearest-exact; with antialias only downsampling changes (upsampling is identical)."""
    torch.testing.assert_close(
        resize_matrix(n, s, "linear", antialias=False), _torch_matrix(n, s, "linear")
    )
    torch.testing.assert_close(resize_matrix(n, s, "nearest"), _torch_matrix(n, s, "nearest-exact"))
    if s >= n:
        torch.testing.assert_close(resize_matrix(n, s, "linear"), _torch_matrix(n, s, "linear"))


def test_antialiased_downsampling_by_hand():
    """4 -> 2: sample points 0.5 and 2.5, triangle of half-width 2: weights (3, 3, 1, 0)/7."""
    expected = torch.tensor([[3, 3, 1, 0], [0, 1, 3, 3]], dtype=torch.float64) / 7
    torch.testing.assert_close(resize_matrix(4, 2, "linear"), expected)


def _reference(x1, x2, mats, relu_first=True):
    """Conv 2x2 same -> ReLU -> fixed map P (kron of per-axis matrices) -> GAP, by loops."""
    J = R.inputs(x1, x2)
    J = R.relu(R.conv(J, 3, 2, padding="same", w_std=1.3, b_std=0.2))
    P = torch.kron(mats[0].contiguous(), mats[1].contiguous())
    J = R._linear(J, P, (mats[0].shape[0], mats[1].shape[0]))
    J = R.relu(R.conv(J, 3, 1, w_std=1.0))
    return R.global_pool(J)


@pytest.mark.parametrize(
    "layer,mats",
    [
        (L.ImageResize((7, 6)), [_torch_matrix(5, 7, "linear"), _torch_matrix(4, 6, "linear")]),
        (
            L.ImageResize((7, 3), "nearest"),
            [_torch_matrix(5, 7, "nearest-exact"), _torch_matrix(4, 3, "nearest-exact")],
        ),
        (
            L.Index(slice(None, None, -2), slice(1, 3)),
            [torch.eye(5, dtype=torch.float64)[[4, 2, 0]], torch.eye(4, dtype=torch.float64)[1:3]],
        ),
    ],
    ids=["linear-up", "nearest", "index"],
)
def test_matches_explicit_reference(layer, mats):
    x1, x2 = randn((3, 2, 5, 4), 0), randn((2, 2, 5, 4), 1)
    net = L.serial(
        L.Conv(3, 2, padding="same", w_std=1.3, b_std=0.2),
        L.ReLU(),
        layer,
        L.Conv(3, 1),
        L.ReLU(),
        L.GlobalAvgPool(),
    )
    got = net.kernel(x1, x2)
    J = _reference(x1, x2, mats)
    torch.testing.assert_close(got.nngp, R.cross_block(J, 3, "K"), rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(got.ntk, R.cross_block(J, 3, "T"), rtol=1e-12, atol=1e-13)


def test_index_picking_every_axis_gives_a_vector_kernel():
    x = randn((4, 2, 5, 4), 2)
    body = L.serial(L.Conv(3, 2, padding="same", b_std=0.1), L.ReLU())
    spatial = body.kernel(x)
    picked = L.serial(body, L.Index(3, -1)).kernel(x)
    assert picked.shape == (3,) and picked.nngp.shape == (4, 4)
    torch.testing.assert_close(picked.nngp, spatial.nngp[:, :, 3, 3, 3, 3])
    torch.testing.assert_close(picked.ntk, spatial.ntk[:, :, 3, 3, 3, 3])
    model = L.serial(body, L.Index(3, -1)).module((2, 5, 4), dtype=torch.float64)
    assert model(x).shape == (4, 3)


CASES = {
    "linear-up": (L.ImageResize((6, 5)), (2, 3, 4)),
    "linear-down-antialias": (L.ImageResize((2, 3)), (2, 5, 4)),
    "nearest-flatten": (L.ImageResize((5, 2), "nearest"), (2, 3, 4)),
    "index": (L.Index(slice(None, None, 2), 1), (2, 4, 3)),
}


@pytest.mark.montecarlo
@pytest.mark.parametrize("case", sorted(CASES))
def test_finite_networks_converge(case):
    layer, shape = CASES[case]
    pool = L.Flatten() if case in ("nearest-flatten", "index") else L.GlobalAvgPool()

    def build(c):
        return L.serial(
            L.Conv(c, 2, padding="same", w_std=1.3, b_std=0.2),
            L.ReLU(),
            layer,
            L.Conv(c, 2, padding="same"),
            L.ReLU(),
            pool,
        )

    assert_converges(build, randn((3, *shape), 3))


def test_properties_and_tiling():
    net = L.serial(
        L.Conv(3, 2, padding="same"),
        L.ReLU(),
        L.ImageResize((6, 2)),
        L.Conv(3, 2),
        L.ReLU(),
        L.Index(slice(1, None)),
        L.GlobalAvgPool(),
        L.Dense(1),
    )
    x1, x2 = randn((4, 2, 3, 4), 4), randn((3, 2, 3, 4), 5)
    assert_properties(net, x1, x2)
    assert_tiling_invariant(net, x1, x2)
    assert_tiling_invariant(net, x1)


def test_bad_input():
    x = randn((2, 1, 4, 4), 0)
    with pytest.raises(ValueError, match="size has 3 entries but the input has 2"):
        L.ImageResize((2, 2, 2)).kernel(x)
    with pytest.raises(ValueError, match="method must be one of"):
        L.ImageResize(3, "cubic")
    with pytest.raises(ValueError, match="positive integers"):
        L.ImageResize(0)
    with pytest.raises(ValueError, match="channels-first"):
        L.ImageResize(3).kernel(randn((2, 4), 0))
    with pytest.raises(ValueError, match="index 4 is out of range"):
        L.Index(4).kernel(x)
    with pytest.raises(ValueError, match="selects no location"):
        L.Index(slice(5, None)).kernel(x)
    with pytest.raises(ValueError, match="indexes 3 spatial axes"):
        L.Index(0, 0, 0).kernel(x)
    with pytest.raises(TypeError, match="slices or ints"):
        L.Index([0, 1])
