"""Linearized and Taylor-expanded networks as trainable modules.

``taylor_expand(model, k)`` returns a module computing, around the parameters ``theta0`` the
model has now,

    f_k(x; theta) = sum_{m=0..k} (1/m!) D^m f(x; theta0)[delta, ..., delta],
    delta = theta - theta0,

with ``theta`` its own trainable parameters (initialised to ``theta0``). ``linearize`` is
``k = 1``: ``f(x; theta0) + J(x; theta0) (theta - theta0)``, whose gradient-descent dynamics
are exactly the kernel dynamics of the empirical NTK at ``theta0`` (Lee et al. 2019).
Directional derivatives come from nested ``torch.func.jvp`` (cost about ``3^k`` forward
passes); the result is differentiable in ``theta`` by ordinary autograd.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping

import torch
from torch import nn
from torch.func import functional_call, jvp

from ntkit.empirical.functional import split_parameters, transform_safe

__all__ = ["TaylorModel", "linearize", "taylor_expand"]


def _key(name: str) -> str:
    return name.replace(".", "-")


class TaylorModel(nn.Module):
    """Degree-``k`` Taylor expansion of a model in its parameters (see module docstring).

    Its trainable parameters are copies of the expanded parameters (names with ``.``
    replaced by ``-``, under ``params``); ``theta0`` and every other tensor of the model
    are buffers, so ``.to(device)`` moves everything.

    Args:
        model: A ``torch.nn.Module`` or a function ``f(params, x)``.
        degree: Order ``k >= 0`` of the expansion.
        params: Module: names of the parameters to expand in (default: all that require
            grad; the others stay fixed). Function: the parameter dict (required).
    """

    def __init__(self, model, degree: int, params=None):
        super().__init__()
        if isinstance(degree, bool) or int(degree) != degree or degree < 0:
            raise ValueError(f"degree must be an integer >= 0; got {degree!r}.")
        self.degree = int(degree)
        if isinstance(model, nn.Module):
            start, fixed = split_parameters(model, params)
            base = copy.deepcopy(model)
            object.__setattr__(self, "_fn", self._module_fn(base))
        elif callable(model):
            if not isinstance(params, Mapping) or not params:
                raise ValueError("for a function f(params, x), pass params= as a non-empty dict.")
            start = {n: torch.as_tensor(p).detach() for n, p in params.items()}
            fixed = {}
            object.__setattr__(self, "_fn", lambda p, x, f=model: f(p, x))
        else:
            raise TypeError(
                f"model must be a torch.nn.Module or f(params, x); got {type(model).__name__}."
            )
        if not start:
            raise ValueError("the model has no parameters to expand in.")
        self._names = list(start)
        self._fixed_names = list(fixed)
        self.params = nn.ParameterDict({_key(n): nn.Parameter(t.clone()) for n, t in start.items()})
        for n, t in start.items():
            self.register_buffer("theta0-" + _key(n), t.clone())
        for n, t in fixed.items():
            self.register_buffer("fixed-" + _key(n), t.clone())

    @staticmethod
    def _module_fn(base: nn.Module) -> Callable:
        def fn(p, x):
            return functional_call(base, p, (x,))

        return fn

    def theta0(self) -> dict[str, torch.Tensor]:
        """The expansion point ``name -> tensor``."""
        return {n: getattr(self, "theta0-" + _key(n)) for n in self._names}

    def theta(self) -> dict[str, torch.Tensor]:
        """The current (trainable) parameters ``name -> tensor``."""
        return {n: self.params[_key(n)] for n in self._names}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``sum_m D^m f(x; theta0)[delta^m] / m!`` for ``x: (n, *in_shape)``."""
        fixed = {n: getattr(self, "fixed-" + _key(n)) for n in self._fixed_names}
        theta0 = self.theta0()
        delta = {n: t - theta0[n] for n, t in self.theta().items()}

        def f(p):
            return self._fn({**fixed, **p}, x)

        with transform_safe():
            terms = _directional_derivatives(f, theta0, delta, self.degree)
        out = terms[0]
        for m in range(1, len(terms)):
            out = out + terms[m] / math.factorial(m)
        return out

    def extra_repr(self) -> str:
        return f"degree={self.degree}, params={len(self._names)}"


def _directional_derivatives(f, theta0: dict, delta: dict, k: int) -> tuple:
    """``(f(theta0), Df[delta], ..., D^k f[delta^k])`` by nested forward-mode AD."""

    def upto(m: int, p: dict) -> tuple:
        if m == 0:
            return (f(p),)
        primals, tangents = jvp(lambda q: upto(m - 1, q), (p,), (delta,))
        return (*primals, tangents[-1])

    return upto(k, theta0)


def linearize(model, *, params=None) -> TaylorModel:
    """First-order expansion ``f(x; theta0) + J(x; theta0) (theta - theta0)`` as a module.

    Training it by gradient descent on the squared loss follows the closed-form kernel
    dynamics of the empirical NTK at ``theta0`` exactly (the Jacobian is constant).

    Example:
        >>> lin = nk.linearize(model)                   # doctest: +SKIP
        >>> opt = torch.optim.SGD(lin.parameters(), lr=0.1)  # doctest: +SKIP

    Args:
        model: A ``torch.nn.Module`` (expanded around its current parameters) or a function
            ``f(params, x)``.
        params: Module: names of the parameters to expand in (others fixed); function:
            the parameter dict.

    Returns:
        A :class:`TaylorModel` of degree 1, with trainable parameters equal to ``theta0``.
    """
    return TaylorModel(model, 1, params)


def taylor_expand(model, degree: int, *, params=None) -> TaylorModel:
    """Degree-``degree`` Taylor expansion of ``model`` in its parameters, as a module.

    Args:
        model: A ``torch.nn.Module`` or a function ``f(params, x)``.
        degree: ``k >= 0``; 0 is the constant ``f(x; theta0)``, 1 is :func:`linearize`.
        params: As in :func:`linearize`.

    Returns:
        A :class:`TaylorModel`.
    """
    return TaylorModel(model, degree, params)
