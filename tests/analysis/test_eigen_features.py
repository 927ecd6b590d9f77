"""Eigen-features of kernel predictors (Tsilivis & Kempe 2022) and attacks through kernels."""

import numpy as np
import pytest
import torch

from ntkit import layers as L
from ntkit.analysis import (
    KernelPredictor,
    eigen_feature_weights,
    eigen_features,
    feature_accuracy,
    feature_robust_accuracy,
)
from ntkit.attacks import fgsm, pgd
from ntkit.predict import kernel_regression

NET = L.serial(L.Dense(1, 1.5, 0.05), L.ReLU(), L.Dense(1, 1.5, 0.05), L.ReLU(), L.Dense(1))


def _ntk(a, b):
    return NET.kernel(a, b, get="ntk").ntk


def _data(seed=0, n=30, nt=10, d=5):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    xt = torch.randn(nt, d, generator=g, dtype=torch.float64)
    y = torch.sign(x[:, 0] * x[:, 1])
    return x, y, xt


def test_features_sum_back_to_the_predictor():
    x, y, xt = _data()
    k, kt = _ntk(x, x), _ntk(xt, x)
    parts = eigen_features(k, y, kt)
    assert parts.shape == (30, 10)
    torch.testing.assert_close(parts.sum(0), kernel_regression(k, y, kt), rtol=1e-9, atol=1e-10)
    # multi-output targets and a singular kernel (duplicated input): still exact
    x2 = torch.cat([x, x[:3]])
    y2 = torch.stack([y, -y, x[:, 0]], 1)
    y2 = torch.cat([y2, y2[:3]])
    k2, kt2 = _ntk(x2, x2), _ntk(xt, x2)
    parts2 = eigen_features(k2, y2, kt2)
    assert parts2.shape[0] <= 30  # the 3 duplicated directions are null
    torch.testing.assert_close(parts2.sum(0), kernel_regression(k2, y2, kt2), rtol=1e-8, atol=1e-9)


def test_feature_i_on_training_inputs_is_the_projection_of_y():
    # K v_i = lambda_i v_i, so f_i(X) = v_i v_i^T y: an identity that does not use the code's
    # eigen-solver (numpy's eigh as the independent reference), sorted by decreasing lambda.
    x, y, _ = _data(1)
    k = _ntk(x, x)
    parts = eigen_features(k, y, k, top=5)
    lam, v = np.linalg.eigh(k.numpy())
    v = v[:, ::-1]
    for i in range(5):
        want = v[:, i] * (v[:, i] @ y.numpy())
        np.testing.assert_allclose(parts[i].numpy(), want, rtol=1e-7, atol=1e-9)
    w = eigen_feature_weights(k, y)
    torch.testing.assert_close(w.sum(0)[:, 0], torch.linalg.solve(k, y), rtol=1e-8, atol=1e-9)


def test_feature_accuracy_counts():
    c = torch.tensor([[1.0, -1.0, 2.0, -3.0], [-1.0, -1.0, -1.0, -1.0]])
    labels = torch.tensor([1, 0, 0, 0])
    torch.testing.assert_close(
        feature_accuracy(c, labels), torch.tensor([0.75, 0.75], dtype=torch.float64)
    )
    c3 = torch.zeros(1, 4, 3)
    c3[0, torch.arange(4), torch.tensor([0, 2, 2, 1])] = 1
    assert float(feature_accuracy(c3, torch.tensor([0, 2, 1, 1]))[0]) == 0.75


def test_input_gradient_of_a_kernel_predictor_matches_finite_differences():
    x, y, xt = _data(2, nt=4)
    w = eigen_feature_weights(_ntk(x, x), y)
    for weights in (w.sum(0), w[0], w[7]):  # full predictor, top feature, a lower one
        f = KernelPredictor(_ntk, x, weights)
        xg = xt.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(f(xg).sum(), xg)
        h = 1e-6
        fd = torch.zeros_like(xt)
        for i in range(xt.shape[0]):
            for j in range(xt.shape[1]):
                e = torch.zeros_like(xt)
                e[i, j] = h
                fd[i, j] = ((f(xt + e) - f(xt - e)).sum() / (2 * h)).detach()
        # central differences: O(h^2) truncation + O(eps / h) rounding ~ 1e-9 here
        torch.testing.assert_close(g, fd, rtol=1e-6, atol=1e-7)


