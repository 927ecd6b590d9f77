"""kernel_matrix over tiles equals one untiled call: layers, empirical NTKs, any function."""

import pytest
import torch

import ntkit
from ntkit import layers as L
from ntkit.tiling import kernel_matrix
from tests.tiling.kernels import inputs, rbf

TOL = {"rtol": 1e-12, "atol": 1e-12}


def _close(a, b):
    torch.testing.assert_close(a, b, **TOL)


def _cnn():
    return L.serial(L.Conv(4, 3, padding="same"), L.ReLU(), L.AvgPool(2), L.Conv(3, 2), L.Erf())


def _mlp():
    return L.serial(L.Dense(16, b_std=0.1), L.ReLU(), L.Dropout(0.8), L.Dense(8), L.GELU())


@pytest.mark.parametrize("tile", [2, 7, (3, 5)])
@pytest.mark.parametrize("case", ["symmetric", "explicit", "same_tensor"])
def test_layer_tiles_equal_one_call(tile, case):
    """MLP with Dropout (acts on self-pairs only): ragged tiles, every x2 convention."""
    net = L.serial(_mlp(), L.Dense(1))
    x = inputs(19, 5, seed=1)
    args = {"symmetric": (x,), "explicit": (x, inputs(11, 5, seed=2)), "same_tensor": (x, x)}[case]
    if case != "explicit" and isinstance(tile, tuple):
        with pytest.raises(ValueError, match="square"):
            kernel_matrix(net, *args, tile=tile, progress=False)
        return
    want = net.kernel(*args)
    got = kernel_matrix(net.kernel, *args, tile=tile, progress=False)
    for field in ("nngp", "ntk", "cov1", "cov2"):
        a, b = getattr(got, field), getattr(want, field)
        assert (a is None) == (b is None), field
        if a is not None:
            _close(a, b)
    assert got.x1_is_x2 == want.x1_is_x2 and got.shape == want.shape
    if case != "explicit":
        assert torch.equal(got.ntk, got.ntk.T)  # mirrored, exactly symmetric


@pytest.mark.parametrize("flatten", [True, False])
def test_cnn_tiles_equal_one_call(flatten):
    """A CNN with pooling; without a readout the result keeps its spatial axis pairs."""
    net = L.serial(_cnn(), L.Flatten(), L.Dense(1)) if flatten else _cnn()
    g = torch.Generator().manual_seed(3)
    x = torch.randn(9, 2, 6, 6, generator=g, dtype=torch.float64)
    x2 = torch.randn(5, 2, 6, 6, generator=g, dtype=torch.float64)
    for args in ((x,), (x, x2)):
        want = net.kernel(*args)
        got = kernel_matrix(net, *args, tile=4, progress=False)
        _close(got.nngp, want.nngp)
        _close(got.ntk, want.ntk)
        _close(got.cov1, want.cov1)


def test_get_nngp_and_float32():
    net = L.serial(_mlp(), L.Dense(1))
    x = inputs(13, 5)
    got = kernel_matrix(net, x, get="nngp", tile=5, progress=False)
    assert got.ntk is None
    _close(got.nngp, net.kernel(x, get="nngp").nngp)
    got32 = kernel_matrix(net, x, dtype=torch.float32, tile=5, progress=False)
    want32 = net.kernel(x, dtype=torch.float32)
    assert got32.ntk.dtype == torch.float32
    torch.testing.assert_close(got32.ntk, want32.ntk, rtol=1e-6, atol=1e-6)


def test_tile_none_uses_the_memory_model():
    net = L.serial(_mlp(), L.Dense(1))
    x = inputs(30, 5)
    # a budget that forces several tiles: the result must still match
    got = kernel_matrix(net, x, progress=False, max_memory=200_000)
    _close(got.ntk, net.kernel(x).ntk)


@pytest.mark.parametrize("mode", ["trace", "full"])
@pytest.mark.parametrize("symmetric", [True, False])
def test_empirical_ntk_tiles_equal_one_call(mode, symmetric):
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(4, 12), torch.nn.Tanh(), torch.nn.Linear(12, 3)
    ).double()
    x = inputs(11, 4, seed=5)
    x2 = None if symmetric else inputs(7, 4, seed=6)

    def fn(a, b):
        return ntkit.empirical_ntk(model, a, b, mode=mode)

    want = ntkit.empirical_ntk(model, x, x2, mode=mode)
    got = kernel_matrix(fn, x, x2, tile=4, progress=False)
    assert got.shape == want.shape
    _close(got, want)


