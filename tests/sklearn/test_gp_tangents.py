"""The one-pass kernel-and-derivatives path of fully connected specs (``_tangents``).

References: the layers' own kernel (``net.kernel``, generic tiled path), torch forward-mode
autograd through the layers' differentiable path, and central differences of the generic
kernel in ``log(theta)``.
"""

import math

import numpy as np
import pytest
import torch

from ntkit import layers as L
from ntkit.sklearn import NNGPKernel, NTKKernel, _tangents
from ntkit.sklearn._specs import mlp

KERNELS = [(NTKKernel, "ntk"), (NNGPKernel, "nngp")]


def _data(n, d, seed=0):
    return np.random.default_rng(seed).normal(size=(n, d))


def _generic(k, x, kind, z=None):
    """The layers' own tiled kernel of the spec the GP kernel stands for."""
    net = k._net()
    get = ("nngp", "ntk") if kind == "ntk" else "nngp"
    z = None if z is None else torch.from_numpy(z)
    return getattr(net.kernel(torch.from_numpy(x), z, get=get, dtype=torch.float64), kind).numpy()


def _central(k, x, name, kind, h=1e-5):
    """``dK/dlog(theta)`` by central differences of the generic kernel (~1e-10 relative)."""
    up = k.clone_with_theta(k.theta)
    up.set_params(**{name: getattr(k, name) * math.exp(h)})
    down = k.clone_with_theta(k.theta)
    down.set_params(**{name: getattr(k, name) * math.exp(-h)})
    return (_generic(up, x, kind) - _generic(down, x, kind)) / (2 * h)


def slope_mlp(w_std=1.2, b_std=0.3, slope=0.2, readout_std=0.7):
    """Per-layer values and a free activation parameter (its f' and h' are nonzero)."""
    return L.serial(
        L.Dense(16, w_std, b_std),
        L.LeakyReLU(slope),
        L.Dense(16, w_std * 0.5, b_std),
        L.ABReLU(-slope, 1.0),
        L.Dense(1, readout_std, None),
    )


CONFIGS = [
    (None, {"depth": 3, "w_std": 1.3, "b_std": 0.2}, None),
    (None, {"depth": 2, "w_std": 1.1, "b_std": None}, None),
    (None, {"depth": 2, "w_std": 0.9, "b_std": 0.3, "parameterization": "standard"}, None),
    (None, {"depth": 3, "w_std": 1.1, "b_std": 0.4, "activation": "leaky_relu"}, None),
    (None, {"depth": 1, "w_std": 1.4, "b_std": 0.5, "activation": "abs"}, None),
    (None, {"depth": 2, "w_std": 1.2, "b_std": 0.1, "activation": "identity"}, None),
    (None, {"depth": 0, "w_std": 0.8, "b_std": 0.6}, None),
    (
        slope_mlp,
        {},
        {
            "w_std": (1e-2, 1e2),
            "b_std": (1e-3, 1e2),
            "slope": (1e-3, 1.0),
            "readout_std": (1e-2, 10),
        },
    ),
]


@pytest.mark.parametrize(("cls", "kind"), KERNELS)
@pytest.mark.parametrize(("spec", "kwargs", "bounds"), CONFIGS)
def test_one_pass_matches_layers_autograd_and_differences(
    cls, kind, spec, kwargs, bounds, monkeypatch
):
    x = _data(40, 5, seed=1)
    x[7] = x[3]  # an off-diagonal pair with correlation exactly 1
    x[9] = -2.0 * x[4]  # and one with correlation exactly -1
    monkeypatch.setattr(_tangents, "TILE_ENTRIES", 3 * 40)  # several row blocks of 3
    k = cls(spec, param_bounds=bounds, gradient="autograd", **kwargs)
    names = [h.name for h in k.hyperparameters if not h.fixed]
    xt = k._batch(x, "X")
    fused = k._fused(xt, names)
    assert fused is not None
    kk, grad = fused
    ref = _generic(k, x, kind)
    # pairs at |rho| = 1 sit on the arc-cosine kernel's square-root kink, where the last-bit
    # difference of two matrix products (other tile shapes, other BLAS threads) becomes ~1e-8
    smooth = np.ones_like(ref, dtype=bool)
    for i1, i2 in ((3, 7), (4, 9)):
        smooth[i1, i2] = smooth[i2, i1] = False
    np.testing.assert_allclose(kk[smooth], ref[smooth], rtol=1e-14, atol=1e-15 * np.abs(ref).max())
    np.testing.assert_allclose(kk, ref, rtol=1e-7)
    assert np.array_equal(kk, kk.T) and np.array_equal(grad, grad.transpose(1, 0, 2))
    # the kernel alone takes the same pass (and gives the same numbers); cross kernels too
    np.testing.assert_array_equal(k(x), kk)
    z = _data(7, 5, seed=9)
    ref_xz = _generic(k, x, kind, z)
    np.testing.assert_allclose(k(x, z), ref_xz, rtol=1e-14, atol=1e-15 * np.abs(ref_xz).max())
    np.testing.assert_allclose(k(z, x), ref_xz.T, rtol=1e-14, atol=1e-15 * np.abs(ref_xz).max())
    for i, name in enumerate(names):
        ad = k._forward_ad(xt, name)[1]  # torch forward mode through the layers
        np.testing.assert_allclose(
            grad[..., i][smooth], ad[smooth], rtol=0, atol=1e-12 * np.abs(ad).max()
        )
        np.testing.assert_allclose(grad[..., i], ad, rtol=0, atol=1e-7 * np.abs(ad).max())
        # differences of a kernel with a square-root kink at |rho| = 1 are noise on the pairs
        # that sit there (without biases they stay there); those are checked against autograd
        # above and against homogeneity in test_gp_kernels
        fd = _central(k, x, name, kind)
        np.testing.assert_allclose(
            grad[..., i][smooth], fd[smooth], rtol=0, atol=1e-8 * np.abs(fd).max()
        )


