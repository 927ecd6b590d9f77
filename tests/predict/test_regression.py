"""The direct solver behind kernel regression: correctness, no side effects, fallbacks."""

import pytest
import torch

from ntkit.predict import regression, solve_psd
from tests.predict.helpers import randn


@pytest.mark.parametrize("in_place_min_n", [4096, 0], ids=["torch", "scipy-in-place"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_solve_psd_with_ridge_matches_linalg_solve_and_leaves_input_alone(
    dtype, in_place_min_n, monkeypatch
):
    # both Cholesky routes: torch's (small n) and scipy's in-place LAPACK (large n)
    monkeypatch.setattr(regression, "IN_PLACE_MIN_N", in_place_min_n)
    x = randn(40, 3, seed=0)
    k = torch.exp(-(torch.cdist(x, x) ** 2)).to(dtype)
    y = randn(40, 2, seed=1).to(dtype)
    before = k.clone()
    sol = solve_psd(k, y, ridge=0.1)
    assert torch.equal(k, before) and sol.dtype == dtype
    ref = torch.linalg.solve(k.double() + 0.1 * torch.eye(40, dtype=torch.float64), y.double())
    tol = 1e-10 if dtype == torch.float64 else 1e-4
    torch.testing.assert_close(sol.double(), ref, atol=tol, rtol=tol)


@pytest.mark.parametrize("in_place_min_n", [4096, 0], ids=["torch", "scipy-in-place"])
def test_indefinite_matrix_refused_or_projected_on_request(in_place_min_n, monkeypatch):
    monkeypatch.setattr(regression, "IN_PLACE_MIN_N", in_place_min_n)
    k = torch.diag(torch.tensor([2.0, 1.0, -3.0], dtype=torch.float64))  # Cholesky fails
    y = torch.ones(3, 1, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"not positive semi-definite.*eigenvalue is -2.5"):
        solve_psd(k, y, ridge=0.5)
    sol = solve_psd(k, y, ridge=0.5, repair="project")
    # documented: with repair="project" the negative eigenvalues are discarded
    torch.testing.assert_close(sol[:, 0], torch.tensor([0.4, 2.0 / 3.0, 0.0], dtype=torch.float64))


def test_ridgeless_singular_matrix_gives_the_minimum_norm_solution():
    phi = randn(6, 2, seed=2)
    k = phi @ phi.T
    y = k @ randn(6, 1, seed=3)
    torch.testing.assert_close(solve_psd(k, y), torch.linalg.pinv(k) @ y, atol=1e-10, rtol=1e-8)


def test_solve_psd_shape_errors():
    with pytest.raises(ValueError, match="square"):
        solve_psd(torch.ones(3, 2), torch.ones(3, 1))
    with pytest.raises(ValueError, match=r"y must be \(n, m\)"):
        solve_psd(torch.eye(3), torch.ones(3))


def test_finite_check_has_no_false_alarm_on_overflowing_sums():
    from ntkit.predict._checks import check_finite_fast

    check_finite_fast(torch.full((3, 3), 1e308, dtype=torch.float64), "k")  # sum = inf: no error
    bad = torch.eye(3, dtype=torch.float64)
    bad[1, 2] = torch.nan
    with pytest.raises(ValueError, match=r"k contains 1 NaN .*first at index \(1, 2\)"):
        check_finite_fast(bad, "k")
