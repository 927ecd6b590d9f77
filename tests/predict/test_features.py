"""Ridge regression from features against kernel regression on K = phi phi^T."""

import pytest
import torch

import ntkit as nk
from ntkit.predict import feature_regression, kernel_regression


def _data(n, k, n_test, o=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    shape = (n, k) if o is None else (n, o, k)
    tshape = (n_test, k) if o is None else (n_test, o, k)
    return (
        torch.randn(shape, generator=g, dtype=torch.float64),
        torch.randn(tshape, generator=g, dtype=torch.float64),
        g,
    )


@pytest.mark.parametrize(("n", "k"), [(30, 8), (8, 30)])
@pytest.mark.parametrize("ridge", [0.0, 0.3])
def test_shared_features_match_kernel_regression(n, k, ridge):
    phi, pt, g = _data(n, k, 5)
    for y in (
        torch.randn(n, generator=g, dtype=torch.float64),
        torch.randn(n, 3, generator=g, dtype=torch.float64),
    ):
        got = feature_regression(phi, y, pt, ridge=ridge)
        want = kernel_regression(phi @ phi.T, y, pt @ phi.T, ridge=ridge)
        assert got.shape == want.shape
        assert torch.allclose(got, want, rtol=1e-8, atol=1e-8)
    rel = feature_regression(phi, y, pt, ridge_relative=0.1)
    assert torch.allclose(
        rel, kernel_regression(phi @ phi.T, y, pt @ phi.T, ridge_relative=0.1), atol=1e-10
    )


def test_per_output_features_match_the_full_kernel():
    phi, pt, g = _data(7, 12, 4, o=3)
    y = torch.randn(7, 3, generator=g, dtype=torch.float64)
    k = torch.einsum("iaj,kbj->ikab", phi, phi)
    kt = torch.einsum("iaj,kbj->ikab", pt, phi)
    got = feature_regression(phi, y, pt, ridge=0.05)
    assert got.shape == (4, 3)
    assert torch.allclose(got, kernel_regression(k, y, kt, ridge=0.05), atol=1e-9)


def test_with_projected_ntk_features_of_a_model():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    model = model.double()  # float64: the two solves agree to rounding
    x, xt = torch.randn(20, 4, dtype=torch.float64), torch.randn(6, 4, dtype=torch.float64)
    y = torch.sin(x.sum(1, keepdim=True))
    phi = nk.ntk_features(model, x, dim=48, seed=0)
    pt = nk.ntk_features(model, xt, dim=48, seed=0)
    got = feature_regression(phi, y, pt, ridge=1e-3)
    want = kernel_regression(phi @ phi.T, y, pt @ phi.T, ridge=1e-3)
    assert torch.allclose(got, want, rtol=1e-8, atol=1e-8)


def test_errors():
    phi, pt, _ = _data(6, 4, 2)
    with pytest.raises(ValueError, match="y_train must be"):
        feature_regression(phi, torch.zeros(5), pt)
    with pytest.raises(ValueError, match="phi_test must have the feature shape"):
        feature_regression(phi, torch.zeros(6), torch.zeros(2, 5))
    with pytest.raises(ValueError, match="y_train must be \\(n, O\\)"):
        feature_regression(phi.reshape(6, 2, 2), torch.zeros(6), pt.reshape(2, 2, 2))
    with pytest.raises(ValueError, match="finite and >= 0"):
        feature_regression(phi, torch.zeros(6), pt, ridge=-1.0)
    with pytest.raises(ValueError, match="NaN"):
        feature_regression(phi * torch.nan, torch.zeros(6), pt)
    with pytest.raises(TypeError):
        feature_regression([[1.0]], torch.zeros(1), pt)
