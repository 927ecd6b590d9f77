"""Elementwise nonlinearities: closed-form Gaussian expectations, quadrature for any other.

For jointly Gaussian pre-activations ``(u, v) ~ N(0, [[q11, q12], [q12, q22]])`` an
activation maps the NNGP entry ``q12`` to ``E[phi(u) phi(v)]`` and multiplies the NTK by
``dot = E[phi'(u) phi'(v)]`` (Jacot et al. 2018; Lee et al. 2019). The parameters of every
activation follow the field's reference implementation (Novak et al. 2020, "Neural
Tangents"), e.g. ``Erf(a, b, c)`` computes ``a * erf(b * x) + c``. Closed forms come from
Cho & Saul 2009 (arc-cosine), Williams 1997 (erf) and direct Gaussian integrals; each is
documented on its class. Degenerate pairs (a zero variance) use the conventions of the
reference implementation (angle pi/2 for the ReLU family), and never produce NaN.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import scipy.special
import torch

from ntkit.errors import LayerSpecError
from ntkit.kernel import Kernel
from ntkit.layers import _gauss
from ntkit.layers._params import (
    hyperparameter,
    safe_sqrt,
    straight_clamp,
    tracks_grad,
    value_of,
)
from ntkit.layers._spatial import pair_variances, self_variances
from ntkit.layers.base import Layer, Shape, single_stream
from ntkit.layers.modules import ElementwiseModule

__all__ = [
    "ABReLU",
    "Abs",
    "Activation",
    "Cos",
    "Elementwise",
    "Erf",
    "Exp",
    "GELU",
    "Gaussian",
    "Hermite",
    "LeakyReLU",
    "Monomial",
    "Polynomial",
    "RBF",
    "ReLU",
    "RectifiedMonomial",
    "Sign",
    "Sin",
]

_TWO_PI = 2.0 * math.pi

NOT_GAUSSIAN_MESSAGE = (
    "{name} needs Gaussian pre-activations, i.e. a random affine layer (Dense, Conv) right "
    "before it; its input is not Gaussian (the network input itself, or the output of an "
    "activation, Flatten of a spatial kernel, FanInProd, FanInConcat or Dropout). Insert a "
    "Dense/Conv layer before {name}."
)


class Activation(Layer):
    """Base class: an elementwise ``phi`` with known Gaussian expectations.

    Subclasses implement :meth:`fn` (the finite nonlinearity) and :meth:`expectations`.

    Attributes:
        odd: Whether ``phi`` is odd, so that it keeps zero-mean branches zero-mean.
    """

    odd: bool = False
    memory_factor = 8.0

    def fn(self, x: torch.Tensor) -> torch.Tensor:
        """The nonlinearity applied elementwise by the finite network."""
        raise NotImplementedError

    def expectations(
        self, q12: torch.Tensor, q11: torch.Tensor, q22: torch.Tensor, need_dot: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Gaussian expectations for every entry (arguments broadcast against each other).

        Args:
            q12: Covariances, e.g. ``(n1, n2)``.
            q11: Variances of the first argument, broadcastable to ``q12``.
            q22: Variances of the second argument, broadcastable to ``q12``.
            need_dot: Whether to return the derivative term.

        Returns:
            ``(E[phi(u) phi(v)], E[phi'(u) phi'(v)] or None)``, each shaped like ``q12``.
        """
        raise NotImplementedError

    def out_shape(self, in_shape: Shape) -> Shape:
        return single_stream(self.name, in_shape)

    def kernel_rule(self, k: Kernel) -> Kernel:
        if not k.is_gaussian:
            raise LayerSpecError(NOT_GAUSSIAN_MESSAGE.format(name=self.name))
        v1, v2 = pair_variances(k)
        nngp, dot = self.expectations(k.nngp, v1, v2, need_dot=k.ntk is not None)
        ntk = None if k.ntk is None else k.ntk * dot
        return k.replace(
            nngp=nngp,
            ntk=ntk,
            cov1=self._self_expectation(k.cov1, k),
            cov2=None if k.cov2 is None else self._self_expectation(k.cov2, k),
            is_gaussian=False,
            independent=k.independent and self.odd,
        )

    def _self_expectation(self, cov: torch.Tensor, k: Kernel) -> torch.Tensor:
        a, b = self_variances(cov, k)
        return self.expectations(cov, a, b, need_dot=False)[0]

    def build_module(self, in_shape: Shape, generator: torch.Generator):
        return ElementwiseModule(self.fn, name=repr(self))


