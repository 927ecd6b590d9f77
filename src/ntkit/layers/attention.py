"""Global self-attention over all spatial locations (or sequence positions).

The infinite-width kernel follows Hron, Bahri, Sohl-Dickstein & Novak 2020 ("Infinite
attention: NNGP and NTK for deep attention networks", arXiv 2006.10540) in the setting
where it has a closed form: query-key logits scaled by ``1 / d_k`` (not ``1 / sqrt(d_k)``)
with the query and key weights *tied* (the paper's "d^-1" / linear scaling; with
independent weights the logits would converge to zero). Then every logit converges to a
deterministic function of the input's own covariance,

    G(x)[s, t] = (1 / d_k) Q(x)_s . K(x)_t  ->  qk_std * k(x, x)[s, t],

the attention weights ``A(x) = softmax_t(G(x)[s, t])`` are deterministic, and the output
``f(x)[s] = sum_t A(x)[s, t] V(x)_t W_O + b`` is Gaussian with

    nngp'(x1, x2) = ov_std^2 * A(x1) nngp(x1, x2) A(x2)^T + b_std^2,
    ntk'(x1, x2)  = ov_std^2 * A(x1) (ntk + 2 nngp)(x1, x2) A(x2)^T + b_std^2,

where ``ov_std = w_out_std * w_value_std`` and the ``2 nngp`` collects the value and
output weights' gradients (the shared query/key weights' contribution vanishes like
``1 / d_k``, and gradients through the attention weights vanish with the input width).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ntkit.kernel import Kernel
from ntkit.layers import _init
from ntkit.layers._params import hyperparameter, tracks_grad, value_of
from ntkit.layers.base import Layer, Shape, require_full_layout
from ntkit.layers.conv import spatial_input
from ntkit.layers.dense import check_std
from ntkit.layers.masking import check_mask, current_mask
from ntkit.layers.positional import PositionalEmbedding, position_covariance

__all__ = ["GlobalSelfAttention", "SelfAttentionNTK"]

MECHANISMS = ("softmax", "identity", "relu", "abs")


def _attend(logits: torch.Tensor, mechanism: str, keys=None) -> torch.Tensor:
    """Attention weights from logits ``(..., S, S)`` (softmax over the last axis).

    ``keys``: boolean ``(n, S)`` real positions (masked inputs): other keys get weight 0.
    """
    if keys is not None:
        keys = keys.reshape(keys.shape[0], *([1] * (logits.ndim - 2)), keys.shape[-1])
        if mechanism == "softmax":
            return torch.softmax(logits.masked_fill(~keys, float("-inf")), dim=-1)
        return _attend(logits, mechanism) * keys.to(logits.dtype)
    if mechanism == "softmax":
        return torch.softmax(logits, dim=-1)
    if mechanism == "relu":
        return torch.relu(logits)
    if mechanism == "abs":
        return logits.abs()
    return logits


def _key_mask(mask):
    """``(n, *spatial)`` -> ``(n, S)`` in the C order of :func:`_to_matrix`, or ``None``."""
    return None if mask is None else mask.reshape(mask.shape[0], -1)


class SelfAttentionNTK(nn.Module):
    """Multi-head global self-attention with tied queries/keys, NTK parameterization.

    For ``x`` of shape ``(n, C, *spatial)`` with ``S = prod(spatial)`` positions and each
    head ``h``: ``K_h = x W_K[h]`` (``(S, d_k)``, standard normal ``W_K``), logits
    ``qk_std K_h K_h^T / (C d_k)``, weights ``A_h = mechanism(logits)`` over the key positions,
    values ``V_h = x W_V[h]``, and the output
    ``(ov_std / sqrt(C n_heads d_v)) concat_h(A_h V_h) W_O + b_std b``, shaped like ``x``
    with ``out_channels`` channels.

    Args:
        in_channels: ``C``.
        out_channels: Output channels.
        n_heads: Number of heads.
        key_channels: ``d_k`` per head.
        value_channels: ``d_v`` per head.
        qk_std: ``w_query_std * w_key_std``.
        ov_std: ``w_out_std * w_value_std``.
        b_std: Bias standard deviation; ``None`` means no bias.
        mechanism: ``"softmax"``, ``"identity"``, ``"relu"`` or ``"abs"``.
        pos_emb: ``(kind, C_pe, F, std, values)`` of a positional embedding
            ``pe = std * F z`` (``z`` ``(C_pe, S)`` standard normal, trainable), added to
            (``"sum"``) or concatenated with (``"concat"``) the key tokens (and the value
            tokens if ``values``); ``None`` for none. See :mod:`ntkit.layers.positional`.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        n_heads: int,
        key_channels: int,
        value_channels: int,
        qk_std: float,
        ov_std: float,
        b_std: float | None,
        mechanism: str,
        pos_emb: tuple | None = None,
    ):
        super().__init__()
        self.in_channels = in_channels
        self.qk_std, self.ov_std = float(qk_std), float(ov_std)
        self.b_std = None if b_std is None else float(b_std)
        self.mechanism = mechanism
        key_in = value_in = in_channels
        self.pos_kind, self.pos_values, self.pos_std = "none", False, 0.0
        if pos_emb is not None:
            self.pos_kind, c_pe, factor, self.pos_std, self.pos_values = pos_emb
            self.pos_emb = nn.Parameter(torch.empty(c_pe, factor.shape[1]))
            self.register_buffer("pos_factor", factor.clone())
            if self.pos_kind == "concat":
                key_in += c_pe
                value_in += c_pe if self.pos_values else 0
        self.key_weight = nn.Parameter(torch.empty(n_heads, key_in, key_channels))
        self.value_weight = nn.Parameter(torch.empty(n_heads, value_in, value_channels))
        self.out_weight = nn.Parameter(torch.empty(n_heads * value_channels, out_channels))
        if b_std is None:
            self.register_parameter("bias", None)
        else:
            self.bias = nn.Parameter(torch.empty(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(n, C, *spatial)`` -> ``(n, out_channels, *spatial)``."""
        n, c = x.shape[:2]
        spatial = x.shape[2:]
        tokens = x.reshape(n, c, -1).transpose(1, 2).unsqueeze(1)  # (n, 1, S, C)
        key_tokens = value_tokens = tokens
        if self.pos_kind != "none":
            pe = (self.pos_factor.to(x.dtype) @ self.pos_emb.T) * self.pos_std  # (S, C_pe)
            if self.pos_kind == "sum":
                key_tokens = tokens + pe
            else:
                key_tokens = torch.cat([tokens, pe.expand(n, 1, *pe.shape)], dim=-1)
            value_tokens = key_tokens if self.pos_values else tokens
        keys = key_tokens @ self.key_weight  # (n, heads, S, d_k)
        d_k = keys.shape[-1]
        logits = keys @ keys.transpose(-1, -2) * (self.qk_std / (key_tokens.shape[-1] * d_k))
        weights = _attend(logits, self.mechanism, _key_mask(current_mask(x)))  # (n, heads, S, S)
        heads = weights @ (value_tokens @ self.value_weight)  # (n, heads, S, d_v)
        heads = heads.transpose(1, 2).reshape(n, heads.shape[2], -1)  # (n, S, heads * d_v)
        scale = self.ov_std / math.sqrt(value_tokens.shape[-1] * heads.shape[-1])
        out = heads @ self.out_weight * scale  # (n, S, out)
        if self.bias is not None:
            out = out + self.b_std * self.bias
        return out.transpose(1, 2).reshape(n, -1, *spatial)

    def extra_repr(self) -> str:
        h, c, d_k = self.key_weight.shape
        return (
            f"in_channels={c}, out_channels={self.out_weight.shape[1]}, n_heads={h}, "
            f"key_channels={d_k}, value_channels={self.value_weight.shape[2]}, "
            f"mechanism={self.mechanism!r}"
        )


def _to_matrix(t: torch.Tensor, lead: int, n_sp: int, lengths) -> torch.Tensor:
    """``(*lead, H, H', W, W')`` -> ``(*lead, S, S')`` with ``S = H * W``."""
    batch = t.shape[:lead]
    order = [
        *range(lead),
        *(lead + 2 * i for i in range(n_sp)),
        *(lead + 2 * i + 1 for i in range(n_sp)),
    ]
    s = math.prod(lengths)
    return t.permute(order).reshape(*batch, s, s)


def _from_matrix(m: torch.Tensor, lead: int, n_sp: int, lengths) -> torch.Tensor:
    """Inverse of :func:`_to_matrix`."""
    batch = m.shape[:lead]
    t = m.reshape(*batch, *lengths, *lengths)
    order = list(range(lead))
    for i in range(n_sp):
        order += [lead + i, lead + n_sp + i]
    return t.permute(order).contiguous()


class GlobalSelfAttention(Layer):
    """Global self-attention over all locations; infinite width in ``d_k``, heads and channels.

    The setting with a closed-form kernel (Hron et al. 2020, arXiv 2006.10540): logits scaled
    by ``1 / d_k`` with tied query/key weights, so the attention weights converge to
    ``mechanism(qk_std * k(x, x))`` (softmax over the key locations) of the input kernel; see
    the module docstring for the NNGP/NTK formulas. NTK parameterization only; no masks.
    Positional embeddings (Hron et al. 2020, Sec. 3.3) interpolate the covariance that forms
    the logits (and, with ``value_pos_emb``, the values) with a position covariance ``R``;
    see :mod:`ntkit.layers.positional`. The input kernel needs the full location-by-location
    covariance and the output carries it. Inputs: ``(n, C, L)`` sequences or ``(n, C, H, W)`` /
    ``(n, C, D, H, W)`` images, channels-first.

    Args:
        out_channels: Output channels.
        n_heads: Heads of the finite network (the kernel is the limit of many heads).
        key_channels: ``d_k`` per head of the finite network.
        value_channels: ``d_v`` per head of the finite network (default ``key_channels``).
        qk_std: ``w_query_std * w_key_std``, the logit scale.
        ov_std: ``w_out_std * w_value_std``, the output weight scale.
        b_std: Bias standard deviation; ``None`` (default) means no bias.
        mechanism: ``"softmax"`` (default), ``"identity"``, ``"relu"`` or ``"abs"``, applied
            to the logits.
        pos_emb: ``"none"`` (default), ``"sum"`` (added to the key/query tokens, as many
            channels as the input) or ``"concat"`` (appended as ``pos_emb_channels`` extra
            channels).
        pos_emb_std: Standard deviation of the embedding.
        pos_emb_decay: ``R[s, t] = pos_emb_decay(sum_a |s_a - t_a|^pos_emb_p_norm)``, a
            function applied elementwise to a tensor of distances (e.g.
            ``lambda d: torch.exp(-d / 4)``); ``None`` (default) means ``R = I``.
        pos_emb_p_norm: Exponent of the distance (default 2).
        pos_emb_channels: ``"concat"``'s embedding channels (default: the input's).
        value_pos_emb: Whether the values see the embedding too (default ``False``).
    """

    memory_factor = 8.0

    def __init__(
        self,
        out_channels: int,
        n_heads: int = 1,
        key_channels: int = 64,
        value_channels: int | None = None,
        *,
        qk_std: float = 1.0,
        ov_std: float = 1.0,
        b_std: float | None = None,
        mechanism: str = "softmax",
        pos_emb: str = "none",
        pos_emb_std: float = 1.0,
        pos_emb_decay=None,
        pos_emb_p_norm: float = 2.0,
        pos_emb_channels: int | None = None,
        value_pos_emb: bool = False,
    ):
        self.positional = PositionalEmbedding(
            pos_emb, pos_emb_std, pos_emb_p_norm, pos_emb_decay, pos_emb_channels, value_pos_emb
        )
        # a layer attribute, so that gradients with respect to a tensor std reach it
        self.pos_emb_std = self.positional.std
        for name, v in (
            ("out_channels", out_channels),
            ("n_heads", n_heads),
            ("key_channels", key_channels),
            ("value_channels", key_channels if value_channels is None else value_channels),
        ):
            if isinstance(v, bool) or int(v) != v or v < 1:
                raise ValueError(f"GlobalSelfAttention {name} must be a positive integer; got {v}.")
        if mechanism not in MECHANISMS:
            raise ValueError(f"mechanism must be one of {MECHANISMS}; got {mechanism!r}.")
        self.out_channels = int(out_channels)
        self.n_heads = int(n_heads)
        self.key_channels = int(key_channels)
        self.value_channels = int(key_channels if value_channels is None else value_channels)
        self.qk_std = hyperparameter(qk_std, "GlobalSelfAttention qk_std")
        self.ov_std = check_std(ov_std, "ov_std", allow_none=False)
        self.b_std = check_std(b_std, "b_std", allow_none=True)
        self.mechanism = mechanism

    def out_shape(self, in_shape: Shape) -> Shape:
        _, lengths = spatial_input(repr(self), in_shape)
        return (self.out_channels, *lengths)

    def input_layout(self, diagonal_spatial):
        return False

    def kernel_rule(self, k: Kernel) -> Kernel:
        _, lengths = spatial_input(repr(self), k.shape)
        require_full_layout(repr(self), k)
        n_sp = len(lengths)
        ov2 = self.ov_std**2
        b2 = 0.0 if self.b_std is None else self.b_std**2
        pos = self.positional
        r = None
        if pos.active:
            r = position_covariance(
                lengths, pos.p_norm, pos.decay, dtype=k.nngp.dtype, device=k.nngp.device
            )

        def mixed(m, values=False):  # the tokens' covariance with the embedding
            if r is None or (values and not pos.values):
                return m
            return pos.interpolate(m, r, k.shape[0], self.pos_emb_std)

        cov1 = _to_matrix(k.cov1, 1, n_sp, lengths)  # (n1, S, S)
        check_mask(repr(self), k.mask1, lengths)
        check_mask(repr(self), k.mask2, lengths)
        a1 = _attend(mixed(cov1) * self.qk_std, self.mechanism, _key_mask(k.mask1))
        if k.cov2 is None:
            cov2, a2 = None, a1
        else:
            cov2 = _to_matrix(k.cov2, 1, n_sp, lengths)
            a2 = _attend(mixed(cov2) * self.qk_std, self.mechanism, _key_mask(k.mask2))
        cov1, cov2 = mixed(cov1, True), None if cov2 is None else mixed(cov2, True)

        def weigh(m, left, right):
            # left: (n1, S, S), right: (n2, S, S), m: (n1, n2, S, S) or (n, S, S)
            if m.ndim == 4:
                out = left.unsqueeze(1) @ m @ right.transpose(-1, -2).unsqueeze(0)
            else:
                out = left @ m @ right.transpose(-1, -2)
            if tracks_grad(out, ov2, b2):
                return out * ov2 + b2
            out.mul_(ov2)
            return out.add_(b2) if b2 else out

        nngp_m = mixed(_to_matrix(k.nngp, 2, n_sp, lengths), True)
        nngp = weigh(nngp_m, a1, a2)
        ntk = None
        if k.ntk is not None:
            # a trainable embedding seen by the values adds pw R to their NTK, like nngp
            ntk_m = mixed(_to_matrix(k.ntk, 2, n_sp, lengths), True)
            ntk = weigh(torch.add(ntk_m, nngp_m, alpha=2.0), a1, a2)
        return k.replace(
            nngp=_from_matrix(nngp, 2, n_sp, lengths),
            ntk=None if ntk is None else _from_matrix(ntk, 2, n_sp, lengths),
            cov1=_from_matrix(weigh(cov1, a1, a1), 1, n_sp, lengths),
            cov2=None if cov2 is None else _from_matrix(weigh(cov2, a2, a2), 1, n_sp, lengths),
            shape=(self.out_channels, *lengths),
            is_gaussian=True,
            independent=True,
            decoupled=True,
        )

    def _finite_embedding(self, channels: int, lengths) -> tuple | None:
        pos = self.positional
        if not pos.active:
            return None
        return (
            pos.kind,
            pos.embedding_channels(channels),
            pos.factor(lengths),
            value_of(self.pos_emb_std),
            pos.values,
        )

    def build_module(self, in_shape: Shape, generator: torch.Generator) -> nn.Module:
        channels, lengths = spatial_input(repr(self), in_shape)
        mod = SelfAttentionNTK(
            channels,
            self.out_channels,
            self.n_heads,
            self.key_channels,
            self.value_channels,
            value_of(self.qk_std),
            value_of(self.ov_std),
            None if self.b_std is None else value_of(self.b_std),
            self.mechanism,
            pos_emb=self._finite_embedding(channels, lengths),
        )
        if self.positional.active:
            mod.pos_emb.copy_(_init.normal(tuple(mod.pos_emb.shape), generator))
        mod.key_weight.copy_(_init.normal(tuple(mod.key_weight.shape), generator))
        mod.value_weight.copy_(_init.normal(tuple(mod.value_weight.shape), generator))
        mod.out_weight.copy_(_init.normal(tuple(mod.out_weight.shape), generator))
        if mod.bias is not None:
            mod.bias.copy_(_init.normal((self.out_channels,), generator))
        return mod

    def __repr__(self) -> str:
        return (
            f"GlobalSelfAttention({self.out_channels}, n_heads={self.n_heads}, "
            f"key_channels={self.key_channels}, value_channels={self.value_channels}, "
            f"qk_std={value_of(self.qk_std)}, ov_std={value_of(self.ov_std)}, "
            f"b_std={None if self.b_std is None else value_of(self.b_std)}, "
            f"mechanism={self.mechanism!r}"
            + (f", {self.positional!r})" if self.positional.active else ")")
        )
