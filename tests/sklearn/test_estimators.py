"""NTKRegressor / NTKClassifier against independent references, in pipelines, bad input."""

import numpy as np
import pytest
import scipy.linalg
import scipy.sparse
import scipy.stats
import torch
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from ntkit import layers as L
from ntkit.predict import kernel_regression
from ntkit.sklearn import NTKClassifier, NTKRegressor, _compute, mlp

from .reference import relu_mlp


def _data(n=30, d=4, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    return x, np.sin(x).sum(1)


@pytest.mark.parametrize("kind", ["ntk", "nngp"])
def test_converged_ridgeless_equals_kernel_regression(kind):
    x, y = _data()
    xt = _data(7, seed=1)[0]
    net = mlp(depth=2, w_std=1.4, b_std=0.2)
    k, kt = net.kernel(x), net.kernel(xt, x)
    ref = kernel_regression(getattr(k, kind), torch.from_numpy(y), getattr(kt, kind))
    est = NTKRegressor(kernel=kind, depth=2, w_std=1.4, b_std=0.2, t=None, ridge=0.0).fit(x, y)
    np.testing.assert_allclose(est.predict(xt), ref.numpy(), rtol=1e-10, atol=1e-12)


def test_finite_time_matches_matrix_exponential_of_independent_kernel():
    # gradient flow on (1/2) sum (f - y)^2 with weight decay r from f0 = 0:
    # f_t(x) = K(x, X) (K + r)^-1 (I - exp(-eta t (K + r))) Y
    x, y = _data(20, 3)
    xt = _data(5, 3, seed=2)[0]
    y2 = np.stack([y, np.cos(y)], axis=1)  # multi-output
    _, kxx = relu_mlp(x, x, 2, 1.2, 0.3, symmetric=True)
    _, ktx = relu_mlp(xt, x, 2, 1.2, 0.3)
    kxx, ktx = kxx.real, ktx.real
    eta, t, r = 0.05, 3.0, 0.1
    a = kxx + r * np.eye(20)
    ref = ktx @ np.linalg.solve(a, (np.eye(20) - scipy.linalg.expm(-eta * t * a)) @ y2)
    est = NTKRegressor(depth=2, w_std=1.2, b_std=0.3, t=t, learning_rate=eta, ridge=r)
    np.testing.assert_allclose(est.fit(x, y2).predict(xt), ref, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("t", [None, 2.0])
def test_sample_weights_equal_repeated_samples(t):
    x, y = _data(12, 3)
    w = np.array([0, 1, 2, 3, 1, 0, 2, 1, 1, 3, 2, 1])
    xt = _data(6, 3, seed=3)[0]
    est = NTKRegressor(depth=1, ridge=0.05, t=t, learning_rate=0.1)
    weighted = est.fit(x, y, sample_weight=w).predict(xt)
    repeated = NTKRegressor(**est.get_params()).fit(x.repeat(w, 0), y.repeat(w)).predict(xt)
    # the repeated set's kernel pairs distinct copies of one input: their angle is
    # arccos(rounded 1) ~ sqrt(eps) = 1.5e-8 instead of 0, so it is itself ~1e-8 off
    np.testing.assert_allclose(weighted, repeated, rtol=1e-7, atol=1e-9)


def test_cg_solver_matches_direct():
    x, y = _data(60, 5)
    xt = _data(9, 5, seed=4)[0]
    direct = NTKRegressor(ridge=1e-2).fit(x, y).predict(xt)
    cg = NTKRegressor(ridge=1e-2, solver="cg").fit(x, y)
    np.testing.assert_allclose(cg.predict(xt), direct, rtol=1e-7, atol=1e-9)
    assert cg.n_iter_ >= 1
    # "auto" switches to CG when the direct solve's 3 n^2 float64 entries exceed max_memory
    auto = NTKRegressor(ridge=1e-2, max_memory=60_000).fit(x, y)
    assert 3 * 8 * 60**2 > 60_000 and hasattr(auto, "n_iter_")
    np.testing.assert_allclose(auto.predict(xt), direct, rtol=1e-7, atol=1e-9)
    assert not hasattr(NTKRegressor(ridge=1e-2).fit(x, y), "n_iter_")


def test_kernels_cached_between_fit_and_predict(monkeypatch):
    x, y = _data(25, 3)
    xt = _data(8, 3, seed=5)[0]
    calls = []
    real = _compute.kernel_block

    def spy(net, x1, x2, **kw):
        calls.append((x1.shape[0], None if x2 is None else x2.shape[0]))
        return real(net, x1, x2, **kw)

    monkeypatch.setattr("ntkit.sklearn.estimators.kernel_block", spy)
    clf = NTKClassifier(ridge=1e-2).fit(x, y > 0)
    assert calls == [(25, None)]
    clf.predict(xt)
    clf.decision_function(xt)
    clf.predict_proba(xt)
    clf.score(xt, np.ones(8, bool))
    assert calls == [(25, None), (8, 25)]  # one test kernel for four calls on xt
    clf.score(x, y > 0)  # the training inputs reuse the training kernel
    assert len(calls) == 2
    factor = clf._cache["eigh"]
    clf.predict_proba(xt[:3])  # a new test set: one new test kernel, the same factorization
    assert len(calls) == 3 and clf._cache["eigh"] is factor


def test_predict_proba_is_gaussian_argmax_probability():
    # reference: Monte Carlo of independent N(mu_c, s^2) outputs with the GP posterior
    # variance s^2 = k(x,x) - k_x^T (K + r)^-1 k_x computed here from the NNGP directly;
    # 200k draws: standard error <= 0.0012, tolerance 0.006
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 3))
    labels = (x[:, 0] > 0).astype(int) + (x[:, 1] > 0.5)
    xt = rng.normal(size=(4, 3))
    r = 0.3
    clf = NTKClassifier(kernel="nngp", depth=1, ridge=r).fit(x, labels)
    prob = clf.predict_proba(xt)
    kxx = relu_mlp(x, x, 1, 1.0, 0.1, symmetric=True)[0].real
    ktx = relu_mlp(xt, x, 1, 1.0, 0.1)[0].real
    ktt = relu_mlp(xt, xt, 1, 1.0, 0.1, symmetric=True)[0].real
    y = np.eye(3)[labels] - 1 / 3
    a = kxx + r * np.eye(40)
    mu = ktx @ np.linalg.solve(a, y)
    var = np.diag(ktt) - np.einsum("ij,ji->i", ktx, np.linalg.solve(a, ktx.T))
    np.testing.assert_allclose(clf.decision_function(xt), mu, rtol=1e-10)
    draws = mu[:, None, :] + np.sqrt(var)[:, None, None] * rng.normal(size=(4, 200_000, 3))
    mc = np.stack([(draws.argmax(-1) == c).mean(1) for c in range(3)], axis=1)
    np.testing.assert_allclose(prob, mc, atol=0.006)
    np.testing.assert_allclose(prob.sum(1), 1.0, rtol=1e-12)
    assert not hasattr(NTKClassifier(t=1.0), "predict_proba")  # not a posterior at finite t


