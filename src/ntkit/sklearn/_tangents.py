"""Kernel and hyperparameter derivatives of fully connected specs in one in-place pass.

A Gaussian-process optimizer asks for ``K`` and ``dK/dlog(theta)`` for every free
hyperparameter, dozens of times. Forward-mode autograd through the layers' out-of-place
path costs about six kernel evaluations per hyperparameter; for the networks most GP
users fit (``Dense`` layers with ReLU-family activations: ReLU, LeakyReLU, Abs, ABReLU;
``Identity``/``Flatten`` on flat inputs) this module carries the tangents analytically
beside the kernel, tile by tile and in place: 2.0 kernel evaluations for one
hyperparameter, 2.8 for two (n = 2000, 2 threads, ``benchmarks/sklearn_gp.py``). With no
tangents it is the scikit-learn wrappers' kernel of these specs (the same numbers as the
layers' path).

How a hyperparameter reaches each layer is read off the spec itself: the spec is built with
the hyperparameter as a forward-mode dual number, and each layer's ``w_std``, ``b_std``,
``a`` and ``b`` then carry their derivatives in ``log(theta)`` (any factory, shared or
per-layer values). Specs with any other layer return ``None`` and the caller falls back
to forward-mode autograd.

Recursions (``q``: NNGP, ``t``: NTK, ``v``: a sample's variance; dots are tangents):

- ``Dense`` (``w2 = w_std^2``, ``b2 = b_std^2``): ``q <- w2 q + b2``; NTK parameterization
  ``t <- w2 t + q_new``, standard ``t <- w2 t + fan_in q_old (+ 1 with a bias)``.
  Tangents follow by the product rule.
- ABReLU ``a min(x, 0) + b max(x, 0)`` with ``f = (a - b)^2 / (2 pi)``, ``h = (a^2 + b^2)/2``,
  ``S = sqrt(v1 v2 - q^2)``, ``theta = atan2(S, q)``: ``dot = h - f theta``,
  ``E = f S + dot q``, ``t <- t dot``. With ``a = v1'/v1 + v2'/v2``:
  ``E' = dot q' + (f S / 2) a + f' (S - theta q) + h' q`` and
  ``dot' = (f / S)(q' - q a / 2) - f' theta + h'`` (``1/S`` taken as 0 where ``S = 0``:
  perfectly correlated pairs stay so, as in the layers' own derivative).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.autograd.forward_ad as fwad

from ntkit._host import run_parallel
from ntkit.layers import ABReLU, Dense, Flatten, Identity, Serial
from ntkit.layers._driver import default_workers
from ntkit.layers._tile import _fix_diagonal_square, input_covariance, input_variances
from ntkit.layers.activations import Activation, _product_out_of_range
from ntkit.layers.base import Layer
from ntkit.settings import resolve_max_memory
from ntkit.tiling._progress import tile_progress

__all__ = ["kernel_and_tangents"]

#: Largest tile (entries): small enough that a tile's dozen working arrays stay in the
#: processor's cache, large enough that per-operation overhead does not dominate. Tiles run
#: in worker threads of one torch thread each (one per torch thread), like the layers' own
#: driver.
TILE_ENTRIES = 2**17

_TWO_PI = 2.0 * math.pi


@dataclass(frozen=True)
class _DenseStep:
    w2: float
    b2: float
    has_bias: bool
    standard: bool
    fan_in: int
    dw2: tuple[float, ...]  # d w2 / d log(theta_i)
    db2: tuple[float, ...]


@dataclass(frozen=True)
class _ArcStep:
    f: float
    h: float
    df: tuple[float, ...]
    dh: tuple[float, ...]


def _split(value) -> tuple[float, float]:
    """``(primal, tangent)`` of a layer parameter (tangent 0 for a plain number)."""
    if isinstance(value, torch.Tensor):
        primal, tangent = fwad.unpack_dual(value)
        return float(primal), 0.0 if tangent is None else float(tangent)
    return float(value), 0.0


def _layers(net: Layer) -> tuple[Layer, ...]:
    return net.layers if isinstance(net, Serial) else (net,)


def _supported(layer: Layer) -> bool:
    if type(layer) in (Dense, Identity, Flatten):
        return True
    return (
        isinstance(layer, ABReLU)
        and type(layer).expectations is ABReLU.expectations
        and type(layer).kernel_rule is Activation.kernel_rule
        and type(layer).apply_kernel is Layer.apply_kernel
    )


def plan(net: Layer, tangent_nets: list[Layer], in_features: int) -> list | None:
    """The steps of a fully connected spec, or ``None`` if a layer is not supported.

    Args:
        net: The spec.
        tangent_nets: The same spec built once per free hyperparameter, the ``i``-th with
            that hyperparameter as a dual number of tangent ``theta_i``.
        in_features: Input features ``d``.
    """
    stacks = [_layers(net)] + [_layers(t) for t in tangent_nets]
    first = stacks[0]
    if any(len(s) != len(first) for s in stacks):
        return None
    steps: list = []
    fan_in, gaussian = in_features, False
    for j, layer in enumerate(first):
        if not _supported(layer) or any(type(s[j]) is not type(layer) for s in stacks):
            return None
        column: list[Any] = [s[j] for s in stacks]
        if isinstance(layer, Dense):
            w = [_split(c.w_std) for c in column]
            b = [(0.0, 0.0) if c.b_std is None else _split(c.b_std) for c in column]
            (w0, _), (b0, _) = w.pop(0), b.pop(0)
            steps.append(
                _DenseStep(
                    w2=w0 * w0,
                    b2=b0 * b0,
                    has_bias=layer.b_std is not None,
                    standard=layer.parameterization == "standard",
                    fan_in=fan_in,
                    dw2=tuple(2.0 * w0 * dw for _, dw in w),
                    db2=tuple(2.0 * b0 * db for _, db in b),
                )
            )
            fan_in, gaussian = layer.out_features, True
        elif isinstance(layer, ABReLU):
            if not gaussian:
                return None  # the layers' own path raises the right error
            a = [_split(c.a) for c in column]
            bb = [_split(c.b) for c in column]
            (a0, _), (b0, _) = a.pop(0), bb.pop(0)
            steps.append(
                _ArcStep(
                    f=(a0 - b0) ** 2 / _TWO_PI,
                    h=(a0 * a0 + b0 * b0) / 2.0,
                    df=tuple((a0 - b0) * (da - db) / math.pi for (_, da), (_, db) in zip(a, bb)),
                    dh=tuple(a0 * da + b0 * db for (_, da), (_, db) in zip(a, bb)),
                )
            )
            gaussian = False
    return steps


def _diagonal_states(steps, v: torch.Tensor, p: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Each sample's variance and its tangents ``(v (n,), vd (p, n))`` before every step."""
    vd = torch.zeros((p, v.shape[0]), dtype=v.dtype, device=v.device)
    states = []
    for step in steps:
        states.append((v, vd))
        if isinstance(step, _DenseStep):
            dw2 = torch.tensor(step.dw2, dtype=v.dtype, device=v.device)[:, None]
            db2 = torch.tensor(step.db2, dtype=v.dtype, device=v.device)[:, None]
            vd = step.w2 * vd + dw2 * v + db2
            v = step.w2 * v + step.b2
        else:  # on the diagonal S = 0, theta = 0: E = h v, dot = h
            dh = torch.tensor(step.dh, dtype=v.dtype, device=v.device)[:, None]
            vd = step.h * vd + dh * v
            v = step.h * v
    return states


