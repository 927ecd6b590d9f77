"""The reproductions: their claims against theory, and their pages."""

import pytest

from ntkit.reproduce import EXPERIMENTS, reproduce


def test_ntk_convergence_quick_scaling(tmp_path):
    # Theory: the empirical NTK's fluctuation around the analytic NTK has standard deviation
    # O(width^-1/2), so its log-log slope is -0.5. Four widths (64..512) with two seeds give
    # a noisy slope estimate (full run: -0.55); [-0.85, -0.3] rejects both "no convergence"
    # (slope 0) and a wrong rate such as width^-1. The NTK change and the gap to the kernel
    # predictor must also shrink with width.
    results = reproduce("ntk-convergence", tmp_path, quick=True, seed=0)
    assert -0.85 < results["slope of NTK error at init vs width"] < -0.3
    assert results["slope of relative NTK change during training vs width"] < -0.3
    assert results["slope of test-output gap to the kernel predictor vs width"] < -0.1
    html = (tmp_path / "ntk-convergence.html").read_text()
    assert "width^-1/2" in html or "Fitted log-log slopes" in html


def test_unknown_experiment_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown experiment 'nope'"):
        reproduce("nope")


def test_pntk_quick_scaling(tmp_path):
    # Mohamadi et al. 2023: at initialization the pNTK (x) I_O differs from the full eNTK by
    # O(width^-1/2) (the off-diagonal output blocks and the spread of the diagonal ones are
    # finite-width fluctuations), so all three differences fall with slope about -0.5.
    # Same tolerance reasoning as above: [-0.85, -0.3] rejects 0 and -1.
    results = reproduce("pntk", tmp_path, quick=True, seed=0)
    for key in (
        "slope of pNTK error vs width",
        "slope of lambda_max difference vs width",
        "slope of prediction difference vs width",
    ):
        assert -0.85 < results[key] < -0.3, key
    assert (tmp_path / "pntk.html").exists()


def test_min_eigenvalue_quick_threshold(tmp_path):
    # Below P = N the N x N kernel J J^T has rank <= P, so lambda_min is zero up to rounding:
    # eigvalsh of a float64 matrix is accurate to about N * eps * lambda_max = 2e-14 relative
    # (N = 100); 1e-12 leaves margin. From P = 4N on, Bombari et al. bound lambda_min below by
    # a constant times the infinite-width NTK's lambda_min; a 100x lower margin (0.01) rejects
    # a rank-deficient kernel while tolerating the constant.
    results = reproduce("min-eigenvalue", tmp_path, quick=True, seed=0)
    assert results["largest lambda_min / lambda_max with P < N"] < 1e-12
    assert results["smallest lambda_min / lambda_inf with P >= 4N"] > 0.01


def test_curves_half_width_and_separation(tmp_path):
    # Deterministic (analytic kernels, fixed curves). Wang et al.: the half-width of the deep
    # ReLU NTK's angular profile shrinks like 1/depth for large depth (slope -1); at depths
    # 8..32 the finite-depth correction keeps it a little above -1, hence [-1.2, -0.7].
    # One hidden layer without bias is not universal on the sphere: the two interleaved
    # curves stay unseparated (about chance), while depth 4 separates every test point.
    results = reproduce("curves", tmp_path, quick=True)
    assert -1.2 < results["slope of half-width vs depth (depth >= 8)"] < -0.7
    assert results["curve test accuracy, depth 1"] < 0.6
    assert results["curve test accuracy, depth 4"] == 1.0


