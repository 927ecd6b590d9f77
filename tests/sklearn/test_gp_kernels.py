"""NTKKernel / NNGPKernel: values, O(n) diagonals, cross kernels, gradients, GP fitting."""

import math

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.gaussian_process import GaussianProcessRegressor
from sklearn.gaussian_process.kernels import ConstantKernel, WhiteKernel

from ntkit import layers as L
from ntkit.sklearn import NNGPKernel, NTKKernel, _compute

from .reference import relu_mlp, relu_mlp_log_gradient, skntk_closed_form

KERNELS = [(NTKKernel, "ntk"), (NNGPKernel, "nngp")]


def _data(n=9, d=4, seed=0):
    return np.random.default_rng(seed).normal(size=(n, d))


@pytest.mark.parametrize(("cls", "kind"), KERNELS)
def test_values_match_independent_recursion(cls, kind):
    x, z = _data(), _data(5, seed=1)
    idx = 0 if kind == "nngp" else 1
    k = cls(depth=3, w_std=1.3, b_std=0.4)
    ref = relu_mlp(x, x, 3, 1.3, 0.4, symmetric=True)[idx].real
    np.testing.assert_allclose(k(x), ref, rtol=1e-12, atol=0)
    ref_xz = relu_mlp(x, z, 3, 1.3, 0.4)[idx].real
    np.testing.assert_allclose(k(x, z), ref_xz, rtol=1e-12, atol=0)
    np.testing.assert_allclose(k(z, x), ref_xz.T, rtol=1e-12, atol=0)


@pytest.mark.parametrize(("cls", "kind"), KERNELS)
def test_diag_equals_diagonal_of_matrix_and_is_linear(cls, kind, monkeypatch):
    x = _data(300, 6)
    k = cls(depth=2, w_std=1.7, b_std=0.2, activation="erf")
    np.testing.assert_allclose(k.diag(x), np.diag(k(x)), rtol=1e-13, atol=0)
    # O(n): the diagonal never asks for more than DIAGONAL_CHUNK x DIAGONAL_CHUNK blocks or
    # a (n, 1) column
    seen = []
    real = _compute.kernel_block

    def spy(net, x1, x2, **kw):
        seen.append(x1.shape[0] * (x1.shape[0] if x2 is None else x2.shape[0]))
        return real(net, x1, x2, **kw)

    monkeypatch.setattr(_compute, "kernel_block", spy)
    k.diag(x)
    assert sum(seen) <= 300 * _compute.DIAGONAL_CHUNK


def test_diag_with_spatial_spec_and_in_shape():
    def cnn(w_std=1.5, b_std=0.1):
        return L.serial(
            L.Conv(4, 3, padding="same", w_std=w_std, b_std=b_std),
            L.ReLU(),
            L.GlobalAvgPool(),
            L.Dense(1, w_std, b_std),
        )

    x = _data(6, 2 * 5 * 5, seed=3)
    k = NTKKernel(cnn, in_shape=(2, 5, 5))
    np.testing.assert_allclose(k.diag(x), np.diag(k(x)), rtol=1e-13, atol=0)
    direct = cnn().kernel(x.reshape(6, 2, 5, 5)).ntk.numpy()
    np.testing.assert_allclose(k(x), direct, rtol=1e-14, atol=0)


@pytest.mark.parametrize(("cls", "kind"), KERNELS)
@pytest.mark.parametrize(("gradient", "tol"), [("autograd", 1e-12), ("finite_difference", 1e-8)])
def test_gradient_matches_complex_step_reference(cls, kind, gradient, tol):
    x = _data(12, 3, seed=2)
    k = cls(depth=2, w_std=1.3, b_std=0.4, gradient=gradient)
    kk, grad = k(x, eval_gradient=True)
    assert grad.shape == (12, 12, 2)
    ref = relu_mlp_log_gradient(x, 2, 1.3, 0.4, kind=kind)
    # forward-mode AD is exact to rounding; central differences to ~1e-10 relative
    np.testing.assert_allclose(grad, ref, rtol=0, atol=tol * np.abs(ref).max())
    np.testing.assert_allclose(
        kk, relu_mlp(x, x, 2, 1.3, 0.4, symmetric=True)[0 if kind == "nngp" else 1].real, rtol=1e-12
    )


def _cnn(w_std=1.5, b_std=0.1):
    return L.serial(
        L.Conv(3, 3, padding="same", w_std=w_std, b_std=b_std),
        L.ReLU(),
        L.GlobalAvgPool(),
        L.Dense(1, w_std, b_std),
    )