def _dense(step: _DenseStep, q, qd, t, td) -> None:
    """One ``Dense`` step on a tile, in place (``t``/``td`` ``None`` for the NNGP alone)."""
    p = qd.shape[0]
    if t is not None:
        for i in range(p):
            td[i].mul_(step.w2)
            if step.dw2[i]:
                td[i].add_(t, alpha=step.dw2[i])
            if step.standard:
                td[i].add_(qd[i], alpha=step.fan_in)
        t.mul_(step.w2)
        if step.standard:
            t.add_(q, alpha=step.fan_in)
            if step.has_bias:
                t.add_(1.0)
    for i in range(p):
        qd[i].mul_(step.w2)
        if step.dw2[i]:
            qd[i].add_(q, alpha=step.dw2[i])
        if step.db2[i]:
            qd[i].add_(step.db2[i])
    q.mul_(step.w2)
    if step.b2:
        q.add_(step.b2)
    if t is not None and not step.standard:
        t.add_(q)
        for i in range(p):
            td[i].add_(qd[i])


def _arc(step: _ArcStep, q, qd, t, td, v1, vd1, v2, vd2):
    """One ReLU-family step on a tile: returns the new ``q`` (``qd``, ``t``, ``td`` in place).

    ``v1`` ``(r, 1)``/``v2`` ``(1, m)``: the pairs' variances; ``vd1`` ``(p, r, 1)``,
    ``vd2`` ``(p, 1, m)`` their tangents.
    """
    f, h = step.f, step.h
    gap = (v1 * v2).sub_(q * q).clamp_min_(0.0).sqrt_()
    theta = torch.atan2(gap, q)
    dot = theta.mul(-f).add_(h)
    f_over_gap = torch.where(gap > 0, f / gap, 0.0)
    inv1, inv2 = 1.0 / v1, 1.0 / v2
    for i in range(qd.shape[0]):
        a = (vd1[i] * inv1) + (vd2[i] * inv2)  # (r, m)
        # dot' = (f / S)(q' - q a / 2) - f' theta + h'
        ddot = torch.addcmul(qd[i], q, a, value=-0.5).mul_(f_over_gap)
        if step.df[i]:
            ddot.add_(theta, alpha=-step.df[i])
        if step.dh[i]:
            ddot.add_(step.dh[i])
        # E' = dot q' + (f S / 2) a + f' (S - theta q) + h' q
        qd[i].mul_(dot).addcmul_(gap, a, value=f / 2.0)
        if step.df[i]:
            qd[i].add_(gap - theta * q, alpha=step.df[i])
        if step.dh[i]:
            qd[i].add_(q, alpha=step.dh[i])
        if t is not None:
            td[i].mul_(dot).addcmul_(t, ddot)
    if t is not None:
        t.mul_(dot)
    return torch.addcmul(gap.mul_(f), dot, q)