def test_attacks_on_feature_predictors_raise_the_loss_inside_the_ball():
    x, y, xt = _data(3)
    yt = torch.sign(xt[:, 0] * xt[:, 1])
    w = eigen_feature_weights(_ntk(x, x), y)

    def margin_loss(out, target):  # -y f(x): larger is worse for the classifier
        return -(target * out[:, 0])

    for weights in (w.sum(0), w[0], w[3]):
        f = KernelPredictor(_ntk, x, weights)
        clean = margin_loss(f(xt), yt)
        for attack, kw in ((fgsm, {}), (pgd, {"steps": 5})):
            for norm in ("linf", "l2"):
                adv = attack(f, xt, yt, eps=0.2, norm=norm, loss=margin_loss, **kw)
                delta = (adv - xt).reshape(len(xt), -1)
                size = delta.abs().max(1).values if norm == "linf" else delta.norm(dim=1)
                assert float(size.max()) <= 0.2 + 1e-12
                assert float(margin_loss(f(adv), yt).sum()) > float(clean.sum())


def test_bad_input():
    x, y, xt = _data()
    k = _ntk(x, x)
    with pytest.raises(ValueError, match=r"\(30,\) or \(30, m\)"):
        eigen_features(k, y[:4], _ntk(xt, x))
    with pytest.raises(TypeError, match="real torch.Tensor"):
        eigen_features(k, y > 0, _ntk(xt, x))
    with pytest.raises(ValueError, match="k_test_train"):
        eigen_features(k, y, _ntk(xt, xt))
    with pytest.raises(ValueError, match="top"):
        eigen_feature_weights(k, y, top=0)

    def numpy_kernel(a, b):  # computed outside torch: no gradient reaches x
        return torch.from_numpy(_ntk(a.detach(), b).numpy())

    f = KernelPredictor(numpy_kernel, x, eigen_feature_weights(k, y)[0])
    with pytest.raises(TypeError, match="not differentiable in x"):
        fgsm(f, xt, torch.sign(xt[:, 0]), eps=0.1, loss="mse")
    with pytest.raises(ValueError, match="one row per training input"):
        KernelPredictor(_ntk, x, torch.zeros(3))


def test_feature_robust_accuracy_bounds_and_zero_radius():
    # eps = 0 leaves the inputs unchanged: robust accuracy == clean accuracy exactly. PGD
    # keeps each sample's worst iterate (clean input included), so a misclassified sample
    # stays misclassified and robust accuracy can never exceed clean accuracy.
    x, y, xt = _data(4, n=40, nt=16)
    labels = (torch.sign(xt[:, 0] * xt[:, 1]) > 0).long()
    feats = [0, 1, 2, 5, 10]
    parts = eigen_features(_ntk(x, x), y, _ntk(xt, x))
    clean = feature_accuracy(parts[feats], labels)
    zero = feature_robust_accuracy(_ntk, x, y, xt, labels, features=feats, eps=0.0)
    torch.testing.assert_close(zero, clean)
    rob = feature_robust_accuracy(
        _ntk, x, y, xt, labels, features=feats, eps=0.5, attack="pgd", steps=3
    )
    assert bool((rob <= clean).all()) and float(rob.sum()) < float(clean.sum())
    # multi-class targets: cross-entropy attack on argmax predictions
    y3 = torch.nn.functional.one_hot((x[:, 0] > 0).long() + (x[:, 1] > 0).long()).double()
    lab3 = (xt[:, 0] > 0).long() + (xt[:, 1] > 0).long()
    r3 = feature_robust_accuracy(_ntk, x, y3, xt, lab3, features=[0, 3], eps=0.0)
    clean3 = feature_accuracy(eigen_features(_ntk(x, x), y3, _ntk(xt, x))[[0, 3]], lab3)
    torch.testing.assert_close(r3, clean3)
    with pytest.raises(ValueError, match="outside"):
        feature_robust_accuracy(_ntk, x, y, xt, labels, features=[99], eps=0.1)