def test_bias_free_gradient_is_homogeneity_on_perfectly_correlated_pairs():
    # K(w) = w^(2 (L + 1)) K(1) for Dense without bias + ReLU: dK/dlog w = 2 (L + 1) K on
    # every pair, the perfectly (anti-)correlated ones included
    x = _data(12, 3, seed=7)
    x[5], x[8] = x[1], -3.0 * x[2]
    for cls in (NTKKernel, NNGPKernel):
        kk, grad = cls(depth=3, w_std=0.8, b_std=None, gradient="autograd")(x, eval_gradient=True)
        # rows 1 and 5 are equal, but x1 . x5 and |x1|^2 round apart: the pair sits ~eps
        # off rho = 1, where the arc-cosine kernel's square root turns that into ~1e-9
        exact = np.ones_like(kk, dtype=bool)
        exact[1, 5] = exact[5, 1] = False
        np.testing.assert_allclose(grad[..., 0][exact], 8 * kk[exact], rtol=1e-13, atol=0)
        np.testing.assert_allclose(grad[..., 0], 8 * kk, rtol=1e-8, atol=0)


def test_gp_kernel_uses_one_pass_and_both_parameters_at_once(monkeypatch):
    calls = []
    real = _tangents.kernel_and_tangents

    def spy(net, tangent_nets, x, y=None, **kw):
        calls.append((x.shape[0], len(tangent_nets)))
        return real(net, tangent_nets, x, y, **kw)

    monkeypatch.setattr(_tangents, "kernel_and_tangents", spy)
    x = _data(30, 4, seed=2)
    kk, grad = NTKKernel(depth=2, w_std=1.5, b_std=0.2)(x, eval_gradient=True)
    assert grad.shape == (30, 30, 2)
    # a two-sample probe, then one pass for both (the probe's differences: 4 kernels alone)
    assert [c for c in calls if c[1]] == [(2, 2), (30, 2)]
    assert calls.count((2, 0)) == 4


def test_other_layers_fall_back_to_forward_mode(monkeypatch):
    from ntkit.sklearn import gp_kernels

    seen = []
    real = gp_kernels._NetworkKernel._forward_ad

    def spy(self, xx, name):
        seen.append(name)
        return real(self, xx, name)

    monkeypatch.setattr(gp_kernels._NetworkKernel, "_forward_ad", spy)
    x = _data(12, 3, seed=3)
    k = NTKKernel(depth=2, w_std=1.3, b_std=0.2, activation="erf")
    assert k._fused(k._batch(x, "X"), ["w_std"]) is None
    kk, grad = k(x, eval_gradient=True)
    assert "w_std" in seen and "b_std" in seen
    fd = _central(k, x, "w_std", "ntk")
    np.testing.assert_allclose(grad[..., 0], fd, rtol=0, atol=1e-8 * np.abs(fd).max())


def dropping_factory(w_std=1.3, b_std=0.2):
    """Converts ``w_std`` to a float in the readout: its tangent is lost on that layer."""
    return L.serial(L.Dense(8, w_std, b_std), L.ReLU(), L.Dense(1, float(w_std), b_std))


