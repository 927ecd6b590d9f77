"""Elman recurrent networks with weights shared across time (the recurrent NTK).

For sequences ``x`` of shape ``(n, C, T)`` (channels-first, time last) the layer computes
``g_t = W h_(t-1) + U x_t + b``, ``h_t = phi(g_t)`` with ``h_0 = 0`` and returns the last
hidden state ``h_T``. As the hidden width grows, the pre-activations of two equally long
sequences at the same time step are jointly Gaussian with covariance

    S_t = w_std^2 E[phi(u) phi(v)]_(S_(t-1)) + u_std^2 q_t + b_std^2,

where ``q_t`` is the input kernel at step ``t``; and the NTK of ``g_t`` follows

    Th_t = S_t + w_std^2 E[phi'(u) phi'(v)]_(S_(t-1)) Th_(t-1) + u_std^2 Th_in,t

(NTK parameterization). Sharing ``W`` across time does not change these limits: pairs of
different time steps contribute nothing (Alemohammad, Wang, Balestriero & Baraniuk 2021, "The
Recurrent Neural Tangent Kernel", arXiv 2006.10246, for sequences of equal length). The
output ``h_T = phi(g_T)`` has NNGP ``E[phi phi]_(S_T)`` and NTK ``E[phi' phi']_(S_T) Th_T``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ntkit.errors import LayerSpecError
from ntkit.kernel import Kernel
from ntkit.layers import _init
from ntkit.layers._params import value_of
from ntkit.layers._spatial import location_diagonal
from ntkit.layers.activations import Activation, ReLU
from ntkit.layers.base import Layer, Shape, single_stream
from ntkit.layers.dense import check_parameterization, check_std

__all__ = ["Recurrent", "RecurrentModule"]


class RecurrentModule(nn.Module):
    """Finite Elman RNN returning the last hidden state, ``(n, C, T)`` -> ``(n, H)``.

    ``g_t = a_w h_(t-1) W^T + a_u x_t U^T + a_b b``, ``h_t = phi(g_t)``, ``h_0 = 0``, with
    ``W`` ``(H, H)``, ``U`` ``(H, C)``, ``b`` ``(H,)``. NTK parameterization: standard normal
    draws, ``a_w = w_std / sqrt(H)``, ``a_u = u_std / sqrt(C)``, ``a_b = b_std``; standard
    parameterization: the scales are 1 and the draws carry the variances.

    Args:
        in_channels: ``C``.
        hidden: ``H``.
        fn: The elementwise nonlinearity ``phi``.
        scales: ``(a_w, a_u, a_b)``; ``a_b`` ``None`` means no bias.
    """

    def __init__(self, in_channels: int, hidden: int, fn, scales: tuple):
        super().__init__()
        self.fn = fn
        self.a_w, self.a_u = float(scales[0]), float(scales[1])
        self.a_b = None if scales[2] is None else float(scales[2])
        self.weight_hh = nn.Parameter(torch.empty(hidden, hidden))
        self.weight_ih = nn.Parameter(torch.empty(hidden, in_channels))
        if self.a_b is None:
            self.register_parameter("bias", None)
        else:
            self.bias = nn.Parameter(torch.empty(hidden))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(n, C, T)`` -> ``(n, H)``."""
        inputs = torch.einsum("nct,hc->tnh", x, self.weight_ih) * self.a_u
        h = None
        for t in range(inputs.shape[0]):
            g = inputs[t]
            if h is not None:
                g = g + (h @ self.weight_hh.T) * self.a_w
            if self.bias is not None:
                g = g + self.a_b * self.bias
            h = self.fn(g)
        return h

    def extra_repr(self) -> str:
        h, c = self.weight_ih.shape
        return f"in_channels={c}, hidden={h}"


