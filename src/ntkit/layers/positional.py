"""Positional embeddings for ``GlobalSelfAttention`` (Hron et al. 2020, Sec. 3.3).

A positional embedding adds (``"sum"``) or appends (``"concat"``) a trainable random field
``pe`` to the tokens that form queries and keys (and, with ``value_pos_emb``, values). Its
channels are independent with covariance ``pos_emb_std^2 R`` over positions, where ``R[s, t] =
decay(sum_a |s_a - t_a|^p)`` (``p = pos_emb_p_norm``), or ``R = I`` (independent one-hot-like
embeddings) without a decay. In the infinite-width limit the tokens' covariance becomes the
interpolation ``iw K + pw R``: ``iw = 1, pw = pos_emb_std^2`` for ``"sum"``, and
``iw = C / (C + C_pe)``, ``pw = pos_emb_std^2 C_pe / (C + C_pe)`` for ``"concat"`` (the
concatenation's fan-in normalization), as in the reference library.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ntkit.errors import LayerSpecError
from ntkit.layers._params import hyperparameter, value_of

__all__ = ["POS_EMB_TYPES", "PositionalEmbedding", "position_covariance"]

POS_EMB_TYPES = ("none", "sum", "concat")


def position_covariance(
    lengths: tuple[int, ...],
    p_norm: float,
    decay: Callable | None,
    *,
    dtype=torch.float64,
    device=None,
) -> torch.Tensor:
    """``R`` ``(S, S)`` over the ``S = prod(lengths)`` positions in C order.

    ``R[s, t] = decay(sum_a |s_a - t_a|^p_norm)`` (``decay`` applied to a tensor of such
    values), or the identity when ``decay`` is ``None``.
    """
    s = math.prod(lengths)
    if decay is None:
        return torch.eye(s, dtype=dtype, device=device)
    grids = torch.meshgrid(
        *[torch.arange(n, dtype=dtype, device=device) for n in lengths], indexing="ij"
    )
    coords = torch.stack([g.reshape(-1) for g in grids], dim=1)  # (S, axes)
    dist = (coords[:, None, :] - coords[None, :, :]).abs().pow(p_norm).sum(-1)
    r = torch.as_tensor(decay(dist), dtype=dtype, device=device)
    if r.shape != (s, s) or not bool(torch.isfinite(r).all()):
        raise LayerSpecError(
            f"pos_emb_decay must map a tensor of distances elementwise to finite values; got "
            f"shape {tuple(r.shape)} for {s} positions."
        )
    return r


class PositionalEmbedding:
    """The embedding's settings and its kernel interpolation (a helper of the attention layer).

    Args:
        kind: ``"none"``, ``"sum"`` or ``"concat"``.
        std: ``pos_emb_std``.
        p_norm: Exponent of the distance.
        decay: Covariance as a function of the distance, or ``None`` for ``R = I``.
        channels: ``C_pe`` for ``"concat"`` (default: the input's channels); ``"sum"``
            always uses the input's channels.
        values: Whether values see the embedding too.
    """

    def __init__(self, kind: str, std: float, p_norm: float, decay, channels, values: bool):
        if kind not in POS_EMB_TYPES:
            raise ValueError(f"pos_emb must be one of {POS_EMB_TYPES}; got {kind!r}.")
        std = hyperparameter(std, "pos_emb_std", minimum=0.0)
        p_norm = float(p_norm)
        if not math.isfinite(p_norm) or p_norm <= 0:
            raise ValueError(f"pos_emb_p_norm must be a positive number; got {p_norm}.")
        if decay is not None and not callable(decay):
            raise TypeError(f"pos_emb_decay must be callable or None; got {type(decay).__name__}.")
        if channels is not None:
            if kind != "concat":
                raise ValueError("pos_emb_channels applies to pos_emb='concat' only.")
            if isinstance(channels, bool) or int(channels) != channels or channels < 1:
                raise ValueError(f"pos_emb_channels must be a positive integer; got {channels}.")
        self.kind, self.std, self.p_norm, self.decay = kind, std, p_norm, decay
        self.channels = None if channels is None else int(channels)
        self.values = bool(values)

    @property
    def active(self) -> bool:
        return self.kind != "none"

    def embedding_channels(self, in_channels: int) -> int:
        """``C_pe``: the input's channels unless ``"concat"`` names its own."""
        return in_channels if self.channels is None else self.channels

    def weights(self, in_channels: int, std) -> tuple[float, float]:
        """``(iw, pw)`` of the interpolation ``iw K + pw R``.

        ``std`` is the embedding's std, passed by the layer that owns it so that gradients
        reach its tensor.
        """
        if self.kind == "sum":
            return 1.0, std**2
        c_pe = self.embedding_channels(in_channels)
        total = in_channels + c_pe
        return in_channels / total, std**2 * c_pe / total

    def interpolate(self, m: torch.Tensor, r: torch.Tensor, in_channels: int, std) -> torch.Tensor:
        """``iw m + pw R`` for a matrix-form covariance ``m`` ``(..., S, S)``."""
        iw, pw = self.weights(in_channels, std)
        return m * iw + r * pw

    def factor(self, lengths: tuple[int, ...]) -> torch.Tensor:
        """``F`` ``(S, S)`` with ``F F^T = R`` for the finite embedding ``pe = F z``.

        Raises:
            LayerSpecError: ``R`` is not positive semi-definite (no random field has it).
        """
        r = position_covariance(lengths, self.p_norm, self.decay)
        if self.decay is None:
            return r
        vals, vecs = torch.linalg.eigh((r + r.T) / 2)
        if float(vals.min()) < -1e-8 * max(float(vals.abs().max()), 1.0):
            raise LayerSpecError(
                f"pos_emb_decay gives a position covariance with eigenvalue {float(vals.min()):.3g}"
                " < 0: no random embedding has it (use e.g. exp(-d) with p_norm <= 2)."
            )
        return vecs * vals.clamp_min(0.0).sqrt()

    def __repr__(self) -> str:
        decay = None if self.decay is None else getattr(self.decay, "__name__", "fn")
        return (
            f"pos_emb={self.kind!r}, pos_emb_std={value_of(self.std)}, "
            f"pos_emb_p_norm={self.p_norm}, "
            f"pos_emb_decay={decay}, pos_emb_channels={self.channels}, "
            f"value_pos_emb={self.values}"
        )