def test_a_dropped_tangent_is_caught_by_the_probe():
    x = _data(15, 3, seed=4)
    k = NTKKernel(dropping_factory)
    xt = k._batch(x, "X")
    assert k._fused(xt, ["w_std", "b_std"]) is None  # disagrees with differences
    kk, grad = k(x, eval_gradient=True)  # "auto": central differences instead
    fd = _central(k, x, "w_std", "ntk")
    np.testing.assert_allclose(grad[..., 0], fd, rtol=0, atol=1e-7 * np.abs(fd).max())


def test_zero_variance_inputs_and_spatial_inputs_take_the_general_path():
    x = _data(10, 4, seed=5)
    x[2] = 0.0
    k = NTKKernel(depth=2, w_std=1.2, b_std=None)
    assert k._fused(k._batch(x, "X"), ["w_std"]) is None
    kk, grad = k(x, eval_gradient=True)
    np.testing.assert_allclose(grad[..., 0], 6 * kk, rtol=1e-12, atol=0)  # homogeneity
    assert _tangents.kernel_and_tangents(mlp(), [], torch.ones(3, 1, 2, 2), kind="ntk") is None
    # a zero-variance row among the columns of a cross kernel: the general path too
    z = _data(4, 4, seed=6)
    assert (
        _tangents.kernel_and_tangents(
            k._net(), [], torch.from_numpy(z), k._batch(x, "X"), kind="ntk"
        )
        is None
    )
    np.testing.assert_allclose(k(z, x), _generic(k, z, "ntk", x), rtol=1e-14)


def test_extreme_scales_take_the_general_path():
    # squares of variances that would overflow: the layers' rescaled path answers instead
    x = _data(6, 3, seed=6) * 1e100
    k = NTKKernel(depth=1, w_std=1.0, b_std=None)
    assert _tangents.kernel_and_tangents(k._net(), [], k._batch(x, "X"), kind="ntk") is None
    np.testing.assert_allclose(k(x) / 1e200, k(x / 1e100), rtol=1e-12)


def test_equal_batches_float32_tiny_rows_and_empty_batches_behave_as_the_layers():
    from ntkit.sklearn._compute import kernel_block

    net = mlp(depth=2, w_std=1.3, b_std=0.2)
    x = torch.from_numpy(_data(9, 5, seed=11))
    layers = net.kernel(x, x.clone(), dtype=torch.float64).ntk
    # an explicit second batch equal to the first: the exactly symmetric kernel
    same = kernel_block(net, x, x.clone(), kind="ntk", max_memory=None)
    torch.testing.assert_close(same, layers, rtol=0, atol=0)
    torch.testing.assert_close(same, kernel_block(net, x, None, kind="ntk", max_memory=None))
    # float32 inputs: a float64 kernel computed in float64
    low = kernel_block(net, x.float(), None, kind="ntk", max_memory=None)
    ref = net.kernel(x.float(), dtype=torch.float64).ntk
    assert low.dtype == torch.float64
    torch.testing.assert_close(low, ref, rtol=1e-14, atol=0)
    # a zero row must not hide a row whose squares are subnormal: the layers' error
    tiny = x.clone()
    tiny[2], tiny[4] = 0.0, 1e-150
    with pytest.raises(ValueError, match=r"x1\[4\] has entries of at most 1e-150"):
        kernel_block(net, tiny, None, kind="ntk", max_memory=None)
    # empty batches: the layers' error, not a reduction error
    with pytest.raises(ValueError, match="x1 is an empty batch"):
        kernel_block(net, x[:0], None, kind="ntk", max_memory=None)
    with pytest.raises(ValueError, match="x2 is an empty batch"):
        kernel_block(net, x, x[:0], kind="ntk", max_memory=None)


def test_tiles_in_worker_threads_give_the_serial_numbers(monkeypatch):
    # tiles run in two worker threads of one torch thread each and write disjoint parts of
    # the result: bit for bit what one thread computes, kernel and tangents
    monkeypatch.setattr(_tangents, "TILE_ENTRIES", 7 * 60)  # row blocks of 7: 9 tiles
    x = _data(60, 4, seed=12)
    k = NTKKernel(depth=2, w_std=1.3, b_std=0.2)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        serial = k(x, eval_gradient=True)
        torch.set_num_threads(2)
        parallel = k(x, eval_gradient=True)
        cross = k(x, x[:25] + 0.5)
        torch.set_num_threads(1)
        cross_serial = k(x, x[:25] + 0.5)
    finally:
        torch.set_num_threads(threads)
    np.testing.assert_array_equal(parallel[0], serial[0])
    np.testing.assert_array_equal(parallel[1], serial[1])
    np.testing.assert_array_equal(cross, cross_serial)
