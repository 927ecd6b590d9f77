"""Kernel metrics against their direct formulas (explicit centering matrices, HSIC, numpy)."""

import math

import numpy as np
import pytest
import torch

from ntkit import analysis as A


def _psd(n, rank, seed):
    rng = np.random.default_rng(seed)
    f = rng.standard_normal((n, rank))
    return f @ f.T + 0.3  # a constant offset, which centering removes


def _hsic(k, m):
    n = k.shape[0]
    h = np.eye(n) - np.ones((n, n)) / n
    return np.trace(k @ h @ m @ h) / (n - 1) ** 2


def test_center_matches_explicit_h():
    k = _psd(7, 3, 0)
    h = np.eye(7) - np.ones((7, 7)) / 7
    np.testing.assert_allclose(A.center(torch.from_numpy(k)).numpy(), h @ k @ h, atol=1e-12)


def test_cka_and_distance_match_hsic_and_cosine():
    k1, k2 = _psd(9, 4, 1), _psd(9, 5, 2)
    ref = _hsic(k1, k2) / math.sqrt(_hsic(k1, k1) * _hsic(k2, k2))
    assert A.cka(k1, k2) == pytest.approx(ref, rel=1e-12)
    assert A.kernel_distance(k1, k2) == pytest.approx(1 - ref, rel=1e-12)
    raw = 1 - (k1 * k2).sum() / (np.linalg.norm(k1) * np.linalg.norm(k2))
    assert A.kernel_distance(k1, k2, centered=False) == pytest.approx(raw, rel=1e-12)
    assert A.kernel_distance(k1, 5 * k1) == pytest.approx(0, abs=1e-14)
    assert A.cka(torch.from_numpy(k1), torch.from_numpy(k1).float()) == pytest.approx(1, abs=1e-6)


def test_alignment_with_labels_and_targets():
    k = _psd(8, 3, 3)
    labels = np.array([0, 1, 2, 0, 1, 2, 0, 1])
    y = np.eye(3)[labels]
    t = y @ y.T
    h = np.eye(8) - 1 / 8
    kc, tc = h @ k @ h, h @ t @ h
    ref = (kc * tc).sum() / (np.linalg.norm(kc) * np.linalg.norm(tc))
    assert A.alignment(k, torch.from_numpy(labels)) == pytest.approx(ref, rel=1e-12)
    assert A.alignment(k, y) == pytest.approx(ref, rel=1e-12)
    raw = (k * t).sum() / (np.linalg.norm(k) * np.linalg.norm(t))
    assert A.alignment(k, y, centered=False) == pytest.approx(raw, rel=1e-12)
    z = np.random.default_rng(0).standard_normal(8)
    assert A.alignment(np.outer(z, z), z) == pytest.approx(1, abs=1e-12)


def test_spectra_helpers_on_known_spectra():
    rng = np.random.default_rng(4)
    q, _ = np.linalg.qr(rng.standard_normal((6, 6)))
    lam = np.array([5.0, 3.0, 2.0, 1.0, 0.5, 0.25])
    k = q @ np.diag(lam) @ q.T
    np.testing.assert_allclose(A.eigenvalues(k).numpy(), lam, rtol=1e-12)
    np.testing.assert_allclose(A.eigenvalues(k, k_top=2).numpy(), lam[:2], rtol=1e-12)
    assert A.condition_number(k) == pytest.approx(20, rel=1e-10)
    assert A.top_k_mass(k, 2) == pytest.approx(34 / np.sum(lam**2), rel=1e-12)
    p = lam / lam.sum()
    assert A.effective_rank(k) == pytest.approx(np.exp(-(p * np.log(p)).sum()), rel=1e-12)
    # r equal eigenvalues and zeros: effective rank exactly r
    flat = q @ np.diag([1.0, 1, 1, 0, 0, 0]) @ q.T
    assert A.effective_rank(flat) == pytest.approx(3, rel=1e-9)
    assert A.condition_number(flat) == math.inf


def test_bad_input():
    k = _psd(5, 2, 0)
    with pytest.raises(ValueError, match=r"square kernel matrix"):
        A.cka(k, np.ones((5, 4)))
    with pytest.raises(ValueError, match="mode='trace'"):
        A.eigenvalues(np.ones((3, 3, 2, 2)))
    with pytest.raises(ValueError, match="same shape"):
        A.kernel_distance(k, _psd(4, 2, 0))
    with pytest.raises(ValueError, match="zero Frobenius norm"):
        A.cka(k, np.ones((5, 5)))
    with pytest.raises(ValueError, match=r"shape \(5,\) or \(5, O\)"):
        A.alignment(k, np.ones(4))
    with pytest.raises(ValueError, match="NaN"):
        A.effective_rank(np.full((2, 2), np.nan))
    with pytest.raises(ValueError, match="k_top"):
        A.eigenvalues(k, k_top=6)
    with pytest.raises(TypeError, match="numpy"):
        A.cka([[1.0]], [[1.0]])