def _layernorm_gelu(w_std=1.5, b_std=0.1, eps=1e-5):
    return L.serial(L.Dense(8, w_std, b_std), L.LayerNorm(), L.GELU(), L.Dense(1, w_std, b_std))


@pytest.mark.parametrize(
    ("spec", "kwargs", "in_shape"),
    [
        (None, {"activation": "erf", "depth": 2}, None),
        (None, {"activation": "gelu", "depth": 1}, None),
        (_cnn, {}, (1, 4, 4)),
        (_layernorm_gelu, {}, None),
    ],
)
def test_autograd_gradient_matches_finite_differences(spec, kwargs, in_shape):
    # independent reference: central differences of the kernel values in log(theta),
    # step 1e-4 (truncation ~1e-8 relative), computed here from k(X) alone
    x = _data(8, 16, seed=10)
    k = NTKKernel(spec, gradient="autograd", in_shape=in_shape, **kwargs)
    kk, grad = k(x, eval_gradient=True)
    h = 1e-4
    for i, name in enumerate(["w_std", "b_std"]):
        v = getattr(k, name)
        up = k.clone_with_theta(k.theta)
        up.set_params(**{name: v * math.exp(h)})
        down = k.clone_with_theta(k.theta)
        down.set_params(**{name: v * math.exp(-h)})
        fd = (up(x) - down(x)) / (2 * h)
        np.testing.assert_allclose(grad[..., i], fd, rtol=0, atol=1e-7 * np.abs(fd).max())


def test_gradient_of_bias_free_relu_net_is_homogeneity():
    # Dense without bias + ReLU is positively homogeneous: K(w) = w^(2 (L + 1)) K(1), so
    # dK/dlog w = 2 (L + 1) K exactly.
    x = _data(10, 3, seed=4)
    for gradient, tol in (("autograd", 1e-12), ("finite_difference", 1e-8)):
        k = NTKKernel(depth=3, w_std=0.8, b_std=None, gradient=gradient)
        kk, grad = k(x, eval_gradient=True)
        assert grad.shape == (10, 10, 1)
        np.testing.assert_allclose(grad[..., 0], 8 * kk, rtol=tol, atol=0)


def test_gradient_shapes_fixed_and_cross():
    x = _data(5)
    k = NTKKernel(param_bounds={"w_std": "fixed", "b_std": "fixed"})
    assert k(x, eval_gradient=True)[1].shape == (5, 5, 0)
    with pytest.raises(ValueError, match="only be evaluated when Y is None"):
        k(x, x[:2], eval_gradient=True)


def test_params_clone_set_params_and_theta():
    k = NTKKernel(depth=3, w_std=1.5, b_std=0.2)
    params = k.get_params()
    assert {"depth", "w_std", "b_std", "activation", "width", "spec"} <= set(params)
    c = clone(k)
    assert c is not k and c == k and c.get_params() == params
    assert [h.name for h in k.hyperparameters] == ["w_std", "b_std"]
    np.testing.assert_allclose(k.theta, np.log([1.5, 0.2]))
    k2 = k.clone_with_theta(np.log([2.0, 0.5]))
    assert (k2.w_std, k2.b_std, k2.depth) == pytest.approx((2.0, 0.5, 3))
    assert k.w_std == 1.5  # the original is unchanged
    k.set_params(depth=1)
    assert k.depth == 1 and k != c
    with pytest.raises(ValueError, match="Invalid parameter"):
        k.set_params(nonsense=1)


def test_factory_hyperparameters_and_free_parameters():
    def erf_net(w_std=1.0, b_std=0.1, slope=1.0):
        return L.serial(L.Dense(8, w_std, b_std), L.Erf(b=slope), L.Dense(1, w_std, b_std))

    k = NNGPKernel(erf_net, slope=0.7, param_bounds={"slope": (0.1, 10.0), "b_std": "fixed"})
    assert k.get_params()["slope"] == 0.7
    assert [h.name for h in k.hyperparameters if not h.fixed] == ["w_std", "slope"]
    x = _data(8, 3)
    kk, grad = k(x, eval_gradient=True)
    # reference: central differences of the kernel itself with a different (larger) step
    h = 1e-4
    up = NNGPKernel(erf_net, slope=0.7 * math.exp(h))(x)
    down = NNGPKernel(erf_net, slope=0.7 * math.exp(-h))(x)
    np.testing.assert_allclose(grad[..., 1], (up - down) / (2 * h), rtol=0, atol=1e-7)
    with pytest.raises(ValueError, match="unknown hyperparameter"):
        NNGPKernel(erf_net, depth=3)
    with pytest.raises(ValueError, match="not a hyperparameter"):
        _ = NNGPKernel(erf_net, param_bounds={"alpha": (1, 2)}).theta


