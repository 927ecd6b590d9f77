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
from ntkit.layers.masking import check_mask, current_mask

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

    def __init__(
        self, in_channels: int, hidden: int, fn, scales: tuple, return_sequences: bool = False
    ):
        super().__init__()
        self.fn = fn
        self.return_sequences = bool(return_sequences)
        self.a_w, self.a_u = float(scales[0]), float(scales[1])
        self.a_b = None if scales[2] is None else float(scales[2])
        self.weight_hh = nn.Parameter(torch.empty(hidden, hidden))
        self.weight_ih = nn.Parameter(torch.empty(hidden, in_channels))
        if self.a_b is None:
            self.register_parameter("bias", None)
        else:
            self.bias = nn.Parameter(torch.empty(hidden))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(n, C, T)`` -> ``(n, H)``, or ``(n, H, T)`` with ``return_sequences``."""
        inputs = torch.einsum("nct,hc->tnh", x, self.weight_ih) * self.a_u
        mask = current_mask(x)  # left-padded sequences: states stay 0 before the start
        h = None
        states = []
        for t in range(inputs.shape[0]):
            g = inputs[t]
            if h is not None:
                g = g + (h @ self.weight_hh.T) * self.a_w
            if self.bias is not None:
                g = g + self.a_b * self.bias
            h = self.fn(g)
            if mask is not None:
                h = h * mask[:, t, None].to(h.dtype)
            states.append(h)
        return torch.stack(states, dim=-1) if self.return_sequences else h

    def extra_repr(self) -> str:
        h, c = self.weight_ih.shape
        return f"in_channels={c}, hidden={h}"


class Recurrent(Layer):
    """Elman RNN over the time axis of ``(n, C, T)`` sequences, returning the last state ``(n, H)``.

    ``h_t = phi(W h_(t-1) + U x_t + b)``, ``h_0 = 0``, one ``W``, ``U``, ``b`` for all steps;
    the kernel is the recurrent NTK of Alemohammad et al. 2021 (see the module docstring).
    All sequences of a batch have the same padded length ``T``; sequences of different lengths
    are left-padded and passed as ``ntkit.layers.Masked(x, mask)`` (states stay 0 until a
    sequence starts, so the last states are aligned at the ends). The output is the
    post-activation state, so a ``Dense`` readout follows.

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
        return_sequences: Return every step's state, ``(n, H, T)``, instead of the last (the
            states of different steps are correlated through the shared weights; pooling
            over time needs that full covariance, which the layer then computes).
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
        return_sequences: bool = False,
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
        self.return_sequences = bool(return_sequences)

    def _sequence(self, in_shape: Shape) -> tuple[int, int]:
        single_stream(repr(self), in_shape)
        if len(in_shape) != 2:
            raise LayerSpecError(
                f"{self!r} expects sequences (n, C, T) (channels-first, time last); got "
                f"per-sample shape {in_shape}."
            )
        return in_shape[0], in_shape[1]

    def out_shape(self, in_shape: Shape) -> Shape:
        _, steps = self._sequence(in_shape)
        return (self.hidden, steps) if self.return_sequences else (self.hidden,)

    def input_layout(self, diagonal_spatial):
        # the last state, or same-step pairs of states, need same-step input covariances only
        return True if not self.return_sequences else diagonal_spatial

    def kernel_rule(self, k: Kernel) -> Kernel:
        channels, steps = self._sequence(k.shape)

        def same_step(t, pair):
            if t is None or k.diagonal_spatial:
                return t
            return location_diagonal(t, 1, pair=pair)

        act = self.activation
        want_ntk = k.ntk is not None
        ss, ths, v1s, v2s = self._aligned(
            channels,
            same_step(k.nngp, True),
            same_step(k.ntk, True),
            same_step(k.cov1, False),
            same_step(k.cov2, False),
            self._active(k, steps),
        )

        def own(v):
            return act.expectations(v, v, v, need_dot=False)[0]

        def outputs(s, th, v1, v2):
            v2 = v1 if v2 is None else v2
            nngp, dot = act.expectations(s, v1[:, None], v2[None, :], need_dot=want_ntk)
            return nngp, None if th is None else dot * th

        flags = dict(is_gaussian=False, independent=False, decoupled=True)
        if not self.return_sequences:
            nngp, ntk = outputs(ss[-1], ths[-1], v1s[-1], v2s[-1])
            return k.replace(
                nngp=nngp,
                ntk=ntk,
                cov1=own(v1s[-1]),
                cov2=None if v2s[-1] is None else own(v2s[-1]),
                shape=(self.hidden,),
                diagonal_spatial=False,
                **flags,
            )
        shape = (self.hidden, steps)
        if k.diagonal_spatial:  # every step's state against the same step's
            pairs = [outputs(*a) for a in zip(ss, ths, v1s, v2s)]
            return k.replace(
                nngp=torch.stack([p[0] for p in pairs], dim=-1),
                ntk=None if not want_ntk else torch.stack([p[1] for p in pairs], dim=-1),
                cov1=torch.stack([own(v) for v in v1s], dim=-1),
                cov2=None if v2s[0] is None else torch.stack([own(v) for v in v2s], dim=-1),
                shape=shape,
                **flags,
            )
        v1 = torch.stack(v1s, dim=-1)  # (n1, T): pre-activation variances per step
        v2 = None if v2s[0] is None else torch.stack(v2s, dim=-1)
        nngp, ntk = self._grid(channels, k.nngp, k.ntk, v1, v1 if v2 is None else v2, pair=True)
        cov1 = self._grid(channels, k.cov1, None, v1, v1, pair=False)[0]
        cov2 = None if v2 is None else self._grid(channels, k.cov2, None, v2, v2, pair=False)[0]
        return k.replace(nngp=nngp, ntk=ntk, cov1=cov1, cov2=cov2, shape=shape, **flags)

    def _active(self, k: Kernel, steps: int):
        """Float masks of real steps for left-padded masked inputs, else ``None``."""
        if k.mask1 is None:
            return None
        check_mask(repr(self), k.mask1, (steps,))
        check_mask(repr(self), k.mask2, (steps,))
        if self.return_sequences:
            raise LayerSpecError(
                f"{self!r}: masked (variable-length) inputs work with the last state only; "
                "use return_sequences=False."
            )
        for mask in (k.mask1, k.mask2):
            if bool((mask[:, 1:].int() < mask[:, :-1].int()).any()):
                raise LayerSpecError(
                    f"{self!r} needs left-padded sequences: each mask must be False on the "
                    "padding before the sequence and True from its first real step to the end."
                )
        dtype = k.nngp.dtype
        return k.mask1.to(dtype), k.mask2.to(dtype)

    def _terms(self, channels, q, e):
        """Pre-activation covariance and its un-normalized gradient term for one step."""
        w2, u2 = self.w_std**2, self.u_std**2
        b2 = 0.0 if self.b_std is None else self.b_std**2
        s = u2 * q + b2 + (0.0 if e is None else w2 * e)
        if self.parameterization == "ntk":
            return s, s
        grads = channels * q + (1.0 if self.b_std is not None else 0.0)
        return s, grads if e is None else grads + self.hidden * e

    def _aligned(self, channels, q, q_ntk, c1, c2, active=None):
        """Per step ``t``: pair covariance ``S_t``, NTK ``Th_t`` and own variances.

        ``q``/``q_ntk`` are same-step input kernels ``(n1, n2, T)``, ``c1``/``c2`` the
        inputs' variances ``(n, T)``. ``active``: for left-padded masked sequences, the
        float masks ``(n1, T)`` and ``(n2, T)`` of real steps; a state is 0 before its
        sequence starts, so recurrent terms and gradients involving it vanish. Returns four
        lists over the steps.
        """
        act, w2, u2 = self.activation, self.w_std**2, self.u_std**2
        ss, ths, v1s, v2s = [], [], [], []
        s = th = v1 = v2 = None
        both = prev_both = None
        for t in range(q.shape[-1]):
            if active is not None:
                prev_both = both
                both = active[0][:, t, None] * active[1][None, :, t]
            e = e1 = e2 = dot = None
            if s is not None:
                e, dot = act.expectations(s, v1[:, None], v2[None, :], need_dot=q_ntk is not None)
                e1 = act.expectations(v1, v1, v1, need_dot=False)[0]
                if c2 is not None:
                    e2 = act.expectations(v2, v2, v2, need_dot=False)[0]
                if active is not None:  # a state that has not started is 0
                    e = e * prev_both
                    dot = None if dot is None else dot * prev_both
                    e1 = e1 * active[0][:, t - 1]
                    if e2 is not None:
                        e2 = e2 * active[1][:, t - 1]
            s_new, grads = self._terms(channels, q[..., t], e)
            v1 = self._terms(channels, c1[..., t], e1)[0]
            v2 = self._terms(channels, c2[..., t], e2)[0] if c2 is not None else v1
            if q_ntk is not None:
                th_new = grads + u2 * q_ntk[..., t]
                th = th_new if th is None else th_new + w2 * dot * th
                if active is not None:
                    th = th * both
            if active is not None:
                s_new = s_new * both
            s = s_new
            ss.append(s)
            ths.append(th)
            v1s.append(v1)
            v2s.append(v2 if c2 is not None else None)
        return ss, ths, v1s, v2s

    def _grid(self, channels, q, q_ntk, va, vb, *, pair: bool):
        """Covariances of the states at every pair of steps ``(t, t')``, full layout.

        ``S[t, t'] = w^2 E[phi phi](S[t-1, t'-1]) + u^2 q[t, t'] + b^2`` (zero recurrent term
        when either step is the first), and the NTK along the same diagonals: gradients
        with respect to the shared weights pair only steps with as many steps to go
        (Alemohammad et al. 2021). ``q`` is ``(n1, n2, T, T')`` (``pair``) or ``(n, T, T')``;
        ``va``/``vb`` ``(n, T)`` the two samples' own variances per step.
        """
        act, w2, u2 = self.activation, self.w_std**2, self.u_std**2
        steps = q.shape[-1]

        def first(v, t):  # variances of the first sample at step t, against a row
            return v[:, t].reshape(-1, 1, 1) if pair else v[:, t].reshape(-1, 1)

        def second(v, cols):  # variances of the second sample at steps ``cols``
            return v[:, cols].unsqueeze(0) if pair else v[:, cols]

        rows_s, rows_th = [], []
        for t in range(steps):
            e = dot = None
            if t > 0:
                prev = rows_s[-1][..., :-1]
                e, dot = act.expectations(
                    prev,
                    first(va, t - 1),
                    second(vb, slice(0, steps - 1)),
                    need_dot=q_ntk is not None,
                )
                pad = torch.zeros_like(e[..., :1])
                e = torch.cat([pad, e], dim=-1)
            s_row, grads = self._terms(channels, q[..., t, :], e)
            rows_s.append(s_row)
            if q_ntk is not None:
                th_row = grads + u2 * q_ntk[..., t, :]
                if t > 0:
                    carried = dot * rows_th[-1][..., :-1]
                    th_row = th_row + w2 * torch.cat(
                        [torch.zeros_like(carried[..., :1]), carried], -1
                    )
                rows_th.append(th_row)
        s = torch.stack(rows_s, dim=-2)
        if pair:
            a, b = va[:, None, :, None], vb[None, :, None, :]
        else:
            a, b = va[:, :, None], vb[:, None, :]
        out, dot = act.expectations(s, a, b, need_dot=q_ntk is not None)
        return out, None if q_ntk is None else dot * torch.stack(rows_th, dim=-2)

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
        mod = RecurrentModule(channels, h, self.activation.fn, scales, self.return_sequences)
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
            f"parameterization={self.parameterization!r}"
            + (", return_sequences=True)" if self.return_sequences else ")")
        )
