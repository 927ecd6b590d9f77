"""Masks for variable-length inputs: ``Masked`` inputs and ``mask_context`` for finite networks.

Sequences (or images) of different lengths are padded to one shape and passed with a
boolean mask ``(n, *spatial)`` (``True`` at real positions) as ``Masked(x, mask)``, where
inputs go: ``net.kernel(Masked(x1, m1), Masked(x2, m2))``. Like a graph's adjacency (see
:mod:`ntkit.layers.graph`), the mask reaches every tile of the kernel computation
(``Kernel.mask1``/``mask2``); the finite network reads it inside ``with mask_context(mask):``.

Mask-aware layers: ``GlobalSelfAttention`` attends only to real positions (padding keys get
zero weight), ``GlobalAvgPool``/``GlobalSumPool`` average/sum over real positions only,
``Recurrent`` runs left-padded sequences from their first real step. Other
layers act on every position, padding included, in the finite and the infinite network
alike; a mask must keep matching the activations' spatial shape, so only shape-preserving
layers (e.g. stride-1 ``"same"`` convolutions, activations, ``LayerNorm`` over channels) may
come between the input and a mask-aware layer.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from ntkit.errors import LayerSpecError

__all__ = ["Masked", "check_mask", "current_mask", "mask_context"]

_MASK: contextvars.ContextVar[torch.Tensor | None] = contextvars.ContextVar(
    "ntkit_mask", default=None
)


@dataclass(frozen=True, eq=False)
class Masked:
    """A batch with a mask of real positions.

    Attributes:
        x: ``(n, C, *spatial)`` inputs, padded (tensor or array).
        mask: ``(n, *spatial)`` booleans, ``True`` at real positions (at least one per sample).
    """

    x: object
    mask: object

    def __len__(self) -> int:
        return len(self.x)


def as_mask(mask, shape: tuple[int, ...], who: str) -> torch.Tensor:
    """Validate a mask against inputs of shape ``(n, C, *spatial)``; return it as bool.

    Raises:
        ValueError: a wrong shape, or a sample without any real position.
    """
    mask = torch.as_tensor(mask)
    expected = (shape[0], *shape[2:])
    if len(shape) < 3 or tuple(mask.shape) != expected:
        raise ValueError(
            f"{who} mask must have shape (n, *spatial) = {expected} for inputs of shape "
            f"{tuple(shape)} (channels-first, with spatial axes); got {tuple(mask.shape)}."
        )
    mask = mask.to(torch.bool)
    empty = ~mask.reshape(mask.shape[0], -1).any(dim=1)
    if bool(empty.any()):
        raise ValueError(
            f"{who} mask leaves sample {int(empty.nonzero()[0])} without any real position."
        )
    return mask


def split_masked(x, name: str) -> tuple[object, torch.Tensor | None]:
    """``(inputs, mask)`` for :class:`Masked`, else ``(x, None)``."""
    if not isinstance(x, Masked):
        return x, None
    if not isinstance(x.x, (torch.Tensor, np.ndarray)):
        raise TypeError(
            f"{name}: Masked holds inputs as a tensor or array (Masked(Graphs(...)) is not "
            f"supported yet); got {type(x.x).__name__}."
        )
    inputs = torch.as_tensor(x.x)
    return inputs, as_mask(x.mask, tuple(inputs.shape), name)


@contextlib.contextmanager
def mask_context(mask) -> Iterator[None]:
    """Run finite networks on padded inputs with this mask ``(n, *spatial)`` of real positions."""
    token = _MASK.set(torch.as_tensor(mask).to(torch.bool))
    try:
        yield
    finally:
        _MASK.reset(token)


def current_mask(x: torch.Tensor) -> torch.Tensor | None:
    """The mask of :func:`mask_context` for activations ``x`` ``(n, C, *spatial)``, or ``None``.

    Raises:
        ValueError: the mask does not match ``x``'s batch and spatial shape.
    """
    mask = _MASK.get()
    if mask is None:
        return None
    expected = (x.shape[0], *x.shape[2:])
    if tuple(mask.shape) != expected:
        raise ValueError(
            f"mask_context holds a mask of shape {tuple(mask.shape)}, but the activations "
            f"here have batch and spatial shape {expected}; masks travel through "
            "shape-preserving layers only."
        )
    return mask.to(x.device)


def check_mask(who: str, mask: torch.Tensor | None, lengths: tuple[int, ...]) -> None:
    """Refuse a kernel mask whose spatial shape no longer matches the activations'."""
    if mask is not None and tuple(mask.shape[1:]) != tuple(lengths):
        raise LayerSpecError(
            f"{who}: the inputs' mask has spatial shape {tuple(mask.shape[1:])}, but the "
            f"activations here have {tuple(lengths)}; masks travel through shape-preserving "
            "layers only (e.g. stride-1 'same' convolutions)."
        )