def _sine_gap(q12, q11, q22):
    """``S = sqrt(max(q11 q22 - q12^2, 0))`` and the angle ``theta = atan2(S, q12)``.

    ``S = sqrt(q11 q22) sin(theta)``; a pair with a zero variance gets ``theta = pi/2``.
    """
    # No fused multiply-add here: with q11 = q22 = q12 both products round identically and
    # the gap is exactly 0 (theta = 0), which an FMA would turn into sqrt(eps) noise.
    if _product_out_of_range(q11, q22):
        # q11 q22 would underflow or overflow (inputs scaled by 1e-100 or 1e100): the same
        # formula on the pair's values divided by their larger variance, times it
        m = torch.maximum(q11, q22)
        m = torch.where(m > 0, m, torch.ones_like(m))
        a, b, c = q11 / m, q22 / m, q12 / m
        gap = safe_sqrt((a * b - c * c).clamp_min(0.0)) * m
        theta = torch.atan2(gap, q12)
        degenerate = ((q11 == 0) | (q22 == 0)).expand_as(theta)
        return gap, theta.masked_fill(degenerate, math.pi / 2.0)
    if tracks_grad(q12, q11, q22):
        # Differentiable: the gap's derivative at 0 is taken along the perfectly correlated
        # manifold (0), and degenerate pairs get a constant angle with a finite derivative.
        gap = safe_sqrt((q11 * q22 - q12 * q12).clamp_min(0.0))
        degenerate = q11 * q22 == 0
        if bool(degenerate.any()):
            degenerate = degenerate.expand_as(gap)
            theta = torch.atan2(gap, torch.where(degenerate, 1.0, q12))
            return gap, theta.masked_fill(degenerate, math.pi / 2.0)
        return gap, torch.atan2(gap, q12)
    gap = (q11 * q22).sub_(q12 * q12).clamp_min_(0.0).sqrt_()
    theta = torch.atan2(gap, q12)
    if bool((q11 == 0).any()) or bool((q22 == 0).any()):
        degenerate = (q11 * q22 == 0).expand_as(theta)
        theta = theta.masked_fill_(degenerate, math.pi / 2.0)
    return gap, theta


def _product_out_of_range(q11, q22) -> bool:
    """Whether ``q11 * q22`` underflows or overflows for some pair (nonzero variances)."""
    info = torch.finfo(q11.dtype)
    q11, q22 = q11.detach(), q22.detach()
    lo = float(torch.where(q11 > 0, q11, math.inf).min()) * float(
        torch.where(q22 > 0, q22, math.inf).min()
    )
    hi = float(q11.max()) * float(q22.max())
    return (lo < info.tiny * 2**60 and lo != math.inf) or hi > info.max / 2**60


# ----------------------------------------------------------------------------- ReLU family
class ABReLU(Activation):
    """``phi(x) = a * min(x, 0) + b * max(x, 0)`` (arc-cosine kernels, Cho & Saul 2009).

    With ``theta`` the angle between the two arguments and ``S = sqrt(q11 q22) sin(theta)``:
    ``dot = (a^2 + b^2)/2 - (a - b)^2 theta / (2 pi)`` and
    ``E[phi phi] = (a - b)^2 S / (2 pi) + dot * q12``.

    Args:
        a: Slope for negative inputs.
        b: Slope for positive inputs.
    """

    def __init__(self, a: float, b: float):
        self.a = hyperparameter(a, f"{type(self).__name__} a")
        self.b = hyperparameter(b, f"{type(self).__name__} b")

    @property
    def odd(self) -> bool:  # a linear map
        return value_of(self.a) == value_of(self.b)

    def fn(self, x):
        return self.a * torch.clamp(x, max=0) + self.b * torch.clamp(x, min=0)

    def expectations(self, q12, q11, q22, need_dot):
        f = (self.a - self.b) ** 2 / _TWO_PI
        half_sq = (self.a**2 + self.b**2) / 2.0
        if tracks_grad(q12, q11, q22, f, half_sq):
            nngp, dot = _ArcCosine.apply(q12, q11, q22, f, half_sq)
            return nngp, (dot if need_dot else None)
        gap, theta = _sine_gap(q12, q11, q22)
        dot = theta.mul_(-f).add_(half_sq)
        nngp = torch.addcmul(gap.mul_(f), dot, q12)
        return nngp, (dot if need_dot else None)

    def __repr__(self):
        return f"ABReLU(a={value_of(self.a)}, b={value_of(self.b)})"


