"""Checks on user input at the public boundary: clear errors, no silent reshapes."""

from __future__ import annotations

import numpy as np
import torch

from ntkit.settings import default_kernel_dtype


def as_batch(
    x,
    name: str,
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    min_rank: int = 2,
) -> torch.Tensor:
    """Convert ``x`` to a floating tensor batch and check it.

    Args:
        x: A torch tensor or numpy array of shape ``(n, *features)``.
        name: The argument's name, used in error messages.
        dtype: Target floating dtype; ``None`` keeps a floating input's dtype and converts
            integer input to the kernel default (float64).
        device: Target device; ``None`` keeps the input's device.
        min_rank: Smallest accepted rank, batch axis included.

    Returns:
        The checked tensor, shape ``(n, *features)``.

    Raises:
        TypeError: ``x`` is not a tensor/array or is complex.
        ValueError: ``x`` has too few axes, an empty batch, or NaN/Inf entries.
    """
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    elif not isinstance(x, torch.Tensor):
        raise TypeError(
            f"{name} must be a torch.Tensor or numpy.ndarray of shape (n, ...); "
            f"got {type(x).__name__}."
        )
    if x.is_complex():
        raise TypeError(f"{name} must be real-valued; got dtype {x.dtype}.")
    if dtype is None:
        dtype = x.dtype if x.is_floating_point() else default_kernel_dtype()
    x = x.to(dtype=dtype, device=device)
    if x.ndim < min_rank:
        raise ValueError(
            f"{name} must have shape (n, ...) with at least {min_rank} axes (batch first); "
            f"got shape {tuple(x.shape)}."
        )
    if x.shape[0] == 0:
        raise ValueError(f"{name} is an empty batch (shape {tuple(x.shape)}); need n >= 1.")
    if any(size == 0 for size in x.shape[1:]):
        raise ValueError(
            f"{name} has zero features (shape {tuple(x.shape)}); every sample needs at least "
            "one feature (and every spatial axis at least one location)."
        )
    check_finite(x, name)
    return x


def check_finite(x: torch.Tensor, name: str) -> None:
    """Raise ``ValueError`` naming the first non-finite entry of ``x``, if any."""
    finite = torch.isfinite(x)
    if not bool(finite.all()):
        bad = (~finite).nonzero()
        first = tuple(int(i) for i in bad[0])
        n_nan = int(torch.isnan(x).sum())
        n_inf = int(torch.isinf(x).sum())
        raise ValueError(
            f"{name} contains {n_nan} NaN and {n_inf} Inf entries (first at index {first}); "
            "inputs must be finite."
        )


def check_same_features(x1: torch.Tensor, x2: torch.Tensor) -> None:
    """Raise ``ValueError`` when two batches disagree in per-sample shape, dtype or device."""
    if x1.shape[1:] != x2.shape[1:]:
        raise ValueError(
            f"x1 and x2 must have the same per-sample shape; got x1 {tuple(x1.shape)} and "
            f"x2 {tuple(x2.shape)}."
        )
    if x1.device != x2.device:
        raise ValueError(f"x1 is on {x1.device} but x2 is on {x2.device}; use one device.")