def kernel_and_tangents(
    net: Layer,
    tangent_nets: list[Layer],
    x: torch.Tensor,
    y: torch.Tensor | None = None,
    *,
    kind: str,
    max_memory=None,
    progress: bool = False,
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``K(x, y)`` and ``dK/dlog(theta_i)`` of a fully connected spec, or ``None``.

    Args:
        net: The spec.
        tangent_nets: The spec built once per free hyperparameter with that hyperparameter
            as a forward-mode dual of tangent ``theta_i`` (none: the kernel alone).
            Call inside the ``forward_ad.dual_level`` the duals were made in.
        x: ``(n, d)`` float64 inputs.
        y: ``(m, d)`` float64 inputs, or ``None`` for ``y = x`` (computed from the upper
            triangle, exactly symmetric, same-sample pairs at angle exactly 0).
        kind: ``"ntk"`` or ``"nngp"``.
        max_memory: Budget in bytes for the result and working tiles (``None``: default).
        progress: Show a rich progress bar over the row blocks.

    Returns:
        ``(K (n, m), dK (n, m, p))`` float64; ``None`` when the spec has a layer this pass
        does not cover, a zero-variance input reaches an activation, variances leave the
        range the layers handle without rescaling, the budget cannot hold the result, or a
        result is not finite (the caller's general path then decides, and raises if needed).
    """
    if x.ndim != 2 or (y is not None and (y.ndim != 2 or y.shape[1] != x.shape[1])):
        return None
    if x.shape[0] == 0 or x.shape[1] == 0 or (y is not None and y.shape[0] == 0):
        return None  # the layers' path names the empty batch
    x = x.to(torch.float64)
    if y is not None:
        y = y.to(torch.float64)
        if y.shape == x.shape and torch.equal(x, y):
            y = None  # the same batch: the exactly symmetric kernel, as the layers give
    steps = plan(net, tangent_nets, x.shape[1])
    if steps is None:
        return None
    p = len(tangent_nets)
    states_x = _checked_states(steps, x, p)
    states_y = states_x if y is None else _checked_states(steps, y, p)
    if states_x is None or states_y is None:
        return None
    n, m = x.shape[0], (x if y is None else y).shape[0]
    want_ntk = kind == "ntk"
    workers = default_workers(x.device)
    row_bytes = 8 * m * (10 + (4 if want_ntk else 2) * max(p, 1))  # a tile row's arrays
    budget = resolve_max_memory(max_memory, x.device) - 8 * n * m * (p + 1)
    if budget < row_bytes * workers:
        return None  # the general path plans within the budget, or says why it cannot
    rows = min(n, max(1, TILE_ENTRIES // m), budget // (row_bytes * workers))
    out = torch.empty((n, m), dtype=x.dtype, device=x.device)
    grad = torch.empty((p, n, m), dtype=x.dtype, device=x.device)
    starts = [(a0,) for a0 in range(0, n, rows)]
    v_in = states_x[0][0] if steps else None

    def one_tile(a0: int) -> None:
        # tiles write disjoint parts of the result: rows a0:a1 from column a0 on, and
        # (symmetric) their mirror in columns a0:a1 below row a1
        a1 = min(n, a0 + rows)
        c0 = a0 if y is None else 0
        q = _input_block(x, y, a0, a1, v_in)
        rows_states = [(v[a0:a1, None], vd[:, a0:a1, None]) for v, vd in states_x]
        cols_states = [(v[None, c0:], vd[:, None, c0:]) for v, vd in states_y]
        k_tile, g_tile = _tile(steps, q, rows_states, cols_states, want_ntk, p)
        for dst, block in ((out, k_tile), *zip(grad, g_tile)):
            if y is None:
                _store_symmetric(dst, block, a0, a1)
            else:
                dst[a0:a1] = block
        bar.advance()

    with tile_progress(len(starts), enabled=progress, description="kernel tiles") as bar:
        if workers <= 1:
            for item in starts:
                one_tile(*item)
        else:  # tiles in worker threads of one torch thread each, as the layers' driver
            run_parallel(one_tile, starts, min(workers, len(starts)))
    if not (bool(torch.isfinite(out.sum())) and bool(torch.isfinite(grad.sum()))):
        return None
    return out, grad.permute(1, 2, 0)


def _checked_states(steps, x: torch.Tensor, p: int):
    """:func:`_diagonal_states` of ``x``, or ``None`` where this pass must not go.

    Refused: a zero variance entering an activation (the layers give it a fixed angle), a
    non-finite variance, or squares of variances near the floating-point range (the layers
    rescale those pairs).
    """
    states = _diagonal_states(steps, input_variances(x, True), p)
    for step, (v, vd) in zip(steps, states):
        if not (bool(torch.isfinite(v).all()) and bool(torch.isfinite(vd).all())):
            return None
        if isinstance(step, _ArcStep) and not bool((v > 0).all()):
            return None
        if _product_out_of_range(v, v):
            return None
    return states


def _input_block(x, y, a0: int, a1: int, v_in) -> torch.Tensor:
    """Input covariances of rows ``a0:a1`` with ``y`` (or with ``x[a0:]`` when symmetric).

    Symmetric: the same-batch square is made exactly symmetric with the exact variances on
    its diagonal, as the layers' tiles do.
    """
    if y is not None:
        return input_covariance(x[a0:a1], y, True)
    q = input_covariance(x[a0:a1], x[a0:], True)
    if v_in is None:
        v_in = input_variances(x, True)
    _fix_diagonal_square(q, v_in[a0:a1], n_sp_in=0, diagonal_spatial=True)
    return q


def _tile(steps, q, rows_states, cols_states, want_ntk: bool, p: int):
    """Run the steps on one block of input covariances ``q`` ``(r, c)`` (consumed).

    ``rows_states``/``cols_states``: per step, the rows' ``(v (r, 1), vd (p, r, 1))`` and
    the columns' ``(v (1, c), vd (p, 1, c))``. Returns ``(K block, dK blocks (p, r, c))``.
    """
    qd = torch.zeros((p, *q.shape), dtype=q.dtype, device=q.device)
    t = torch.zeros_like(q) if want_ntk else None
    td = torch.zeros_like(qd) if want_ntk else None
    for step, (v1, vd1), (v2, vd2) in zip(steps, rows_states, cols_states):
        if isinstance(step, _DenseStep):
            _dense(step, q, qd, t, td)
        else:
            q = _arc(step, q, qd, t, td, v1, vd1, v2, vd2)
    return (t, td) if want_ntk else (q, qd)


def _store_symmetric(dst: torch.Tensor, block: torch.Tensor, a0: int, a1: int) -> None:
    """Write rows ``a0:a1`` (columns ``a0:``) and their mirror; the square is symmetrized."""
    r = a1 - a0
    dst[a0:a1, a0:] = block
    dst[a1:, a0:a1] = block[:, r:].T
    square = dst[a0:a1, a0:a1]
    square.copy_((square + square.T) / 2)