class _ArcCosine(torch.autograd.Function):
    """``ABReLU``'s expectations with an analytic backward (cheaper than autograd's graph).

    ``nngp = f S + dot q12`` and ``dot = h - f theta`` with ``S`` the sine gap and
    ``theta = atan2(S, q12)``. Derivatives: ``d nngp/d q12 = dot`` (Price's theorem),
    ``d nngp/d q11 = f S / (2 q11)``, ``d dot/d q12 = f / S``,
    ``d dot/d q11 = -f q12 / (2 q11 S)`` (and likewise for ``q22``). Where ``S = 0`` the
    arguments are perfectly correlated and the terms in ``1/S`` are taken along that manifold
    (0), as in :func:`_sine_gap`.
    """

    @staticmethod
    def forward(ctx, q12, q11, q22, f, h):
        gap, theta = _sine_gap(q12, q11, q22)
        dot = h - f * theta
        nngp = f * gap + dot * q12
        ctx.save_for_backward(q12, q11, q22, gap, theta, dot)
        ctx.save_for_forward(q12, q11, q22, gap, theta, dot)
        ctx.f = f
        ctx.shapes = (q12.shape, q11.shape, q22.shape)
        ctx.tensor_params = (isinstance(f, torch.Tensor), isinstance(h, torch.Tensor))
        return nngp, dot

    @staticmethod
    def jvp(ctx, t12, t11, t22, tf, th):
        """Forward mode (dual tensors): the partial derivatives above times the tangents."""
        q12, q11, q22, gap, theta, dot = ctx.saved_tensors
        f = ctx.f.detach() if isinstance(ctx.f, torch.Tensor) else ctx.f
        positive = gap > 0
        inv_gap = torch.where(positive, 1.0 / torch.where(positive, gap, 1.0), 0.0)
        d_nngp = torch.zeros_like(dot)
        d_dot = torch.zeros_like(dot)
        if t12 is not None:
            d_nngp = d_nngp + dot * t12
            d_dot = d_dot + f * inv_gap * t12
        for t, q in ((t11, q11), (t22, q22)):
            if t is not None:
                inv_q = 1.0 / torch.where(q > 0, q, 1.0)
                d_nngp = d_nngp + (f / 2.0) * gap * inv_q * t
                d_dot = d_dot - (f / 2.0) * q12 * inv_gap * inv_q * t
        if isinstance(tf, torch.Tensor):
            d_nngp = d_nngp + (gap - theta * q12) * tf
            d_dot = d_dot - theta * tf
        if isinstance(th, torch.Tensor):
            d_nngp = d_nngp + q12 * th
            d_dot = d_dot + th
        return d_nngp, d_dot

    @staticmethod
    def backward(ctx, g_nngp, g_dot):
        q12, q11, q22, gap, theta, dot = ctx.saved_tensors
        f = ctx.f
        if isinstance(f, torch.Tensor):
            f = f.detach()
        s12, s11, s22 = ctx.shapes
        g_nngp = torch.zeros_like(dot) if g_nngp is None else g_nngp
        g_dot = torch.zeros_like(dot) if g_dot is None else g_dot
        positive = gap > 0
        inv_gap = torch.where(positive, 1.0 / torch.where(positive, gap, 1.0), 0.0)
        g12 = g_nngp * dot + g_dot * f * inv_gap
        # f (gN S^2 - gD q12) / (2 S) / q_ii, zero where S = 0
        common = (g_nngp * gap - g_dot * q12 * inv_gap) * (f / 2.0)
        g11 = g22 = None
        if ctx.needs_input_grad[1]:
            g11 = (common / torch.where(q11 > 0, q11, 1.0)).sum_to_size(s11)
        if ctx.needs_input_grad[2]:
            g22 = (common / torch.where(q22 > 0, q22, 1.0)).sum_to_size(s22)
        gf = gh = None
        if ctx.tensor_params[0] and ctx.needs_input_grad[3]:
            gf = (g_nngp * (gap - theta * q12) - g_dot * theta).sum()
        if ctx.tensor_params[1] and ctx.needs_input_grad[4]:
            gh = (g_nngp * q12 + g_dot).sum()
        return g12.sum_to_size(s12), g11, g22, gf, gh


class ReLU(ABReLU):
    """``phi(x) = max(x, 0)``.

    ``E = (S + (pi - theta) q12) / (2 pi)`` and ``dot = (pi - theta) / (2 pi)``.
    """

    def __init__(self):
        super().__init__(0.0, 1.0)

    def fn(self, x):
        return torch.relu(x)

    def build_module(self, in_shape, generator):
        return torch.nn.ReLU()

    def __repr__(self):
        return "ReLU()"


class LeakyReLU(ABReLU):
    """``phi(x) = x`` for ``x >= 0`` and ``alpha * x`` otherwise (``ABReLU(alpha, 1)``).

    Args:
        alpha: Negative slope (default 0.01, as ``torch.nn.LeakyReLU``).
    """

    def __init__(self, alpha: float = 0.01):
        super().__init__(alpha, 1.0)
        self.alpha = self.a

    def fn(self, x):
        return torch.nn.functional.leaky_relu(x, value_of(self.alpha))

    def build_module(self, in_shape, generator):
        return torch.nn.LeakyReLU(value_of(self.alpha))

    def __repr__(self):
        return f"LeakyReLU(alpha={value_of(self.alpha)})"


class Abs(ABReLU):
    """``phi(x) = |x|`` (``ABReLU(-1, 1)``)."""

    def __init__(self):
        super().__init__(-1.0, 1.0)

    def fn(self, x):
        return torch.abs(x)

    def __repr__(self):
        return "Abs()"


# ----------------------------------------------------------------------------- smooth closed forms
class _ScaledShifted(Activation):
    """Activations ``a * g(b * x + ...) + ...`` with parameters ``a, b, c`` and odd ``g``."""

    def __init__(self, a: float = 1.0, b: float = 1.0, c: float = 0.0):
        who = type(self).__name__
        self.a = hyperparameter(a, f"{who} a")
        self.b = hyperparameter(b, f"{who} b")
        self.c = hyperparameter(c, f"{who} c")

    @property
    def odd(self) -> bool:
        return value_of(self.c) == 0.0


