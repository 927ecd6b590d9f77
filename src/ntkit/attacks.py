"""Gradient attacks on any differentiable callable from inputs to outputs.

``fgsm`` (Goodfellow et al. 2015) and ``pgd`` (Madry et al. 2018) take ``fn``: a
``torch.nn.Module``, a kernel predictor (inputs -> kernel -> prediction) or any function whose
output is differentiable in its input. They maximise the loss of ``fn(x_adv)`` against ``y``
inside an L-infinity or L2 ball of radius ``eps`` around each sample, optionally inside an input
range ``clamp=(low, high)``. Only input gradients are taken (``torch.autograd.grad``): the
parameters' ``.grad`` fields are never touched, so adversarial training is a plain loop::

    x_adv = pgd(model, x, y, eps=0.1, steps=10)
    loss = F.cross_entropy(model(x_adv), y); loss.backward(); opt.step()
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from ntkit._validation import as_batch, check_finite

__all__ = ["fgsm", "pgd"]

_NORMS = ("linf", "l2")
_LOSSES = ("cross_entropy", "mse")


def fgsm(
    fn: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    norm: str = "linf",
    loss: str | Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = "cross_entropy",
    clamp: tuple[float, float] | None = None,
) -> torch.Tensor:
    """Fast gradient (sign) method: one step of size ``eps`` up the loss gradient.

    ``linf``: ``x + eps * sign(g)``; ``l2``: ``x + eps * g / ||g||`` per sample (a sample with
    zero gradient stays put). The result is then clipped to ``clamp`` if given.

    Args:
        fn: Callable mapping a batch ``(n, *features)`` to outputs ``(n, O)`` (or ``(n,)`` for
            ``mse``), differentiable in its input.
        x: Clean inputs, shape ``(n, *features)``, floating.
        y: Targets: class indices ``(n,)`` for ``cross_entropy``; an array of the output's
            shape for ``mse``.
        eps: Radius of the perturbation ball, ``>= 0``.
        norm: ``"linf"`` or ``"l2"`` (per-sample norm over all features).
        loss: ``"cross_entropy"``, ``"mse"`` or a callable ``(outputs, y) -> (n,)`` per-sample
            losses.
        clamp: Optional input range ``(low, high)``; adversarial inputs are clipped into it.

    Returns:
        Adversarial inputs of the shape, dtype and device of ``x``, detached.

    Raises:
        ValueError, TypeError: bad options or shapes, non-finite inputs/outputs/gradients, or
            an output that does not depend on the input.
    """
    x, y, loss_fn = _check(fn, x, y, eps=eps, norm=norm, loss=loss, clamp=clamp, steps=1)
    _, grad = _loss_and_grad(fn, x, y, loss_fn)
    x_adv = x + eps * _ascent_direction(grad, norm)
    return _clip_range(x_adv, clamp).detach()


def pgd(
    fn: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    steps: int = 10,
    step_size: float | None = None,
    norm: str = "linf",
    loss: str | Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = "cross_entropy",
    clamp: tuple[float, float] | None = None,
    random_start: bool = False,
    seed: int = 0,
    keep_best: bool = True,
) -> torch.Tensor:
    """Projected gradient ascent on the loss inside the ``eps``-ball (Madry et al. 2018).

    Each step moves by ``step_size`` along the sign of the gradient (``linf``) or the
    normalised gradient (``l2``), projects back onto the ball around ``x`` and clips to
    ``clamp``. With ``keep_best`` (default) each sample returns the iterate with the largest
    loss seen (the clean input counts), so the attack never does worse than no attack.

    Args:
        fn: Callable mapping ``(n, *features)`` to outputs, differentiable in its input.
        x: Clean inputs ``(n, *features)``.
        y: Targets (see :func:`fgsm`).
        eps: Ball radius, ``>= 0``.
        steps: Number of ascent steps, ``>= 1``.
        step_size: Step length; default ``2.5 * eps / steps`` (Madry et al.).
        norm: ``"linf"`` or ``"l2"``.
        loss: ``"cross_entropy"``, ``"mse"`` or a callable giving per-sample losses ``(n,)``.
        clamp: Optional input range ``(low, high)``.
        random_start: Start from a uniformly random point of the ball (``linf``: uniform in the
            cube; ``l2``: uniform in the ball) instead of ``x``.
        seed: Seed of the random start (a private generator; the global RNG is untouched).
        keep_best: Return the per-sample best iterate rather than the last one.

    Returns:
        Adversarial inputs ``(n, *features)``, detached, inside the ball and the range.
    """
    x, y, loss_fn = _check(fn, x, y, eps=eps, norm=norm, loss=loss, clamp=clamp, steps=steps)
    if step_size is None:
        step_size = 2.5 * eps / steps
    if not (isinstance(step_size, (int, float)) and math.isfinite(step_size) and step_size >= 0):
        raise ValueError(f"step_size must be a finite number >= 0; got {step_size!r}.")
    x_adv = x.clone()
    if random_start and eps > 0:
        x_adv = _clip_range(x + _random_in_ball(x, eps, norm, seed), clamp)
    best, best_loss = x.clone(), None
    for i in range(steps + 1):
        per_sample, grad = _loss_and_grad(fn, x_adv, y, loss_fn, need_grad=i < steps)
        if keep_best:
            if best_loss is None:
                best_loss = per_sample
                best = x_adv.clone()
            else:
                better = per_sample > best_loss
                best_loss = torch.where(better, per_sample, best_loss)
                best[better] = x_adv[better]
        if i == steps:
            break
        x_adv = x_adv + step_size * _ascent_direction(grad, norm)
        x_adv = _clip_range(x + _project(x_adv - x, eps, norm), clamp)
    if keep_best and random_start:
        # the clean input also counts, so the attack never loses against doing nothing
        clean_loss, _ = _loss_and_grad(fn, x, y, loss_fn, need_grad=False)
        worse = clean_loss > best_loss
        best[worse] = x[worse]
    return (best if keep_best else x_adv).detach()


def _check(fn, x, y, *, eps, norm, loss, clamp, steps):
    if not callable(fn):
        raise TypeError(f"fn must be callable (inputs -> outputs); got {type(fn).__name__}.")
    x = as_batch(x, "x")
    if not x.is_floating_point():
        raise TypeError(f"x must be floating; got {x.dtype}.")
    if not (isinstance(eps, (int, float)) and math.isfinite(eps) and eps >= 0):
        raise ValueError(f"eps must be a finite number >= 0; got {eps!r}.")
    if not (isinstance(steps, int) and steps >= 1):
        raise ValueError(f"steps must be an integer >= 1; got {steps!r}.")
    if norm not in _NORMS:
        raise ValueError(f"norm must be one of {_NORMS}; got {norm!r}.")
    if clamp is not None:
        if len(clamp) != 2 or not float(clamp[0]) < float(clamp[1]):
            raise ValueError(f"clamp must be a pair (low, high) with low < high; got {clamp!r}.")
        if bool((x < clamp[0]).any() | (x > clamp[1]).any()):
            raise ValueError(
                f"x lies outside clamp={tuple(clamp)} (min {float(x.min()):.4g}, "
                f"max {float(x.max()):.4g}); clean inputs must be inside the range."
            )
    y = torch.as_tensor(y, device=x.device)
    if y.shape[0] != x.shape[0]:
        raise ValueError(
            f"y must have one entry per sample ({x.shape[0]}); got shape {tuple(y.shape)}."
        )
    if callable(loss):
        loss_fn = loss
    elif loss == "cross_entropy":
        if y.ndim != 1 or y.is_floating_point():
            raise ValueError(
                "loss='cross_entropy' needs integer class labels y of shape (n,); got "
                f"dtype {y.dtype}, shape {tuple(y.shape)}."
            )

        def loss_fn(out, target):
            if out.ndim != 2 or out.shape[0] != target.shape[0]:
                raise ValueError(
                    f"loss='cross_entropy' needs outputs of shape (n, classes); fn returned "
                    f"shape {tuple(out.shape)}."
                )
            if int(target.max()) >= out.shape[1] or int(target.min()) < 0:
                raise ValueError(
                    f"labels must lie in [0, {out.shape[1]}); got range "
                    f"[{int(target.min())}, {int(target.max())}]."
                )
            return F.cross_entropy(out, target, reduction="none")
    elif loss == "mse":
        y = y.to(x.dtype)

        def loss_fn(out, target):
            if out.shape != target.shape:
                raise ValueError(
                    f"loss='mse' needs outputs of y's shape {tuple(target.shape)}; fn returned "
                    f"shape {tuple(out.shape)}."
                )
            return 0.5 * (out - target).reshape(out.shape[0], -1).pow(2).sum(1)
    else:
        raise ValueError(f"loss must be one of {_LOSSES} or a callable; got {loss!r}.")
    return x, y, loss_fn


def _loss_and_grad(fn, x, y, loss_fn, *, need_grad=True):
    """Per-sample losses ``(n,)`` at ``x`` and the input gradient of their sum."""
    with torch.enable_grad():
        xg = x.detach().requires_grad_(need_grad)
        out = fn(xg)
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"fn must return a torch.Tensor; got {type(out).__name__}.")
        check_finite(out.detach(), "fn(x)")
        per_sample = loss_fn(out, y)
        if per_sample.shape != (x.shape[0],):
            raise ValueError(
                f"the loss must give one value per sample, shape ({x.shape[0]},); got "
                f"{tuple(per_sample.shape)}."
            )
        if not need_grad:
            return per_sample.detach(), None
        if not per_sample.requires_grad:
            raise ValueError("the loss does not depend on the input x: fn(x) has no gradient.")
        (grad,) = torch.autograd.grad(per_sample.sum(), xg, allow_unused=True)
    if grad is None:
        raise ValueError("the loss does not depend on the input x: fn(x) has no gradient.")
    check_finite(grad, "input gradient")
    return per_sample.detach(), grad


def _per_sample_norm(t: torch.Tensor) -> torch.Tensor:
    """L2 norm of each sample, shaped ``(n, 1, ..., 1)`` for broadcasting."""
    n = t.reshape(t.shape[0], -1).norm(dim=1)
    return n.reshape((-1,) + (1,) * (t.ndim - 1))


def _ascent_direction(grad: torch.Tensor, norm: str) -> torch.Tensor:
    if norm == "linf":
        return grad.sign()
    g = _per_sample_norm(grad)
    return torch.where(g > 0, grad / g.clamp_min(torch.finfo(grad.dtype).tiny), 0.0)


def _project(delta: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    if norm == "linf":
        return delta.clamp(-eps, eps)
    d = _per_sample_norm(delta)
    scale = torch.where(d > eps, eps / d.clamp_min(torch.finfo(delta.dtype).tiny), 1.0)
    return delta * scale


def _clip_range(x: torch.Tensor, clamp) -> torch.Tensor:
    return x if clamp is None else x.clamp(float(clamp[0]), float(clamp[1]))


def _random_in_ball(x: torch.Tensor, eps: float, norm: str, seed) -> torch.Tensor:
    gen = torch.Generator(device=x.device)
    gen.manual_seed(int(seed))
    if norm == "linf":
        u = torch.rand(x.shape, generator=gen, device=x.device, dtype=x.dtype)
        return eps * (2 * u - 1)
    g = torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)
    d = x[0].numel()
    r = torch.rand((x.shape[0],), generator=gen, device=x.device, dtype=x.dtype) ** (1.0 / d)
    return eps * g / _per_sample_norm(g) * r.reshape((-1,) + (1,) * (x.ndim - 1))