def test_binary_proba_closed_form():
    # two classes: P(1) = Phi((mu_1 - mu_0) / (sqrt(2) s))
    x, y = _data(30, 2, seed=6)
    clf = NTKClassifier(ridge=0.5).fit(x, y > 0)
    xt = _data(5, 2, seed=7)[0]
    p = clf.predict_proba(xt)[:, 1]
    s = np.sqrt(clf._posterior_variance(xt))
    ref = scipy.stats.norm.cdf(clf.decision_function(xt) / (np.sqrt(2) * s))
    np.testing.assert_allclose(p, ref, rtol=1e-10)


def test_pipeline_and_grid_search():
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x, y = x[:300], y[:300]
    pipe = make_pipeline(StandardScaler(), NTKClassifier(ridge=1e-3))
    grid = GridSearchCV(
        pipe, {"ntkclassifier__depth": [1, 3], "ntkclassifier__w_std": [1.0, 2.0]}, cv=3
    )
    grid.fit(x, y)
    assert grid.best_score_ > 0.85
    assert set(grid.best_params_) == {"ntkclassifier__depth", "ntkclassifier__w_std"}
    best = grid.best_estimator_[-1]
    assert (best.depth, best.w_std) == (
        grid.best_params_["ntkclassifier__depth"],
        grid.best_params_["ntkclassifier__w_std"],
    )
    # the parameters reach the kernel: the decision functions differ between grid points
    f = [
        NTKClassifier(ridge=1e-3, depth=d).fit(x[:250], y[:250]).decision_function(x[250:])
        for d in (1, 3)
    ]
    assert np.abs(f[0] - f[1]).max() > 1e-3