class Erf(_ScaledShifted):
    """``phi(x) = a * erf(b * x) + c`` (Williams 1997).

    With ``p_i = 1 + 2 b^2 q_ii`` and ``D = sqrt(p_1 p_2 - 4 b^4 q12^2)``:
    ``E = a^2 (2/pi) atan2(2 b^2 q12, D) + c^2`` and ``dot = a^2 b^2 (4/pi) / D``.
    """

    def fn(self, x):
        return self.a * torch.erf(self.b * x) + self.c

    def expectations(self, q12, q11, q22, need_dot):
        b2 = self.b**2
        scale = 2.0 * value_of(b2) * max(float(q11.detach().max()), float(q22.detach().max()))
        if scale * scale > torch.finfo(q12.dtype).max / 2**60:
            return self._scaled_expectations(q12, q11, q22, need_dot)
        # D^2 = (1 + 2 b^2 q11)(1 + 2 b^2 q22) - 4 b^4 q12^2, written as
        # 1 + 2 b^2 (q11 + q22) + 4 b^4 (q11 q22 - q12^2): no cancellation of the large terms
        # at large variances, and exactly 1 + 4 b^2 q on the diagonal (q11 = q22 = q12 = q)
        if tracks_grad(q12, q11, q22, self.a, self.b, self.c):
            gap = (q11 * q22 - q12 * q12).clamp_min(0.0)
            denom = (1.0 + 2.0 * b2 * (q11 + q22) + 4.0 * b2 * b2 * gap).sqrt()
            nngp = torch.atan2(2.0 * b2 * q12, denom) * (self.a**2 * 2.0 / math.pi) + self.c**2
            dot = self.a**2 * b2 * (4.0 / math.pi) / denom if need_dot else None
            return nngp, dot
        gap = (q11 * q22).sub_(q12 * q12).clamp_min_(0.0).mul_(4.0 * b2 * b2)
        denom = gap.add_(q11 + q22, alpha=2.0 * value_of(b2)).add_(1.0).sqrt_()
        if isinstance(b2, torch.Tensor):  # alpha must be a number; redo with the tensor
            denom = (
                1.0
                + 2.0 * b2 * (q11 + q22)
                + 4.0 * b2 * b2 * (q11 * q22 - q12 * q12).clamp_min(0.0)
            ).sqrt()
        nngp = torch.atan2(q12 * (2.0 * b2), denom).mul_(self.a**2 * 2.0 / math.pi)
        if self.c:
            nngp.add_(self.c**2)
        dot = None
        if need_dot:
            dot = torch.reciprocal(denom).mul_(self.a**2 * b2 * 4.0 / math.pi)
        return nngp, dot

    def _scaled_expectations(self, q12, q11, q22, need_dot):
        """The same at variances so large that ``(2 b^2 q)^2`` overflows: divided by it.

        Variances of ``1e154`` and more give the sign function's kernel in the limit (not 0).
        """
        b2 = self.b**2
        m = torch.maximum(q11, q22)
        m = torch.where(m > 0, m, torch.ones_like(m))
        u = 1.0 / (2.0 * b2 * m)
        x1, x2, x12 = q11 / m, q22 / m, q12 / m
        inner = (u * u + u * (x1 + x2) + (x1 * x2 - x12 * x12).clamp_min(0.0)).sqrt()
        nngp = torch.atan2(x12, inner) * (self.a**2 * 2.0 / math.pi) + self.c**2
        dot = None
        if need_dot:
            dot = (self.a**2 * b2 * (4.0 / math.pi)) / (inner * (2.0 * b2 * m))
        return nngp, dot

    def __repr__(self):
        return f"Erf(a={value_of(self.a)}, b={value_of(self.b)}, c={value_of(self.c)})"


class GELU(Activation):
    """``phi(x) = x * Phi(x)`` with ``Phi`` the standard normal CDF (exact, erf-based GELU).

    With ``P = q11 q22``, ``P1 = (1 + q11)(1 + q22)``, ``Delta = sqrt(P1 - q12^2)`` and
    ``theta = atan2(q12, Delta)``:
    ``E = q12/4 + ((q12^2 + P Delta^2) / (P1 Delta) + q12 theta) / (2 pi)`` and
    ``dot = 1/4 + theta/(2 pi) + q12 / (2 pi Delta) * (1/Delta^2 + (1 - P)/P1 + 1)``.

    Args:
        approximate: ``"none"`` (default) or ``"tanh"``; as in ``torch.nn.GELU`` this changes
            only the finite network. The kernel is always the exact GELU's, as in the
            reference implementation.
    """

    def __init__(self, approximate: str = "none"):
        if approximate not in ("none", "tanh"):
            raise ValueError(f"GELU approximate must be 'none' or 'tanh'; got {approximate!r}.")
        self.approximate = approximate

    def fn(self, x):
        return torch.nn.functional.gelu(x, approximate=self.approximate)

    def build_module(self, in_shape, generator):
        return torch.nn.GELU(approximate=self.approximate)

    def expectations(self, q12, q11, q22, need_dot):
        prod = q11 * q22
        p1 = (1.0 + q11) * (1.0 + q22)
        if tracks_grad(q12, q11, q22):
            delta2 = (p1 - q12 * q12).clamp_min(0.0)
            delta = delta2.sqrt()
            theta = torch.atan2(q12, delta)
            nngp = ((q12 * q12 + prod * delta2) / (p1 * delta) + q12 * theta) / _TWO_PI + q12 / 4.0
            dot = None
            if need_dot:
                dot = (1.0 / delta2 + (1.0 - prod) / p1 + 1.0) * q12 / (_TWO_PI * delta)
                dot = dot + theta / _TWO_PI + 0.25
            return nngp, dot
        delta2 = torch.addcmul(p1, q12, q12, value=-1.0).clamp_min_(0.0)
        delta = delta2.sqrt()
        theta = torch.atan2(q12, delta)
        nngp = (q12 * q12 + prod * delta2) / (p1 * delta) + q12 * theta
        nngp = nngp.div_(_TWO_PI).add_(q12 / 4.0)
        dot = None
        if need_dot:
            dot = (1.0 / delta2 + (1.0 - prod) / p1 + 1.0) * q12 / (_TWO_PI * delta)
            dot = dot.add_(theta / _TWO_PI).add_(0.25)
        return nngp, dot

    def __repr__(self):
        return f"GELU(approximate={self.approximate!r})"