@pytest.mark.slow
def test_full_reproductions_match_the_readme_claims(tmp_path):
    # The default (non-quick) runs quoted in the README: more widths and seeds, so the
    # slopes are estimated more tightly than in the quick tests above.
    conv = reproduce("ntk-convergence", tmp_path)
    assert -0.7 < conv["slope of NTK error at init vs width"] < -0.4
    assert conv["slope of relative NTK change during training vs width"] < -0.5
    assert conv["slope of test-output gap to the kernel predictor vs width"] < -0.2
    pntk = reproduce("pntk", tmp_path)
    assert -0.7 < pntk["slope of pNTK error vs width"] < -0.35
    eig = reproduce("min-eigenvalue", tmp_path)
    assert eig["largest lambda_min / lambda_max with P < N"] < 1e-12
    assert eig["lambda_min / lambda_inf at the largest P"] > 0.5
    curves = reproduce("curves", tmp_path)
    assert -1.1 < curves["slope of half-width vs depth (depth >= 8)"] < -0.8
    poly = reproduce("polynomial", tmp_path)
    assert poly["smallest gain mu_l/mu_0 (degree 4 over degree 1), l = 1..30"] > 1.0
    sto = reproduce("sample-then-optimize", tmp_path)
    assert sto["largest |trained sample - Matheron sample| / max |sample|"] < 1e-6
    regret = sto["Thompson sampling: mean simple regret"]
    assert regret < sto["random search: expected simple regret"]


def test_sample_then_optimize_draws_exact_posterior_samples():
    # Each trained copy must equal Matheron's exact posterior sample for its own delta0 and
    # eps (L-BFGS to gradient norm 1e-10: 1e-6 relative leaves margin), and 100 draws must
    # match the GP posterior's moments: the sample mean within 4.5 standard errors at all
    # 20 test points (a false alarm has probability < 20 * 7e-6), the covariance within 3x
    # the Frobenius error expected from 100 Gaussian draws.
    import torch

    from ntkit.datasets import load_digits
    from ntkit.reproduce._common import mlp_spec
    from ntkit.reproduce.sample_then_optimize import _moments

    data = load_digits(40, 20, seed=0)
    y = (data.labels_train == 0).double()[:, None] - 0.1
    model = mlp_spec(32, 1).module((64,), seed=0, dtype=torch.float64)
    res, _, _ = _moments(model, data.x_train, y, data.x_test, 100, seed=1)
    assert res["largest |trained sample - Matheron sample| / max |sample|"] < 1e-6
    assert res["largest |z| of the sample mean (posterior sd / sqrt(S) units)"] < 4.5
    expected = res["covariance relative error expected from S draws"]
    assert res["covariance relative error"] < 3 * expected


def test_polynomial_spectra_and_funk_hecke_against_a_gram_matrix(tmp_path):
    # Funk-Hecke eigenvalues cross-checked against the spectrum of the kernel matrix of
    # N = 1500 uniform points on the sphere: eig(K / N) -> mu_l / (4 pi) with multiplicity
    # 2l + 1. The sampling error of these top eigenvalues is at most 0.5% over seeds 0-2
    # (it is below the O(N^-1/2) bound), so 2% tolerates it 4x and still catches a wrong
    # normalization or Legendre index.
    import math

    import torch

    from ntkit.reproduce.polynomial import _spec, harmonic_eigenvalues

    net = _spec(2)
    mu = harmonic_eigenvalues(net, 2)  # l = 0, 1, 2
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1500, 3, generator=g, dtype=torch.float64)
    x = x / x.norm(dim=1, keepdim=True) * 3**0.5
    ev = torch.linalg.eigvalsh(net.kernel(x).ntk / 1500).flip(0)
    for l_deg, block in ((0, ev[:1]), (1, ev[1:4]), (2, ev[4:9])):
        assert abs(float(block.mean()) / (mu[l_deg] / (4 * math.pi)) - 1) < 0.02, l_deg
    # products raise every relative eigenvalue; the ReLU NTK on S^2 decays like l^-3
    res = reproduce("polynomial", tmp_path, quick=True)
    assert res["smallest gain mu_l/mu_0 (degree 3 over degree 1), l = 1..30"] > 1.0
    assert -3.3 < res["decay exponent of mu_l, degree 1 (even l >= 8)"] < -2.7


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(EXPERIMENTS))
def test_every_reproduction_page_has_a_plot_and_a_table(tmp_path, name):
    reproduce(name, tmp_path, quick=True)
    page = (tmp_path / f"{name}.html").read_text()
    assert "<img src='data:image/png;base64," in page and "<table>" in page