def test_spec_layer_factory_and_in_shape():
    x, y = _data(20, 4)
    net = L.serial(L.Dense(8, 1.3, 0.1), L.Erf(), L.Dense(3, 1.3, 0.1))
    a = NTKRegressor(net).fit(x, y).predict(x[:3])
    b = (
        NTKRegressor(
            lambda w_std: L.serial(L.Dense(8, w_std, 0.1), L.Erf(), L.Dense(1, w_std, 0.1)),
            w_std=1.3,
        )
        .fit(x, y)
        .predict(x[:3])
    )
    np.testing.assert_allclose(a, b, rtol=1e-12)
    with pytest.raises(ValueError, match="fixed ntkit Layer"):
        NTKRegressor(net, depth=4).fit(x, y)
    with pytest.raises(ValueError, match="takes no parameter"):
        NTKRegressor(lambda w_std: net, depth=4).fit(x, y)
    cnn = L.serial(L.Conv(3, 2, padding="same"), L.ReLU(), L.GlobalAvgPool(), L.Dense(1))
    r = NTKRegressor(cnn, in_shape=(1, 2, 2)).fit(x, y)
    direct = cnn.kernel(
        torch.from_numpy(x[:3]).reshape(3, 1, 2, 2), torch.from_numpy(x).reshape(20, 1, 2, 2)
    ).ntk
    ref = kernel_regression(
        cnn.kernel(torch.from_numpy(x).reshape(20, 1, 2, 2)).ntk, torch.from_numpy(y), direct
    )
    np.testing.assert_allclose(r.predict(x[:3]), ref.numpy(), rtol=1e-10)


def test_bad_input():
    x, y = _data(10, 3)
    with pytest.raises(TypeError, match="[Ss]parse"):
        NTKRegressor().fit(scipy.sparse.csr_matrix(x), y)
    bad = x.copy()
    bad[2, 1] = np.nan
    with pytest.raises(ValueError, match="Input X contains NaN"):
        NTKRegressor().fit(bad, y)
    with pytest.raises(ValueError, match="Expected 2D array"):
        NTKRegressor().fit(x[:, 0], y)
    conv = L.serial(L.Conv(2, 1), L.ReLU())
    with pytest.raises(ValueError, match="one scalar per output"):
        NTKClassifier(conv, in_shape=(1, 3, 1)).fit(x, y > 0)
    with pytest.raises(ValueError, match="in_shape"):
        NTKRegressor(conv, in_shape=(1, 2, 2)).fit(x, y)
    with pytest.raises(ValueError, match="kernel must be"):
        NTKRegressor(kernel="rbf").fit(x, y)
    with pytest.raises(ValueError, match="ridge"):
        NTKRegressor(ridge=-1.0).fit(x, y)
    with pytest.raises(ValueError, match="solver='cg'"):
        NTKRegressor(solver="cg", t=1.0).fit(x, y)
    with pytest.raises(ValueError, match="activation"):
        NTKRegressor(activation="swish").fit(x, y)
    with pytest.raises(ValueError, match="1 class"):
        NTKClassifier().fit(x, np.zeros(10))


def test_progress_bar_on_request(capsys):
    x, y = _data(20, 3)
    NTKRegressor(progress=True).fit(x, y)
    assert "kernel tiles" in capsys.readouterr().out
    NTKRegressor().fit(x, y)  # small kernels stay quiet by default
    assert "kernel tiles" not in capsys.readouterr().out
