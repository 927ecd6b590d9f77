"""Float layer parameters that may also be tensors (for gradients through kernels).

Every float parameter of a layer (``w_std``, ``b_std``, activation parameters, ``eps``, ...)
accepts a Python number or a one-element floating tensor. A number is stored as ``float``;
a tensor is stored as a 0-dim tensor *with its autograd history*, so that
``net.kernel(x).nngp.sum().backward()`` reaches it. Domains are checked on the value in
both cases, in the constructor.
"""

from __future__ import annotations

import contextlib
import math
import numbers
from collections.abc import Iterator

import numpy as np
import torch

__all__ = [
    "Param",
    "hyperparameter",
    "layer_hyperparameters",
    "safe_sqrt",
    "straight_clamp",
    "substituted",
    "tracks_grad",
    "value_of",
]

#: A layer parameter: a float, or a 0-dim floating tensor that may require grad.
Param = float | torch.Tensor


def value_of(p: Param) -> float:
    """The numeric value of a parameter (no autograd)."""
    return float(p.detach()) if isinstance(p, torch.Tensor) else float(p)


def hyperparameter(
    value,
    name: str,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    strict_minimum: bool = False,
    strict_maximum: bool = False,
    allow_none: bool = False,
) -> Param | None:
    """Validate a float layer parameter; keep a tensor (and its autograd graph) as a tensor.

    Args:
        value: A real number, a one-element floating tensor, or ``None`` (if allowed).
        name: The parameter's name for error messages, e.g. ``"Dense w_std"``.
        minimum: Smallest allowed value (inclusive unless ``strict_minimum``).
        maximum: Largest allowed value (inclusive unless ``strict_maximum``).
        strict_minimum: Exclude ``minimum`` itself.
        strict_maximum: Exclude ``maximum`` itself.
        allow_none: Accept ``None`` (returned unchanged).

    Returns:
        ``float``, a 0-dim tensor (the caller's, reshaped), or ``None``.

    Raises:
        TypeError: not a real number or a one-element floating tensor.
        ValueError: NaN, infinite, or outside ``[minimum, maximum]``.
    """
    if value is None:
        if allow_none:
            return None
        raise TypeError(f"{name} must be a real number; got None.")
    if isinstance(value, torch.Tensor):
        if value.numel() != 1 or not value.is_floating_point():
            raise TypeError(
                f"{name} must be a real number or a one-element floating tensor; got a "
                f"tensor of shape {tuple(value.shape)} and dtype {value.dtype}."
            )
        out: Param = value.reshape(())
        number = float(value.detach())
    elif isinstance(value, np.ndarray) and value.size == 1 and value.dtype.kind in "fiu":
        number = float(value.reshape(()))
        out = number
    elif isinstance(value, numbers.Real) and not isinstance(value, bool):
        number = float(value)
        out = number
    else:
        raise TypeError(f"{name} must be a real number; got {type(value).__name__} {value!r}.")
    if minimum == 0.0 and not strict_minimum and maximum is None:
        expected = "a finite non-negative number"
    else:
        parts = []
        if minimum is not None:
            parts.append(f"{'>' if strict_minimum else '>='} {minimum}")
        if maximum is not None:
            parts.append(f"{'<' if strict_maximum else '<='} {maximum}")
        expected = "a finite number" + (" " + " and ".join(parts) if parts else "")
    bad = not math.isfinite(number)
    bad |= minimum is not None and (number < minimum or (strict_minimum and number == minimum))
    bad |= maximum is not None and (number > maximum or (strict_maximum and number == maximum))
    if bad:
        raise ValueError(f"{name} must be {expected}; got {number}.")
    return out


def tracks_grad(*values) -> bool:
    """Whether autograd records operations on any of ``values`` (so in-place is unsafe).

    Reverse mode (a tensor that requires grad) or forward mode (a dual tensor of
    ``torch.autograd.forward_ad``: its tangent must reach the kernel, so the layers take
    their out-of-place path whose custom functions define ``jvp``).
    """
    if any(isinstance(v, torch.Tensor) and is_dual(v) for v in values):
        return True
    if not torch.is_grad_enabled():
        return False
    return any(isinstance(v, torch.Tensor) and v.requires_grad for v in values)


