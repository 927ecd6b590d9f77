"""Kernel functions shared by the tiling tests and their subprocesses (importable by name)."""

from __future__ import annotations

import time

import torch


def rbf(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``exp(-|a - b|^2 / 2)``, written out (no cdist), a closed-form reference kernel."""
    d2 = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T
    return torch.exp(-0.5 * d2.clamp_min(0))


def slow_rbf(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """:func:`rbf` that takes 50 ms per call and counts its tile calls in ``slow_rbf.tiles``.

    (A function attribute: the store's fingerprint of a function covers the values its code
    refers to, so a counter in a global dict would make every call a different function.)
    """
    if a.shape[0] > 1:
        slow_rbf.tiles += 1
    time.sleep(0.05)
    return rbf(a, b)


slow_rbf.tiles = 0


def inputs(n: int = 40, d: int = 3, seed: int = 0) -> torch.Tensor:
    """Deterministic float64 inputs."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64)


def main(store: str) -> None:
    """Subprocess entry point: the slow kernel into ``store`` (killed part-way by a test)."""
    from ntkit.tiling import kernel_store

    kernel_store(slow_rbf, inputs(), store=store, tile=4, progress=False)
