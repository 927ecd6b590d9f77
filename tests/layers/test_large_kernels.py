"""Kernels large enough for many parallel tiles, against a whole-matrix closed form."""

import math

import pytest
import torch

from ntkit import layers as L


def _relu_mlp_untiled(x1, x2, w, b, depth):
    """Arc-cosine recursion (Cho & Saul 2009) on whole matrices, no tiling."""
    d = x1.shape[1]
    q = w * w * (x1 @ x2.T / d) + b * b
    v1 = w * w * (x1 * x1).sum(1) / d + b * b
    v2 = w * w * (x2 * x2).sum(1) / d + b * b
    t = q.clone()
    for _ in range(depth):
        norm = torch.sqrt(v1[:, None] * v2[None, :])
        theta = torch.arccos(torch.clamp(q / norm, -1.0, 1.0))
        e = norm * (torch.sin(theta) + (math.pi - theta) * torch.cos(theta)) / (2 * math.pi)
        t = t * (math.pi - theta) / (2 * math.pi)
        q = w * w * e + b * b
        v1, v2 = w * w * v1 / 2 + b * b, w * w * v2 / 2 + b * b
        t = q + w * w * t
    return q, t


@pytest.mark.slow
def test_many_tile_kernels_match_the_untiled_closed_form():
    torch.manual_seed(0)
    x = torch.randn(2600, 50, dtype=torch.float64)
    x2 = torch.randn(1900, 50, dtype=torch.float64)
    net = L.serial(
        L.Dense(64, 1.5, 0.05), L.ReLU(), L.Dense(64, 1.5, 0.05), L.ReLU(), L.Dense(1, 1.5, 0.05)
    )
    for a, b in ((x, None), (x, x2)):
        k = net.kernel(a, b)  # 512 x 512 tiles, two at a time
        nngp, ntk = _relu_mlp_untiled(a, a if b is None else b, 1.5, 0.05, 2)
        # arccos near correlation 1 loses about sqrt(eps) in the reference, hence 1e-6
        # absolute on O(1) entries away from the diagonal, exact elsewhere.
        torch.testing.assert_close(k.nngp, nngp, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(k.ntk, ntk, rtol=1e-6, atol=1e-6)
    sym = net.kernel(x)
    assert torch.equal(sym.ntk, sym.ntk.T) and torch.equal(sym.nngp, sym.nngp.T)