def test_composition_and_gp_fit_predict():
    x = _data(40, 3, seed=5)
    y = np.sin(x).sum(1) + 0.1 * np.random.default_rng(6).normal(size=40)
    kernel = ConstantKernel(1.0) * NTKKernel(depth=2, w_std=1.2, b_std=0.3) + WhiteKernel(
        1e-2, (1e-10, 1.0)
    )
    gp = GaussianProcessRegressor(kernel, normalize_y=True, random_state=0).fit(x, y)
    mean, std = gp.predict(x[:5] + 0.01, return_std=True)
    assert mean.shape == (5,) and np.all(std > 0)
    assert gp.log_marginal_likelihood_value_ > gp.log_marginal_likelihood(gp.kernel.theta)
    # the fitted kernel's gradient is that of the likelihood: compare with differences
    theta = gp.kernel_.theta
    lml, grad = gp.log_marginal_likelihood(theta, eval_gradient=True)
    h = 1e-5
    for i in range(len(theta)):
        e = np.zeros_like(theta)
        e[i] = h
        fd = (gp.log_marginal_likelihood(theta + e) - gp.log_marginal_likelihood(theta - e)) / (
            2 * h
        )
        assert grad[i] == pytest.approx(fd, rel=1e-4, abs=1e-4)


def test_gp_recovers_known_w_std_and_b_std():
    # m independent draws of an n-point function from the NNGP prior with known (w, b);
    # the maximum-likelihood estimate has standard error sqrt(inv(Fisher)) with
    # Fisher_ab = (m / 2) tr(K^-1 dK_a K^-1 dK_b) (in log w, log b); allow 4 standard errors.
    rng = np.random.default_rng(0)
    n, m, w, b = 60, 40, 1.6, 0.5
    x = rng.normal(size=(n, 3))
    truth = NNGPKernel(depth=1, w_std=w, b_std=b)
    kk, dk = truth(x, eval_gradient=True)
    jitter = 1e-8
    chol = np.linalg.cholesky(kk + jitter * np.eye(n))
    y = chol @ rng.normal(size=(n, m))
    gp = GaussianProcessRegressor(
        NNGPKernel(depth=1, w_std=1.0, b_std=0.1),
        alpha=jitter,
        optimizer="fmin_l_bfgs_b",
        n_restarts_optimizer=0,
        random_state=0,
    ).fit(x, y)
    kinv_dk = [np.linalg.solve(kk + jitter * np.eye(n), dk[..., a]) for a in range(2)]
    fisher = np.array([[m / 2 * np.trace(p @ q) for q in kinv_dk] for p in kinv_dk])
    se = np.sqrt(np.diag(np.linalg.inv(fisher)))
    est = np.log([gp.kernel_.w_std, gp.kernel_.b_std])
    assert np.all(np.abs(est - np.log([w, b])) < 4 * se), (est, np.log([w, b]), se)


def _assert_symmetric_close(ours, ref):
    # off the diagonal to rounding; on it scikit-ntk takes arccos of a rounded 1
    # (x.x / sqrt(|x|^2 |x|^2)), an angle of ~sqrt(eps) = 1.5e-8 instead of 0, while ntkit's
    # same-sample angle is exactly 0: the diagonal agrees to ~1e-8 relative.
    off = ~np.eye(len(ours), dtype=bool)
    np.testing.assert_allclose(ours[off], ref[off], rtol=1e-12)
    np.testing.assert_allclose(np.diag(ours), np.diag(ref), rtol=1e-7)


def test_matches_scikit_ntk_closed_form_where_conventions_agree():
    # scikit-ntk: Sigma^0 = x z^T, no bias in Sigma, bias^2 added to the NTK per layer,
    # scaled by 1/((L+1)(bias^2+1)). With bias = 0 this is ntkit's ReLU MLP with
    # w_std = sqrt(2), no bias, times d / (2 (L + 1)) (the input kernel is x z^T / d and
    # ReLU kernels are positively homogeneous).
    x, z = _data(8, 5), _data(6, 5, seed=7)
    for depth in (1, 3):
        ours = NTKKernel(depth=depth, w_std=math.sqrt(2), b_std=None)
        scale = 5 / (2 * (depth + 1))
        ref = skntk_closed_form(x, z, depth, 0.0)
        np.testing.assert_allclose(ours(x, z) * scale, ref, rtol=1e-12)
        _assert_symmetric_close(ours(x) * scale, skntk_closed_form(x, x, depth, 0.0))


