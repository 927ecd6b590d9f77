"""Progress bars on long kernels: ``net.kernel(progress=None)`` shows one only when slow."""

import pytest
import torch

from ntkit import layers as L
from ntkit.tiling import _progress


def _net():
    return L.serial(L.Dense(8, 1.3, 0.1), L.ReLU(), L.Dense(1, 1.1))


@pytest.fixture
def started(monkeypatch):
    """Counts bars started (deferred ones) and entered (immediate ones)."""
    calls = []
    real_start = _progress.Progress.start

    def start(self):
        calls.append("start")
        return real_start(self)

    monkeypatch.setattr(_progress.Progress, "start", start)
    return calls


def _tiles(n=1100):  # three 512-row tile rows: six tiles of the upper triangle
    return torch.randn(n, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def test_deferred_bar_appears_only_on_slow_kernels(monkeypatch, started):
    x = _tiles()
    quiet = _net().kernel(x).ntk  # default: 3 s delay, this takes well under it
    assert started == []
    monkeypatch.setattr(_progress, "DEFER_S", 0.0)  # "slow": every tile is past the delay
    shown = _net().kernel(x).ntk
    assert started == ["start"]
    torch.testing.assert_close(shown, quiet, rtol=0, atol=0)
    _net().kernel(x, progress=False)
    assert started == ["start"]  # never with progress=False


def test_bar_from_the_start_counts_every_tile(monkeypatch):
    seen = []
    real = _progress.TileProgress.advance

    def advance(self, n=1):
        seen.append(n)
        return real(self, n)

    monkeypatch.setattr(_progress.TileProgress, "advance", advance)
    _net().kernel(_tiles(), progress=True)
    assert len(seen) == 6


def test_internal_kernels_honour_progress_false(monkeypatch, started):
    # scikit-learn's forward-mode pass and NNGP diagonal run net.kernel with the wrapper's
    # setting: never a bar with progress=False, however long the kernel
    import numpy as np

    from ntkit.sklearn import NNGPKernel, NTKKernel

    monkeypatch.setattr(_progress, "DEFER_S", 0.0)
    x = np.random.default_rng(0).normal(size=(1100, 3))
    NTKKernel(depth=1, activation="erf", progress=False)(x[:600], eval_gradient=True)
    NNGPKernel(depth=1, activation="erf", progress=False).diag(x)
    assert started == []


def test_deferred_bar_counts_tiles_done_before():
    with _progress.tile_progress(10, done=6, enabled=None) as bar:
        for _ in range(4):
            bar.advance()
    assert bar.done == 10
