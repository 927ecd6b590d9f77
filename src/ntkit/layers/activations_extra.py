"""The reference library's remaining nonlinearities: ``SigmoidLike``, ``Gabor``, ``ExpNormalized``.

Parameters mean what they mean in the reference implementation (Neural Tangents 0.6.5).
``Gabor``'s expectations are derived here from the Gaussian integral
``E[exp(-z^T z + i t^T z)] = det(I + 2 S)^(-1/2) exp(-t^T S (I + 2 S)^(-1) t / 2)`` for
``z ~ N(0, S)``; see :class:`Gabor`.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ntkit.kernel import Kernel
from ntkit.layers._params import hyperparameter, value_of
from ntkit.layers._spatial import pair_variances, self_variances
from ntkit.layers.activations import NOT_GAUSSIAN_MESSAGE, Activation, Erf
from ntkit.layers.base import LayerSpecError, Shape, single_stream

__all__ = ["ExpNormalized", "Gabor", "SigmoidLike"]

#: Width of the erf that best fits the logistic sigmoid on [-5, 5] in squared error (the
#: reference library's constant).
SIGMOID_ERF_SCALE = 2.4020563531719796


class SigmoidLike(Erf):
    """``phi(x) = 0.5 erf(x / 2.4020563531719796) + 0.5``, a sigmoid with an erf kernel.

    The same function and kernel as the reference library's ``Sigmoid_like`` (an ``Erf(a=0.5,
    b=1/2.40206, c=0.5)``); the constant makes it the least-squares fit to the logistic
    sigmoid on ``[-5, 5]``.
    """

    def __init__(self):
        super().__init__(0.5, 1.0 / SIGMOID_ERF_SCALE, 0.5)

    def __repr__(self):
        return "SigmoidLike()"


class Gabor(Activation):
    """``phi(x) = exp(-x^2) sin(x)``.

    With ``a = q11``, ``b = q22``, ``c = q12``, ``D = det(I + 2 S) = 1 + 2 (a + b) + 4 (a b - c^2)``
    and ``A_pm = -1/2 + (1 + a + b +- 2 c) / (2 D)``:
    ``E = (exp(A_+) - exp(A_-)) / (2 sqrt(D))`` (from ``sin u sin v = (cos(u - v) -
    cos(u + v)) / 2`` and the Gaussian integral in the module docstring), and
    ``dot = dE/dc`` (Price's theorem), differentiated in closed form.
    """

    odd = True

    def fn(self, x):
        return torch.exp(-x * x) * torch.sin(x)

    def expectations(self, q12, q11, q22, need_dot):
        s = q11 + q22
        det = 1.0 + 2.0 * s + 4.0 * (q11 * q22 - q12 * q12)
        root = det.sqrt()
        base = 1.0 + s
        e_plus = torch.exp(-0.5 + (base + 2.0 * q12) / (2.0 * det))
        e_minus = torch.exp(-0.5 + (base - 2.0 * q12) / (2.0 * det))
        nngp = (e_plus - e_minus) / (2.0 * root)
        dot = None
        if need_dot:
            # d det/dc = -8c;  d A_pm/dc = +-1/D + 4 c (1 + a + b +- 2c) / D^2
            d_plus = 1.0 / det + 4.0 * q12 * (base + 2.0 * q12) / (det * det)
            d_minus = -1.0 / det + 4.0 * q12 * (base - 2.0 * q12) / (det * det)
            dot = 2.0 * q12 * (e_plus - e_minus) / (det * root) + (
                e_plus * d_plus - e_minus * d_minus
            ) / (2.0 * root)
        return nngp, dot

    def __repr__(self):
        return "Gabor()"


class ExpNormalizedModule(nn.Module):
    """Finite ``ExpNormalized``: an RBF feature of the channel-normalized input, times its norm.

    For ``h`` of shape ``(n, C, *spatial)``, with ``r = ||h||_C / sqrt(C)`` per sample and
    location: ``y = r sqrt(2) sin(sqrt(gamma) h / r + pi/4) exp(gamma (1 + shift) / 2)``.
    Over Gaussian ``h`` its covariance is ``sqrt(q11 q22) exp(gamma (rho + shift))``.
    """

    def __init__(self, gamma: float, shift: float):
        super().__init__()
        self.gamma, self.shift = float(gamma), float(shift)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """``(n, C, *spatial)`` -> same shape."""
        r = (h * h).mean(dim=1, keepdim=True).sqrt()
        scale = math.sqrt(2.0) * math.exp(self.gamma * (1.0 + self.shift) / 2.0)
        arg = math.sqrt(self.gamma) * h / r.clamp_min(torch.finfo(h.dtype).tiny)
        return r * scale * torch.sin(arg + math.pi / 4.0)

    def extra_repr(self) -> str:
        return f"gamma={self.gamma}, shift={self.shift}"


class ExpNormalized(Activation):
    """The "Gaussian normalized kernel" (Shankar et al. 2020, arXiv 2003.02237, p. 6).

    With ``rho = q12 / sqrt(q11 q22)``: ``nngp' = sqrt(q11 q22) exp(gamma (rho + shift))`` and
    ``ntk' = gamma exp(gamma (rho + shift)) ntk``, as in the reference library (where it has no
    finite network). For ``shift = -1`` this is ``|x1| |x2| exp(-gamma |x1^ - x2^|^2 / 2)`` on
    the unit-normalized pre-activations. The finite module (``ExpNormalizedModule``)
    normalizes each location's channels and applies random-feature RBF sines, whose
    covariance converges to ``nngp'``; its NTK converges to ``ntk'`` too (the gradients
    through the normalization vanish with the width; checked by Monte Carlo).

    Args:
        gamma: Exponent scale (``> 0``).
        shift: Added to ``rho`` inside the exponent (default ``-1``).
        do_clip: Clip ``rho`` to ``[-1, 1]`` (guards against rounding).
    """

    odd = False

    def __init__(self, gamma: float = 1.0, shift: float = -1.0, do_clip: bool = False):
        self.gamma = hyperparameter(gamma, "ExpNormalized gamma", minimum=0.0, strict_minimum=True)
        self.shift = hyperparameter(shift, "ExpNormalized shift")
        self.do_clip = bool(do_clip)

    def out_shape(self, in_shape: Shape) -> Shape:
        return single_stream(self.name, in_shape)

    def expectations(self, q12, q11, q22, need_dot):
        norm = (q11 * q22).sqrt()
        safe = torch.where(norm > 0, norm, torch.ones((), dtype=norm.dtype, device=norm.device))
        rho = torch.where(norm > 0, q12 / safe, torch.zeros((), dtype=q12.dtype, device=q12.device))
        if self.do_clip:
            rho = rho.clamp(-1.0, 1.0)
        expo = torch.exp(self.gamma * (rho + self.shift))
        return norm * expo, (self.gamma * expo if need_dot else None)

    def kernel_rule(self, k: Kernel) -> Kernel:
        if not k.is_gaussian:
            raise LayerSpecError(NOT_GAUSSIAN_MESSAGE.format(name=self.name))
        v1, v2 = pair_variances(k)
        nngp, dot = self.expectations(k.nngp, v1, v2, need_dot=k.ntk is not None)

        def own(cov):
            a, b = self_variances(cov, k)
            return self.expectations(cov, a, b, need_dot=False)[0]

        return k.replace(
            nngp=nngp,
            ntk=None if k.ntk is None else k.ntk * dot,
            cov1=own(k.cov1),
            cov2=None if k.cov2 is None else own(k.cov2),
            is_gaussian=False,
            independent=False,
        )

    def build_module(self, in_shape: Shape, generator: torch.Generator) -> nn.Module:
        return ExpNormalizedModule(value_of(self.gamma), value_of(self.shift))

    def __repr__(self):
        return (
            f"ExpNormalized(gamma={value_of(self.gamma)}, shift={value_of(self.shift)}, "
            f"do_clip={self.do_clip})"
        )