def is_dual(v: torch.Tensor) -> bool:
    """Whether ``v`` carries a forward-mode tangent."""
    import torch.autograd.forward_ad as fwad

    return fwad.unpack_dual(v).tangent is not None


def layer_hyperparameters(net, *, dual: bool = False) -> list[torch.Tensor]:
    """Tensor parameters that require grad, anywhere in a layer description (deduplicated).

    Walks the attributes of every layer (and of nested layers, lists and tuples of them).
    With ``dual``: the parameters that carry a forward-mode tangent instead.
    """
    from ntkit.layers.base import Layer

    found: dict[int, torch.Tensor] = {}
    seen: set[int] = set()

    def visit(obj):
        if isinstance(obj, torch.Tensor):
            if is_dual(obj) if dual else obj.requires_grad:
                found.setdefault(id(obj), obj)
        elif isinstance(obj, (list, tuple)):
            for item in obj:
                visit(item)
        elif isinstance(obj, Layer) and id(obj) not in seen:
            seen.add(id(obj))
            for item in vars(obj).values():
                visit(item)

    visit(net)
    return list(found.values())


@contextlib.contextmanager
def substituted(net, mapping: dict[int, torch.Tensor]) -> Iterator[None]:
    """Temporarily replace tensor attributes of the layers in ``net`` (by ``id``), then restore.

    The backward pass differentiates with respect to detached copies of the parameters, so
    that a parameter computed from another (``w_std=2 * w``) is not counted twice.
    """
    from ntkit.layers.base import Layer

    changed: list[tuple[object, str, object]] = []
    seen: set[int] = set()

    def visit(obj):
        if isinstance(obj, (list, tuple)):
            for item in obj:
                visit(item)
        elif isinstance(obj, Layer) and id(obj) not in seen:
            seen.add(id(obj))
            for name, value in list(vars(obj).items()):
                if isinstance(value, torch.Tensor) and id(value) in mapping:
                    changed.append((obj, name, value))
                    setattr(obj, name, mapping[id(value)])
                else:
                    visit(value)

    try:
        visit(net)
        yield
    finally:
        for obj, name, value in reversed(changed):
            setattr(obj, name, value)


class _SafeSqrt(torch.autograd.Function):
    """``sqrt(x)`` for ``x >= 0`` whose derivative at ``x == 0`` is taken as 0, not infinity.

    Used where ``x`` is a squared gap that is exactly 0 on a smooth manifold (perfectly
    correlated arguments, ``q12^2 = q11 q22``): along that manifold the gap stays 0, so the
    one-sided derivative that keeps the arguments correlated is 0.
    """

    @staticmethod
    def forward(x):
        return x.sqrt()

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(output)
        ctx.save_for_forward(output)

    @staticmethod
    def _times_derivative(root: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """``g / (2 sqrt(x))`` where the root is positive, 0 on the correlated manifold."""
        positive = root > 0
        safe = torch.where(positive, root, torch.ones_like(root))
        return torch.where(positive, g / (2.0 * safe), torch.zeros_like(g))

    @staticmethod
    def backward(ctx, grad):
        (root,) = ctx.saved_tensors
        return _SafeSqrt._times_derivative(root, grad)

    @staticmethod
    def jvp(ctx, tangent):
        # forward mode (dual tensors): the same derivative
        (root,) = ctx.saved_tensors
        return _SafeSqrt._times_derivative(root, tangent)


def safe_sqrt(x: torch.Tensor) -> torch.Tensor:
    """``x.sqrt()`` with derivative 0 (instead of infinity) where ``x == 0``."""
    return _SafeSqrt.apply(x) if tracks_grad(x) else x.sqrt()


def straight_clamp(x: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """``x.clamp(lo, hi)`` whose derivative is 1 everywhere (for rounding-level overshoots).

    A cosine ``q12 / sqrt(q11 q22)`` may round to ``1 + eps``; clamping it must not cut
    the gradient.
    """
    if not tracks_grad(x):
        return x.clamp(lo, hi)
    return x + (x.clamp(lo, hi) - x).detach()
