"""Properties every kernel must have, on randomly drawn network descriptions."""

import numpy as np
import pytest
import torch

from ntkit import layers as L

ACTS = [
    L.ReLU,
    L.Erf,
    L.GELU,
    lambda: L.LeakyReLU(0.1),
    L.Abs,
    lambda: L.Sin(1.0, 1.0, 0.2),
    L.RBF,
    lambda: L.Polynomial([0.1, 1.0, 0.3]),
    lambda: L.RectifiedMonomial(2),
]


def random_spec(seed: int) -> L.Layer:
    """A random MLP, sometimes with a residual or product block."""
    g = np.random.default_rng(seed)
    layers = [L.Dense(int(g.integers(2, 9)), float(g.uniform(0.5, 2)), float(g.uniform(0, 0.5)))]
    for _ in range(int(g.integers(1, 4))):
        act = ACTS[int(g.integers(len(ACTS)))]()
        kind = int(g.integers(3))
        if kind == 0:
            layers += [act, L.Dense(6, float(g.uniform(0.5, 2)), 0.1)]
        elif kind == 1:  # residual: x + Dense(act(x))
            layers += [
                L.FanOut(2),
                L.parallel(L.Identity(), L.serial(act, L.Dense(6, 1.0, 0.2))),
                L.FanInSum(),
            ]
            layers = [*layers[:-3], L.Dense(6, 1.0), *layers[-3:]]
        else:  # product of two fresh branches
            layers += [
                act,
                L.FanOut(2),
                L.parallel(L.Dense(6, 1.2), L.Dense(6, 0.8, 0.3)),
                L.FanInProd(),
                L.Dense(6, 1.0, 0.1),
            ]
    layers.append(L.Dense(2, 1.0, 0.1))
    return L.serial(*layers)


def _x(n, seed, d=5):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("seed", range(8))
def test_symmetric_psd_and_x2_none(seed):
    net = random_spec(seed)
    x = _x(9, seed)
    k = net.kernel(x)
    for t in (k.nngp, k.ntk):
        assert torch.equal(t, t.T)  # exactly symmetric
        evals = torch.linalg.eigvalsh(t)
        assert float(evals.min()) > -1e-10 * float(evals.max())
    k2 = net.kernel(x, x.clone())
    torch.testing.assert_close(k2.nngp, k.nngp, rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(k2.ntk, k.ntk, rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(torch.diagonal(k.nngp), k.cov1, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("seed", range(8))
def test_batch_split_and_tile_invariance(seed):
    net = random_spec(seed)
    x1, x2 = _x(7, seed), _x(5, seed + 100)
    k = net.kernel(x1, x2)
    top, bottom = net.kernel(x1[:3], x2), net.kernel(x1[3:], x2)
    torch.testing.assert_close(torch.cat([top.nngp, bottom.nngp]), k.nngp, rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(torch.cat([top.ntk, bottom.ntk]), k.ntk, rtol=1e-13, atol=1e-13)
    # a tiny memory budget forces one pair per tile
    tiny = net.kernel(x1, x2, max_memory=7 * 5 * 8 * 2 + 4096)
    torch.testing.assert_close(tiny.nngp, k.nngp, rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(tiny.ntk, k.ntk, rtol=1e-13, atol=1e-13)
    tiny_sym = net.kernel(x1, max_memory=7 * 7 * 8 * 2 + 4096)
    full_sym = net.kernel(x1)
    torch.testing.assert_close(tiny_sym.ntk, full_sym.ntk, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("seed", range(8))
def test_float32_agrees_with_float64(seed):
    net = random_spec(seed)
    x1, x2 = _x(6, seed), _x(4, seed + 7)
    k64 = net.kernel(x1, x2)
    k32 = net.kernel(x1.float(), x2.float(), dtype=torch.float32)
    assert k32.nngp.dtype == torch.float32
    scale = float(k64.ntk.abs().max())
    torch.testing.assert_close(k32.nngp.double(), k64.nngp, rtol=2e-4, atol=2e-5 * scale)
    torch.testing.assert_close(k32.ntk.double(), k64.ntk, rtol=2e-4, atol=2e-5 * scale)


def test_large_symmetric_kernel_uses_several_blocks():
    # more rows than one block, so off-diagonal blocks are mirrored
    net = L.serial(L.Dense(4, 1.5, 0.1), L.ReLU(), L.Dense(1))
    x = _x(600, 0, d=3)
    k = net.kernel(x)
    assert torch.equal(k.ntk, k.ntk.T)
    ref = net.kernel(x, x + 0.0 * x[:1])  # same values, compared as two batches
    torch.testing.assert_close(k.ntk, ref.ntk, rtol=1e-12, atol=1e-12)
    rows = net.kernel(x[500:], x)
    torch.testing.assert_close(k.nngp[500:], rows.nngp, rtol=1e-12, atol=1e-12)