class Recurrent(Layer):
    """Elman RNN over the time axis of ``(n, C, T)`` sequences, returning the last state ``(n, H)``.

    ``h_t = phi(W h_(t-1) + U x_t + b)``, ``h_0 = 0``, one ``W``, ``U``, ``b`` for all steps;
    the kernel is the recurrent NTK of Alemohammad et al. 2021 (see the module docstring).
    All sequences of a batch have the same length ``T`` (the reference result's setting). The
    output is the post-activation state, so a ``Dense`` readout follows.

    NTK parameterization (default): standard normal weights scaled by ``w_std / sqrt(H)``,
    ``u_std / sqrt(C)`` and ``b_std``. Standard parameterization: ``W ~ N(0, w_std^2 / H)``,
    ``U ~ N(0, u_std^2 / C)``, ``b ~ N(0, b_std^2)`` (then the NTK grows with the widths).

    Args:
        hidden: Hidden width ``H`` (the width that goes to infinity).
        activation: An activation layer with closed-form expectations (default ``ReLU()``).
        w_std: Recurrent weight standard deviation.
        u_std: Input weight standard deviation.
        b_std: Bias standard deviation; ``None`` (default) means no bias.
        parameterization: ``"ntk"`` or ``"standard"``.
    """

    memory_factor = 10.0

    def __init__(
        self,
        hidden: int,
        activation: Activation | None = None,
        *,
        w_std: float = 1.0,
        u_std: float = 1.0,
        b_std: float | None = None,
        parameterization: str = "ntk",
    ):
        if isinstance(hidden, bool) or int(hidden) != hidden or hidden < 1:
            raise ValueError(f"Recurrent hidden must be a positive integer; got {hidden}.")
        activation = ReLU() if activation is None else activation
        if not isinstance(activation, Activation):
            raise TypeError(
                "Recurrent activation must be an ntkit activation layer such as L.ReLU() or "
                f"L.Erf(); got {type(activation).__name__}."
            )
        self.hidden = int(hidden)
        self.activation = activation
        self.w_std = check_std(w_std, "w_std", allow_none=False)
        self.u_std = check_std(u_std, "u_std", allow_none=False)
        self.b_std = check_std(b_std, "b_std", allow_none=True)
        self.parameterization = check_parameterization(parameterization)

    def _sequence(self, in_shape: Shape) -> tuple[int, int]:
        single_stream(repr(self), in_shape)
        if len(in_shape) != 2:
            raise LayerSpecError(
                f"{self!r} expects sequences (n, C, T) (channels-first, time last); got "
                f"per-sample shape {in_shape}."
            )
        return in_shape[0], in_shape[1]

    def out_shape(self, in_shape: Shape) -> Shape:
        self._sequence(in_shape)
        return (self.hidden,)

    def input_layout(self, diagonal_spatial):
        return True  # only same-step input covariances enter

    def kernel_rule(self, k: Kernel) -> Kernel:
        channels, steps = self._sequence(k.shape)

        def same_step(t, pair):
            if t is None or k.diagonal_spatial:
                return t
            return location_diagonal(t, 1, pair=pair)

        q, q_ntk = same_step(k.nngp, True), same_step(k.ntk, True)
        c1, c2 = same_step(k.cov1, False), same_step(k.cov2, False)
        w2, u2 = self.w_std**2, self.u_std**2
        b2 = 0.0 if self.b_std is None else self.b_std**2
        ntk_param = self.parameterization == "ntk"
        act = self.activation
        want_ntk = q_ntk is not None
        s = th = v1 = v2 = None
        for t in range(steps):
            # new step's pre-activation covariances: own variances first
            if s is None:
                e = e1 = e2 = dot = None
            else:
                e, dot = act.expectations(s, v1[:, None], v2[None, :], need_dot=want_ntk)
                e1 = act.expectations(v1, v1, v1, need_dot=False)[0]
                e2 = None if v2 is None else act.expectations(v2, v2, v2, need_dot=False)[0]
            qt = q[..., t]
            s_new = u2 * qt + b2 + (0.0 if e is None else w2 * e)
            v1 = u2 * c1[..., t] + b2 + (0.0 if e1 is None else w2 * e1)
            v2 = None if c2 is None else u2 * c2[..., t] + b2 + (0.0 if e2 is None else w2 * e2)
            if want_ntk:
                if ntk_param:
                    grads = s_new
                else:  # un-normalized gradients: fan-ins H (recurrent) and C (input)
                    grads = channels * qt + (1.0 if self.b_std is not None else 0.0)
                    if e is not None:
                        grads = grads + self.hidden * e
                th_new = grads + u2 * q_ntk[..., t]
                if th is not None:
                    th_new = th_new + w2 * dot * th
                th = th_new
            s = s_new
        v2_or_v1 = v1 if v2 is None else v2
        nngp, dot = act.expectations(s, v1[:, None], v2_or_v1[None, :], need_dot=want_ntk)
        return k.replace(
            nngp=nngp,
            ntk=None if th is None else dot * th,
            cov1=act.expectations(v1, v1, v1, need_dot=False)[0],
            cov2=None if v2 is None else act.expectations(v2, v2, v2, need_dot=False)[0],
            shape=(self.hidden,),
            diagonal_spatial=False,
            is_gaussian=False,
            independent=False,
            decoupled=True,
        )

    def build_module(self, in_shape: Shape, generator: torch.Generator) -> nn.Module:
        channels, _ = self._sequence(in_shape)
        h = self.hidden
        ntk = self.parameterization == "ntk"
        w_std, u_std = value_of(self.w_std), value_of(self.u_std)
        b_std = None if self.b_std is None else value_of(self.b_std)
        scales = (
            (w_std / math.sqrt(h), u_std / math.sqrt(channels), b_std)
            if ntk
            else (1.0, 1.0, None if b_std is None else 1.0)
        )
        mod = RecurrentModule(channels, h, self.activation.fn, scales)
        mod.weight_hh.copy_(_init.normal((h, h), generator, 1.0 if ntk else w_std / math.sqrt(h)))
        mod.weight_ih.copy_(
            _init.normal((h, channels), generator, 1.0 if ntk else u_std / math.sqrt(channels))
        )
        if mod.bias is not None:
            mod.bias.copy_(_init.normal((h,), generator, 1.0 if ntk else b_std))
        return mod

    def __repr__(self) -> str:
        return (
            f"Recurrent({self.hidden}, {self.activation!r}, w_std={value_of(self.w_std)}, "
            f"u_std={value_of(self.u_std)}, "
            f"b_std={None if self.b_std is None else value_of(self.b_std)}, "
            f"parameterization={self.parameterization!r})"
        )