class Sin(_ScaledShifted):
    """``phi(x) = a * sin(b * x + c)``.

    With ``s_pm = exp(-b^2 (q11 + q22 +- 2 q12) / 2)`` (``s_+`` times ``cos(2c)``):
    ``E = a^2 (s_- - cos(2c) s_+) / 2`` and ``dot = a^2 b^2 (s_- + cos(2c) s_+) / 2``.
    """

    def fn(self, x):
        return self.a * torch.sin(self.b * x + self.c)

    def expectations(self, q12, q11, q22, need_dot):
        b2 = self.b**2
        half_sum = (q11 + q22) / 2.0
        s_minus = torch.exp(b2 * (q12 - half_sum))
        two_c = 2.0 * self.c
        cos_2c = torch.cos(two_c) if isinstance(two_c, torch.Tensor) else math.cos(two_c)
        s_plus = torch.exp(-b2 * (q12 + half_sum)) * cos_2c
        nngp = (s_minus - s_plus) * (self.a**2 / 2.0)
        dot = (s_minus + s_plus) * (self.a**2 * b2 / 2.0) if need_dot else None
        return nngp, dot

    def __repr__(self):
        return f"Sin(a={value_of(self.a)}, b={value_of(self.b)}, c={value_of(self.c)})"


class Cos(Sin):
    """``phi(x) = a * cos(b * x + c)``, i.e. ``Sin(a, b, c + pi/2)``."""

    def __init__(self, a: float = 1.0, b: float = 1.0, c: float = 0.0):
        c = hyperparameter(c, "Cos c")
        super().__init__(a, b, c + math.pi / 2.0)
        self.c_cos = c

    odd = False

    def fn(self, x):
        return self.a * torch.cos(self.b * x + self.c_cos)

    def __repr__(self):
        return f"Cos(a={value_of(self.a)}, b={value_of(self.b)}, c={value_of(self.c_cos)})"


class RBF(Activation):
    """``phi(x) = sqrt(2) sin(sqrt(2 gamma) x + pi/4)``, whose NNGP is the RBF kernel.

    ``E = exp(-gamma (q11 + q22 - 2 q12))`` and ``dot = 2 gamma E``.
    """

    def __init__(self, gamma: float = 1.0):
        # gamma < 0 would give exp(+|gamma| |x1 - x2|^2), which is not positive semi-definite
        self.gamma = hyperparameter(gamma, "RBF gamma", minimum=0.0, strict_minimum=True)

    def fn(self, x):
        return math.sqrt(2.0) * torch.sin((2.0 * self.gamma) ** 0.5 * x + math.pi / 4.0)

    def expectations(self, q12, q11, q22, need_dot):
        nngp = torch.exp(self.gamma * (2.0 * q12 - q11 - q22))
        return nngp, (2.0 * self.gamma * nngp if need_dot else None)

    def __repr__(self):
        return f"RBF(gamma={value_of(self.gamma)})"


class Exp(Activation):
    """``phi(x) = a * exp(b * x)``: ``E = a^2 exp(b^2 ((q11 + q22)/2 + q12))``, ``dot = b^2 E``."""

    def __init__(self, a: float = 1.0, b: float = 1.0):
        self.a = hyperparameter(a, "Exp a")
        self.b = hyperparameter(b, "Exp b")

    def fn(self, x):
        return self.a * torch.exp(self.b * x)

    def expectations(self, q12, q11, q22, need_dot):
        nngp = torch.exp(self.b**2 * ((q11 + q22) / 2.0 + q12)) * self.a**2
        return nngp, (self.b**2 * nngp if need_dot else None)

    def __repr__(self):
        return f"Exp(a={value_of(self.a)}, b={value_of(self.b)})"


class Gaussian(Activation):
    """``phi(x) = a * exp(b * x^2)``.

    With ``det = (1 - 2 b q11)(1 - 2 b q22) - 4 b^2 q12^2``: ``E = a^2 / sqrt(det)`` and
    ``dot = 4 a^2 b^2 q12 / det^(3/2)``. For ``b > 0`` the expectation is finite only while
    ``2 b q < 1``; larger variances raise ``ValueError``.
    """

    def __init__(self, a: float = 1.0, b: float = -1.0):
        self.a = hyperparameter(a, "Gaussian a")
        self.b = hyperparameter(b, "Gaussian b")

    def fn(self, x):
        return self.a * torch.exp(self.b * x * x)

    def expectations(self, q12, q11, q22, need_dot):
        b = self.b
        det = (1.0 - 2.0 * b * q11) * (1.0 - 2.0 * b * q22) - 4.0 * b * b * q12 * q12
        if value_of(b) > 0 and not bool((det > 0).all()):
            raise LayerSpecError(
                f"{self!r}: E[exp(b u^2) exp(b v^2)] is infinite for these variances "
                "(need 2 b q < 1); lower b or the input scale."
            )
        root = det.sqrt()
        nngp = torch.reciprocal(root) * self.a**2
        dot = None
        if need_dot:
            dot = q12 / (det * root) * (4.0 * self.a**2 * b * b)
        return nngp, dot

    def __repr__(self):
        return f"Gaussian(a={value_of(self.a)}, b={value_of(self.b)})"


class Sign(Activation):
    """``phi(x) = sign(x)``: ``E = 1 - 2 theta / pi`` (``= (2/pi) arcsin(rho)``).

    The derivative is zero almost everywhere, so the NTK contribution of everything before
    a ``Sign`` vanishes (``dot = 0``), as in the reference implementation.
    """

    odd = True

    def fn(self, x):
        return torch.sign(x)

    def expectations(self, q12, q11, q22, need_dot):
        _gap, theta = _sine_gap(q12, q11, q22)
        if tracks_grad(theta):
            nngp = 1.0 - (2.0 / math.pi) * theta
        else:
            nngp = theta.mul_(-2.0 / math.pi).add_(1.0)
        return nngp, (torch.zeros_like(nngp) if need_dot else None)

    def __repr__(self):
        return "Sign()"


