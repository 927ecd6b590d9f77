"""Label-aware NTKs (Chen, He & Su 2020) against direct formulas, ODEs and autograd."""

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp

from ntkit import layers as L
from ntkit.analysis import (
    empirical_k4,
    label_aware_hr,
    label_aware_nth,
    local_elasticity,
    two_layer_relu_k4,
)
from ntkit.predict import kernel_regression


def _data(n=12, d=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    labels = torch.arange(n) % 3
    return x, labels


def _hr_direct(k_tt, y, k_entry, strength):
    """Loop over ordered pairs i != j: Epanechnikov-weighted mean of y_i . y_j."""
    n = k_tt.shape[0]
    pairs = [(i, j) for i in range(n) for j in range(n) if i != j]
    vals = np.array([k_tt[i, j] for i, j in pairs])
    prods = np.array([y[i] @ y[j] for i, j in pairs])
    lo, hi = vals.min(), vals.max()

    def z(v):
        v = min(max(v, lo), hi)
        w = (hi - lo) ** 2 - (v - vals) ** 2
        return (w * prods).sum() / w.sum()

    z_tt = np.array([[z(v) for v in row] for row in k_tt])
    lam = strength * np.abs(k_tt).mean() / np.abs(z_tt).mean()
    return np.array([[v + lam * z(v) for v in row] for row in k_entry])


def test_hr_matches_pairwise_loop_and_is_consistent():
    x, labels = _data()
    xt = torch.randn(5, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    net = L.serial(L.Dense(8), L.ReLU(), L.Dense(1))
    k_tt, k_st = net.kernel(x).ntk, net.kernel(xt, x).ntk
    y = torch.nn.functional.one_hot(labels).double() - 1 / 3
    hr_tt = label_aware_hr(k_tt, labels, strength=0.3)
    hr_st = label_aware_hr(k_tt, y, k_st, strength=0.3)  # centered one-hot == class indices
    np.testing.assert_allclose(
        hr_tt, _hr_direct(k_tt.numpy(), y.numpy(), k_tt.numpy(), 0.3), rtol=1e-12
    )
    np.testing.assert_allclose(
        hr_st, _hr_direct(k_tt.numpy(), y.numpy(), k_st.numpy(), 0.3), rtol=1e-12
    )
    # same function of the kernel value everywhere: the train block passed as "other" agrees
    torch.testing.assert_close(label_aware_hr(k_tt, labels, k_tt, strength=0.3), hr_tt)
    assert torch.equal(hr_tt, hr_tt.T)
    torch.testing.assert_close(label_aware_hr(k_tt, labels, strength=0.0), k_tt)
    torch.testing.assert_close(label_aware_hr(k_tt, labels.numpy(), strength=0.3), hr_tt)
    # usable with ntkit.predict
    pred = kernel_regression(hr_tt, y, hr_st, ridge=1e-6, repair="project")
    assert pred.shape == (5, 3) and torch.isfinite(pred).all()


def test_hr_raises_local_elasticity():
    # Z is larger where the NTK value is typical of same-class pairs, so adding it can only
    # help the same-class mean when same-class pairs have larger kernel values (here: two
    # clusters on the sphere, where the NTK is a function of the angle alone).
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(2, 6, generator=g, dtype=torch.float64) * 2
    labels = torch.arange(20) % 2
    x = centers[labels] + torch.randn(20, 6, generator=g, dtype=torch.float64)
    x = x / x.norm(dim=1, keepdim=True) * 6**0.5
    k = L.serial(L.Dense(8), L.ReLU(), L.Dense(1)).kernel(x).ntk
    base = local_elasticity(k, labels)
    assert local_elasticity(label_aware_hr(k, labels, strength=0.5), labels) > base


def _elasticity_loop(k, l1, l2, d1, d2, skip_diag):
    same, diff = [], []
    for a in range(k.shape[0]):
        for b in range(k.shape[1]):
            if skip_diag and a == b:
                continue
            v = k[a, b] / np.sqrt(d1[a] * d2[b])
            (same if l1[a] == l2[b] else diff).append(v)
    return np.mean(same) / (np.mean(same) + np.mean(diff))


def test_local_elasticity_against_loop():
    x, labels = _data()
    xt, lt = x[:5] + 0.1, labels[:5]
    net = L.serial(L.Dense(8), L.ReLU(), L.Dense(1))
    k = net.kernel(x).ntk.numpy()
    assert local_elasticity(k, labels) == pytest.approx(
        _elasticity_loop(k, labels, labels, k.diagonal(), k.diagonal(), True), rel=1e-12
    )
    kst = net.kernel(xt, x).ntk.numpy()
    dt = net.kernel(xt).ntk.diagonal().numpy()
    got = local_elasticity(kst, lt, labels, diag1=dt, diag2=k.diagonal())
    assert got == pytest.approx(_elasticity_loop(kst, lt, labels, dt, k.diagonal(), False))


def test_k4_monte_carlo_formula_equals_autograd_of_the_sampled_network():
    # two_layer_relu_k4 averages over n_samples first-layer rows w_r drawn from its seed,
    # with a_r^2 replaced by its mean 1. A finite network whose hidden units ARE those rows
    # and whose readout is all ones has exactly that average as its K4 (a.e.), so the
    # hand-derived formula must match nested autograd through the network to rounding.
    d, m = 4, 16
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, d, generator=g, dtype=torch.float64)
    xt = torch.randn(3, d, generator=g, dtype=torch.float64)
    model = L.serial(L.Dense(m), L.ReLU(), L.Dense(1)).module((d,), seed=0, dtype=torch.float64)
    w = torch.randn(m, d, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    with torch.no_grad():
        model[0].weight.copy_(w)
        model[2].weight.fill_(1.0)
    exact = empirical_k4(model, x, xt[:2], xt)
    mc = two_layer_relu_k4(x, xt[:2], xt, width=m, n_samples=m, seed=7)
    torch.testing.assert_close(mc, exact, rtol=1e-10, atol=1e-12)


def test_nth_equals_the_truncated_hierarchy_ode():
    # Truncated neural tangent hierarchy (K4 frozen, H frozen, f_0 = 0, E[K3_0] = 0):
    #   r' = -H r, r(0) = -y;  K3' = -K4 r;  Theta' = -K3 . r.
    # Integrated to t = 200 (e^{-lambda_min t} < 1e-12 here) it must reach the closed form.
    x, labels = _data(n=6, d=5)
    y = torch.where(labels == 0, 1.0, -1.0).double()
    net = L.serial(L.Dense(8), L.ReLU(), L.Dense(1))
    h = net.kernel(x).ntk
    k4 = two_layer_relu_k4(x[:2], x[:3], x, width=10, n_samples=512, seed=0)
    got = label_aware_nth(h, y, h[:2, :3], k4) - h[:2, :3]
    n, hn, yn, k4n = 6, h.numpy(), y.numpy(), k4.numpy()
    assert np.linalg.eigvalsh(hn).min() * 200 > 28

    def rhs(_t, s):
        r, k3 = s[:n], s[n : n + 6 * n].reshape(2, 3, n)
        dk3 = -np.einsum("abij,j->abi", k4n, r)
        dth = -np.einsum("abi,i->ab", k3, r)
        return np.concatenate([-hn @ r, dk3.ravel(), dth.ravel()])

    s0 = np.concatenate([-yn, np.zeros(6 * n), np.zeros(6)])
    sol = solve_ivp(rhs, (0, 200), s0, rtol=1e-11, atol=1e-13, method="DOP853")
    np.testing.assert_allclose(got.numpy(), sol.y[-6:, -1].reshape(2, 3), rtol=1e-7, atol=1e-12)


def test_label_aware_bad_input():
    x, labels = _data()
    k = L.serial(L.Dense(8), L.ReLU(), L.Dense(1)).kernel(x).ntk
    with pytest.raises(ValueError, match=r"shape \(12,\)"):
        label_aware_hr(k, labels[:5])
    with pytest.raises(TypeError, match="labels must be"):
        label_aware_hr(k, ["a"] * 12)
    with pytest.raises(TypeError, match="integer class labels or real targets"):
        label_aware_hr(k, labels == 0)
    with pytest.raises(ValueError, match="square"):
        label_aware_hr(k[:, :5], labels)
    with pytest.raises(ValueError, match="k4"):
        label_aware_nth(k, labels, k, torch.zeros(12, 12, 3, 3))
    with pytest.raises(ValueError, match="positive definite"):
        label_aware_nth(torch.zeros(12, 12), labels, k, torch.zeros(12, 12, 12, 12))
    with pytest.raises(TypeError, match="integer class labels"):
        local_elasticity(k, labels.double())
    with pytest.raises(ValueError, match="diag1"):
        local_elasticity(k, labels, labels)