def test_matches_scikit_ntk_package_oracle():
    skntk = pytest.importorskip("skntk")
    x, z = _data(8, 5), _data(6, 5, seed=7)
    for depth in (1, 3):
        ours = NTKKernel(depth=depth, w_std=math.sqrt(2), b_std=None)
        theirs = skntk.NeuralTangentKernel(depth=depth, bias=0.0)
        scale = 5 / (2 * (depth + 1))
        np.testing.assert_allclose(ours(x, z) * scale, theirs(x, z), rtol=1e-12)
        _assert_symmetric_close(ours(x) * scale, theirs(x))
        # and our re-derivation of their formula agrees with the package with a bias too
        theirs_b = skntk.NeuralTangentKernel(depth=depth, bias=0.3)
        np.testing.assert_allclose(skntk_closed_form(x, z, depth, 0.3), theirs_b(x, z), rtol=1e-12)


def test_bad_input():
    k = NTKKernel()
    with pytest.raises(ValueError, match="NaN"):
        k(np.array([[1.0, np.nan]]))
    with pytest.raises(ValueError, match="2D array"):
        k(np.ones(3))
    import scipy.sparse

    with pytest.raises(TypeError, match="[Ss]parse"):
        k(scipy.sparse.csr_matrix(np.ones((3, 2))))
    conv = L.serial(L.Conv(3, 2), L.ReLU())
    with pytest.raises(ValueError, match="readout"):
        NTKKernel(conv, in_shape=(1, 3, 3))(np.ones((2, 9)))
    with pytest.raises(ValueError, match="in_shape"):
        NTKKernel(conv, in_shape=(1, 3, 3))(np.ones((2, 8)))
    with pytest.raises(ValueError, match="positive float"):
        _ = NTKKernel(b_std=None, param_bounds={"b_std": (1e-3, 1)}).theta


def test_gradient_strategy_guards(monkeypatch):
    from ntkit.sklearn import gp_kernels

    x = _data(6, 3, seed=8)
    ref = relu_mlp_log_gradient(x, 1, 1.3, 0.4, kind="ntk")
    k = NTKKernel(depth=1, w_std=1.3, b_std=0.4)
    # the general path (the one-pass path of this fully connected spec switched off): a
    # forward-mode pass that drops part of the tangent is caught by the probe: "auto" falls
    # back to differences, "autograd" refuses
    monkeypatch.setattr(gp_kernels._NetworkKernel, "_fused", lambda self, xx, names: None)
    monkeypatch.setattr(
        gp_kernels._NetworkKernel,
        "_forward_ad",
        lambda self, xx, name: (
            self._kernel(self._net(), xx, None),
            0.5 * self._finite_difference(xx, name),
        ),
    )
    np.testing.assert_allclose(k(x, eval_gradient=True)[1], ref, atol=1e-8 * np.abs(ref).max())
    with pytest.raises(NotImplementedError, match="disagrees"):
        NTKKernel(depth=1, w_std=1.3, b_std=0.4, gradient="autograd")(x, eval_gradient=True)
    with pytest.raises(ValueError, match="gradient must be"):
        NTKKernel(gradient="exact")(x, eval_gradient=True)


def test_forward_mode_pass_supplies_kernel_and_gradient(monkeypatch):
    # where forward-mode AD reaches through the kernel, its primal is the kernel and its
    # tangents the gradient (here a stand-in pass built from the independent reference)
    from ntkit.sklearn import gp_kernels

    x = _data(6, 3, seed=9)
    ref_k = relu_mlp(x, x, 1, 1.3, 0.4, symmetric=True)[1].real
    ref_g = relu_mlp_log_gradient(x, 1, 1.3, 0.4, kind="ntk")
    calls = []

    def fake(self, xx, name):
        calls.append((len(xx), name))
        xs = xx.numpy()
        g = relu_mlp_log_gradient(xs, 1, self.w_std, self.b_std, kind="ntk")
        k = relu_mlp(xs, xs, 1, self.w_std, self.b_std, symmetric=True)[1].real
        return k, g[..., ["w_std", "b_std"].index(name)]

    monkeypatch.setattr(gp_kernels._NetworkKernel, "_forward_ad", fake)
    monkeypatch.setattr(gp_kernels._NetworkKernel, "_fused", lambda self, xx, names: None)
    kk, grad = NTKKernel(depth=1, w_std=1.3, b_std=0.4, gradient="autograd")(x, eval_gradient=True)
    np.testing.assert_allclose(kk, ref_k, rtol=1e-12)
    np.testing.assert_allclose(grad, ref_g, rtol=1e-12)
    assert calls == [(2, "w_std"), (2, "b_std"), (6, "w_std"), (6, "b_std")]  # probe, then full