# ----------------------------------------------------------------------------- polynomials
def _hermite_coefficients(degree: int) -> np.ndarray:
    """``h[i, a]``: coefficient of ``He_a`` in ``x^i`` for ``i, a <= degree`` (float64)."""
    h = np.zeros((degree + 1, degree + 1))
    for i in range(degree + 1):
        for m in range(i // 2 + 1):
            a = i - 2 * m
            h[i, a] = math.factorial(i) / (math.factorial(m) * math.factorial(a) * 2.0**m)
    return h


def _polynomial_expectation(coef: np.ndarray, q12, q11, q22):
    """``E[p(u) p(v)]`` for ``p(x) = sum_i coef[i] x^i``, exact for any variances.

    Expands ``p(sigma z)`` in probabilists' Hermite polynomials, ``sum_a alpha_a He_a(z)``,
    and uses ``E[He_a(z1) He_b(z2)] = delta_ab a! rho^a``.
    """
    degree = len(coef) - 1
    sd1, sd2 = safe_sqrt(q11), safe_sqrt(q22)
    norm = sd1 * sd2
    safe = torch.where(norm > 0, norm, torch.ones((), dtype=norm.dtype, device=norm.device))
    rho = torch.where(norm > 0, q12 / safe, torch.zeros((), dtype=q12.dtype, device=q12.device))
    rho = straight_clamp(rho, -1.0, 1.0)
    h = _hermite_coefficients(degree)
    out = None
    for a in range(degree, -1, -1):  # Horner in rho
        alpha1 = sum(coef[i] * h[i, a] * sd1**i for i in range(a, degree + 1) if coef[i])
        alpha2 = sum(coef[i] * h[i, a] * sd2**i for i in range(a, degree + 1) if coef[i])
        term = math.factorial(a) * alpha1 * alpha2
        out = term if out is None else out * rho + term
    if not isinstance(out, torch.Tensor):
        out = torch.as_tensor(out, dtype=q12.dtype, device=q12.device)
    return out.expand_as(q12).clone() if out.shape != q12.shape else out


class Polynomial(Activation):
    """``phi(x) = coef[0] + coef[1] x + ... + coef[m-1] x^(m-1)`` (ascending order).

    The expectation is exact for any variances: ``phi(sigma z)`` is expanded in Hermite
    polynomials and ``E[He_a(z1) He_b(z2)] = delta_ab a! rho^a``. ``dot`` is the same for
    ``phi'``. (The reference implementation's form is equal and matches to rounding.)
    """

    def __init__(self, coef: Sequence[float]):
        coef = np.asarray(coef, dtype=np.float64).reshape(-1)
        if coef.size == 0 or not np.all(np.isfinite(coef)):
            raise ValueError(f"Polynomial coef must be a non-empty finite sequence; got {coef}.")
        self.coef = coef
        self.dcoef = coef[1:] * np.arange(1, coef.size) if coef.size > 1 else np.zeros(1)

    @property
    def odd(self) -> bool:
        return bool(np.all(self.coef[0::2] == 0))

    def fn(self, x):
        out = torch.zeros_like(x) + float(self.coef[-1])
        for c in self.coef[-2::-1]:
            out = out * x + float(c)
        return out

    def expectations(self, q12, q11, q22, need_dot):
        nngp = _polynomial_expectation(self.coef, q12, q11, q22)
        dot = _polynomial_expectation(self.dcoef, q12, q11, q22) if need_dot else None
        return nngp, dot

    def __repr__(self):
        return f"Polynomial(coef={self.coef.tolist()})"


class Monomial(Polynomial):
    """``phi(x) = x^degree`` for any integer ``degree >= 0``."""

    def __init__(self, degree: int):
        degree = _check_degree(degree, "Monomial")
        super().__init__([0.0] * degree + [1.0])
        self.degree = degree

    def fn(self, x):
        return x**self.degree

    def __repr__(self):
        return f"Monomial({self.degree})"


class Hermite(Polynomial):
    """``phi(x) = He_n(x) / sqrt(n!)``, the normalized probabilists' Hermite polynomial.

    At unit input variance ``E = q12^n`` and ``dot = n q12^(n-1)``. Unlike the reference
    implementation (which assumes unit variance), the kernel here is exact for any variance.
    """

    def __init__(self, degree: int):
        degree = _check_degree(degree, "Hermite")
        coef = np.polynomial.hermite_e.herme2poly([0.0] * degree + [1.0])
        super().__init__(coef / math.sqrt(math.factorial(degree)))
        self.degree = degree

    def __repr__(self):
        return f"Hermite({self.degree})"


def _check_degree(degree, name: str) -> int:
    if int(degree) != degree or degree < 0:
        raise ValueError(f"{name} degree must be a non-negative integer; got {degree}.")
    return int(degree)


def _rectified_monomial_angle_part(n: int, cos, sin, theta):
    """``F_n = (n! / 2 pi) sum_k C(n, k) cos^(n-k) I_k`` with ``I_k = int_0^(pi - theta) cos^k``.

    ``F_n(theta)`` is ``E[relu(x)^n relu(y)^n]`` for unit-variance ``x, y`` at angle
    ``theta`` (polar coordinates; equals Cho & Saul's ``J_n / (2 pi)``).
    """
    length = math.pi - theta
    integrals = [length, sin.clone()]
    for k in range(2, n + 1):
        # I_k = cos(L)^(k-1) sin(L) / k + (k-1)/k I_(k-2), with cos(L) = -cos, sin(L) = sin.
        integrals.append((-cos) ** (k - 1) * sin / k + (k - 1) / k * integrals[k - 2])
    total = None
    for k in range(n + 1):
        term = math.comb(n, k) * cos ** (n - k) * integrals[k]
        total = term if total is None else total + term
    return total * (math.factorial(n) / _TWO_PI)


class RectifiedMonomial(Activation):
    """``phi(x) = max(x, 0)^degree`` (arc-cosine kernel of degree n, Cho & Saul 2009).

    ``E = (q11 q22)^(n/2) F_n(theta)`` and ``dot = n^2 (q11 q22)^((n-1)/2) F_(n-1)(theta)``,
    with ``F_n`` evaluated by a finite trigonometric sum (exact, also at ``theta = 0``,
    where the reference implementation returns NaN). ``degree = 0`` is the step function,
    whose derivative vanishes almost everywhere (``dot = 0``).
    """

    def __init__(self, degree: int):
        self.degree = _check_degree(degree, "RectifiedMonomial")

    def fn(self, x):
        if self.degree == 0:
            return (x > 0).to(x.dtype)
        return torch.clamp(x, min=0) ** self.degree

    def expectations(self, q12, q11, q22, need_dot):
        n = self.degree
        norm = safe_sqrt(q11) * safe_sqrt(q22)  # no underflow of q11 q22 at tiny scales
        gap, theta = _sine_gap(q12, q11, q22)
        positive = norm > 0
        safe = torch.where(positive, norm, torch.ones((), dtype=norm.dtype, device=norm.device))
        cos = straight_clamp(torch.where(positive, q12 / safe, torch.zeros_like(q12)), -1.0, 1.0)
        sin = straight_clamp(torch.where(positive, gap / safe, torch.ones_like(gap)), 0.0, 1.0)
        nngp = _rectified_monomial_angle_part(n, cos, sin, theta) * norm**n
        dot = None
        if need_dot:
            if n == 0:
                dot = torch.zeros_like(nngp)
            else:
                dot = _rectified_monomial_angle_part(n - 1, cos, sin, theta) * (
                    n * n * norm ** (n - 1)
                )
        return nngp, dot

    def __repr__(self):
        return f"RectifiedMonomial({self.degree})"


# ----------------------------------------------------------------------------- any function
class Elementwise(Activation):
    """Any elementwise nonlinearity, by formula or by Gaussian quadrature to a tolerance.

    - With ``nngp_fn(q12, q11, q22) -> E[phi(u) phi(v)]`` the kernel uses it; ``dot_fn`` with
      the same signature gives ``E[phi' phi']`` and defaults to ``d nngp_fn / d q12`` by
      autograd (Price's theorem).
    - Otherwise ``fn`` must be a torch-expressible elementwise function, and both
      expectations (``phi' `` by autograd) are computed to the relative tolerance ``rtol``:
      ``|error| <= rtol * sqrt(E[phi(u)^2] E[phi(v)^2])`` for every pre-activation variance in
      ``[1e-6, 1e6]`` and every correlation in ``[-1, 1]`` (outside that variance range, or
      where the tolerance cannot be reached, the kernel raises ``ValueError``).

    Method (:mod:`ntkit.layers._gauss`): Mehler's expansion
    ``E[phi(u) phi(v)] = sum_k c_k(s1) c_k(s2) rho^k`` in the correlation, with the Hermite
    coefficients ``c_k(s) = E[phi(s z) He_k(z)] / sqrt(k!)`` tabulated once per layer over
    ``log10 s`` (piecewise Chebyshev interpolation, checked against direct quadrature) and
    the series cut where its Cauchy-Schwarz tail bound ``|rho|^(K+1) t_K(s1) t_K(s2)`` (``t_K``
    the coefficients' remaining energy) is below ``rtol / 2``; pairs whose bound stays above
    it (correlations near +-1) are integrated directly (1-D at ``|rho| = 1``, nested 2-D
    otherwise). Every integral is a composite Gauss-Legendre rule whose panels resolve the
    Gaussian (1/4 standard deviation) and ``phi`` (1/4 on ``[-8, 8]``, and at the
    ``breakpoints``), computed with 8 and 12 nodes per panel; their difference must stay
    below the tolerance, otherwise the kernel raises. ``phi`` is assumed to vary on a scale of
    about 1 or more, with kinks or jumps only at integers in ``[-8, 8]`` or at ``breakpoints``
    (hardtanh, ReLU6, SELU, step: nothing to declare).

    Args:
        fn: The nonlinearity (needed for the finite network and for quadrature).
        nngp_fn: Optional closed form of ``E[phi(u) phi(v)]``.
        dot_fn: Optional closed form of ``E[phi'(u) phi'(v)]``.
        rtol: Relative tolerance of the quadrature (default ``1e-8``).
        breakpoints: Points where ``fn`` or its derivative jumps, if not integers in [-8, 8].
        degree: Legacy fixed 2-D Gauss-Hermite rule with this many nodes per axis instead
            (fast, exact for polynomials of degree < 2 degree; no accuracy guarantee).
        odd: Declare ``fn`` odd (lets zero-mean branches stay zero-mean for fan-in rules).
    """

    def __init__(
        self,
        fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
        nngp_fn: Callable | None = None,
        dot_fn: Callable | None = None,
        *,
        rtol: float = 1e-8,
        breakpoints: Sequence[float] = (),
        degree: int | None = None,
        odd: bool = False,
    ):
        if fn is None and nngp_fn is None:
            raise ValueError("Elementwise needs fn (for quadrature) or nngp_fn (closed form).")
        if fn is not None and not callable(fn):
            raise TypeError(f"Elementwise fn must be callable; got {type(fn).__name__}.")
        self._fn = fn
        self.nngp_fn = nngp_fn
        self.dot_fn = dot_fn
        self.rtol = float(hyperparameter(rtol, "Elementwise rtol", minimum=1e-13, maximum=0.1))
        self.breakpoints = tuple(
            float(hyperparameter(b, "Elementwise breakpoints")) for b in breakpoints
        )
        self.degree = None if degree is None else _check_degree(degree, "Elementwise")
        if self.degree is not None and self.degree < 1:
            raise ValueError("Elementwise degree must be at least 1.")
        self.odd = bool(odd)
        if self.degree is not None:
            self.memory_factor = 4.0 + 2.0 * self.degree
        else:
            self.memory_factor = 24.0

    def fn(self, x):
        if self._fn is None:
            raise ValueError("This Elementwise layer has no fn, so it has no finite network.")
        return self._fn(x)

    def _derivative(self, x: torch.Tensor) -> torch.Tensor:
        if tracks_grad(x):  # keep the graph: the kernel is being differentiated
            y = self._fn(x)
            if not y.requires_grad:  # piecewise constant (a step): zero almost everywhere
                return torch.zeros_like(x)
            (g,) = torch.autograd.grad(y.sum(), x, allow_unused=True, create_graph=True)
            return torch.zeros_like(x) if g is None else g
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            y = self._fn(x)
            if not y.requires_grad:
                return torch.zeros_like(x)
            (g,) = torch.autograd.grad(y.sum(), x, allow_unused=True)
        return torch.zeros_like(x) if g is None else g.detach()

    def expectations(self, q12, q11, q22, need_dot):
        if self.nngp_fn is not None:
            return self._closed_form(q12, q11, q22, need_dot)
        if self.degree is not None:
            nngp = self._quadrature(self._fn, q12, q11, q22)
            dot = self._quadrature(self._derivative, q12, q11, q22) if need_dot else None
            return nngp, dot
        name = repr(self)
        tol = self.rtol / 10.0
        table = _gauss.table_for(self, "_fn_table", self._fn, self.breakpoints, tol, name)
        nngp = _gauss.expectation(table, table, q12, q11, q22, self.rtol, name)
        dot = None
        if need_dot:
            dtable = _gauss.table_for(
                self, "_dot_table", self._derivative, self.breakpoints, tol, name
            )
            dot = _gauss.expectation(dtable, dtable, q12, q11, q22, self.rtol, name)
        return nngp, dot

    def _closed_form(self, q12, q11, q22, need_dot):
        if not need_dot:
            return self.nngp_fn(q12, q11, q22), None
        if self.dot_fn is not None:
            return self.nngp_fn(q12, q11, q22), self.dot_fn(q12, q11, q22)
        if tracks_grad(q12, q11, q22):  # keep the graph: the kernel is being differentiated
            q = q12 if q12.requires_grad else q12.detach().requires_grad_(True)
            nngp = self.nngp_fn(q, q11, q22)
            (dot,) = torch.autograd.grad(nngp.sum(), q, create_graph=True)
            return nngp, dot
        with torch.enable_grad():
            q = q12.detach().requires_grad_(True)
            nngp = self.nngp_fn(q, q11, q22)
            (dot,) = torch.autograd.grad(nngp.sum(), q)
        return nngp.detach(), dot

    def _quadrature(self, phi, q12, q11, q22):
        """2-D Gauss-Hermite rule ``sum_ij w_i w_j phi(u_i) phi(v_ij)``.

        Here ``u = sqrt(q11) z_i`` and ``v = (q12/sqrt(q11)) z_i + sqrt(q22 - q12^2/q11) z_j``
        with probabilists' nodes ``z`` and weights ``w`` normalized to sum to one.
        """
        nodes, weights = scipy.special.roots_hermitenorm(self.degree)
        weights = weights / weights.sum()
        dtype, device = q12.dtype, q12.device
        q12, q11, q22 = torch.broadcast_tensors(q12, q11, q22)
        sd1 = safe_sqrt(q11)
        positive = sd1 > 0
        safe = torch.where(positive, sd1, torch.ones((), dtype=dtype, device=device))
        slope = torch.where(positive, q12 / safe, torch.zeros((), dtype=dtype, device=device))
        resid = safe_sqrt((q22 - slope * slope).clamp_min(0.0))
        z = torch.as_tensor(nodes, dtype=dtype, device=device)
        w = torch.as_tensor(weights, dtype=dtype, device=device)
        out = torch.zeros_like(q12)
        second = resid.unsqueeze(-1) * z  # (..., degree)
        for i in range(self.degree):
            zi = float(z[i])
            inner = phi(slope.unsqueeze(-1) * zi + second) @ w  # sum_j w_j phi(v_ij)
            out = out + float(w[i]) * phi(sd1 * zi) * inner
        return out

    def __repr__(self):
        name = getattr(self._fn, "__name__", "fn") if self._fn is not None else "closed form"
        return f"Elementwise({name})"
