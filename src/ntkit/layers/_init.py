"""Random draws for finite modules, reproducible from a ``torch.Generator``."""

from __future__ import annotations

import torch


def normal(shape: tuple[int, ...], generator: torch.Generator, std: float = 1.0) -> torch.Tensor:
    """Float64 draw of shape ``shape`` from N(0, std^2), on the CPU."""
    return torch.randn(shape, generator=generator, dtype=torch.float64) * std