def test_any_function_against_closed_form():
    x, x2 = inputs(23, 3, seed=7), inputs(10, 3, seed=8)
    _close(kernel_matrix(rbf, x, tile=6, progress=False), rbf(x, x))
    _close(kernel_matrix(rbf, x, x2, tile=(4, 3), progress=False), rbf(x, x2))
    # numpy inputs are accepted
    _close(kernel_matrix(rbf, x.numpy(), tile=6, progress=False), rbf(x, x))


def test_progress_bar_reports_tiles(capsys):
    x = inputs(10, 3)
    kernel_matrix(rbf, x, tile=5, progress=True)
    err = capsys.readouterr()
    assert "3/3" in err.out + err.err  # 3 tiles of the upper triangle


@pytest.mark.parametrize("tile", [0, -2, 1.5, (0, 3), (2, 3, 4), True])
def test_bad_tile(tile):
    with pytest.raises(ValueError, match="tile must be"):
        kernel_matrix(rbf, inputs(5, 3), inputs(4, 3), tile=tile, progress=False)


def test_bad_functions_and_inputs():
    x = inputs(6, 3)
    with pytest.raises(ValueError, match="expected"):
        kernel_matrix(lambda a, b: rbf(a, b)[:, :1], x, tile=3, progress=False)
    with pytest.raises(ValueError, match="non-finite"):
        kernel_matrix(lambda a, b: rbf(a, b) / 0 * 0, x, tile=3, progress=False)
    with pytest.raises(TypeError, match="fn must be"):
        kernel_matrix(42, x, progress=False)
    with pytest.raises(ValueError, match="per-sample shape"):
        kernel_matrix(rbf, x, inputs(6, 4), progress=False)
    with pytest.raises(ValueError, match="max_memory"):
        kernel_matrix(rbf, inputs(100, 3), progress=False, max_memory=1000)


def test_inputs_that_are_not_tiled_yet_are_refused():
    net = L.serial(L.Dense(4), L.ReLU(), L.Dense(1))
    x = inputs(6, 3).requires_grad_(True)
    with pytest.raises(ValueError, match="without gradients"):
        kernel_matrix(net, x, progress=False)
    with torch.no_grad():
        got = kernel_matrix(net, x, tile=4, progress=False)
    _close(got.ntk, net.kernel(x.detach()).ntk)
    masked = L.Masked(torch.randn(5, 2, 6), torch.ones(5, 6, dtype=torch.bool))
    conv = L.serial(L.Conv(3, 3, padding="same"), L.ReLU(), L.GlobalAvgPool(), L.Dense(1))
    with pytest.raises(TypeError, match="Masked"):
        kernel_matrix(conv, masked, progress=False)


def test_kernel_valued_functions():
    """fn returning an ntkit.Kernel: NNGP and NTK tiled together, or the NNGP alone."""
    net = L.serial(_mlp(), L.Dense(1))
    x, x2 = inputs(15, 5, seed=3), inputs(8, 5, seed=4)

    def fn(a, b):
        return net.kernel(a, b)

    for args in ((x,), (x, x2)):
        want = net.kernel(*args)
        got = kernel_matrix(fn, *args, tile=4, progress=False)
        _close(got.nngp, want.nngp)
        _close(got.ntk, want.ntk)
        _close(got.cov1, want.cov1)
    only = kernel_matrix(fn, x, get="nngp", tile=4, progress=False)
    assert only.ntk is None
    _close(only.nngp, net.kernel(x).nngp)


def test_input_scale_is_checked_as_net_kernel_does():
    """Overflowing or subnormal inputs are refused once, on the whole batches, as untiled."""
    net = L.serial(L.Dense(4), L.ReLU(), L.Dense(1))
    x = inputs(8, 3)
    with pytest.raises(ValueError, match="overflow"):
        kernel_matrix(net, x * 1e160, tile=4, progress=False)
    mixed = torch.cat([inputs(4, 3, seed=1), inputs(4, 3) * 1e-160])  # tiny rows 4-7
    for run in (lambda: net.kernel(mixed), lambda: kernel_matrix(net, mixed, tile=4)):
        with pytest.raises(ValueError, match=r"x1\[[4-7]\].*subnormal"):
            run()
