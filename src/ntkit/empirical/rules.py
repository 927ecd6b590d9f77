"""Built-in structured rules: a module's parameter Jacobians from its input and cotangents.

Every rule has the signature ``rule(module, x, g, names) -> {local_name: factor}`` with

- ``x``: the module's (first) input per sample, ``(n, *in_shape)`` (``in_shape`` includes
  any batch axis the module sees inside one sample's forward pass, usually of size 1);
- ``g``: the cotangents of the module's output per sample and output direction,
  ``(n, K, *out_shape)``;
- ``names``: the local parameter names wanted (a subset of what the rule handles).

Every axis other than features/channels is a *position* that the parameter is shared over,
so a linear map on a sequence, a convolution on patches and a plain dense layer are one case
(:class:`~ntkit.empirical.factors.Kron`). Rules never see parameter values, only the
module's configuration, so they stay exact for any parameter value.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ntkit.empirical.factors import Dense, Kron, OneHot
from ntkit.layers.modules import DenseNTK

__all__ = ["BUILTIN_RULES"]


def _affine(x, g, names, w_scale: float, b_scale: float) -> dict:
    """``y = w_scale * x W^T + b_scale * b`` applied at every leading position."""
    n, k = g.shape[:2]
    b_in, a_out = x.shape[-1], g.shape[-1]
    xf = x.reshape(n, -1, b_in)
    gf = g.reshape(n, k, -1, a_out)
    out = {}
    if "weight" in names:
        out["weight"] = Kron(gf, xf if w_scale == 1.0 else xf * w_scale)
    if "bias" in names:
        ones = torch.full((n, xf.shape[1], 1), b_scale, dtype=g.dtype, device=g.device)
        out["bias"] = Kron(gf, ones)
    return out


def linear_rule(module: nn.Linear, x, g, names) -> dict:
    """``nn.Linear``: ``y = x W^T + b``."""
    return _affine(x, g, names, 1.0, 1.0)


def dense_ntk_rule(module: DenseNTK, x, g, names) -> dict:
    """``DenseNTK``: ``y = (w_std / sqrt(fan_in)) x W^T + b_std b``."""
    return _affine(x, g, names, module.weight_scale, module.b_std or 0.0)


def _same_padding(kernel, dilation) -> list[int]:
    """``F.pad`` amounts (last axis first) of ``padding="same"``: extra on the right."""
    pads: list[int] = []
    for k, d in zip(reversed(kernel), reversed(dilation)):
        total = d * (k - 1)
        pads += [total // 2, total - total // 2]
    return pads


def conv_rule(module: nn.Conv1d | nn.Conv2d, x, g, names) -> dict:
    """``nn.Conv1d`` / ``nn.Conv2d`` (any stride, dilation, padding mode, groups)."""
    nd = 1 if isinstance(module, nn.Conv1d) else 2
    c_in, c_out, groups = module.in_channels, module.out_channels, module.groups
    n, k = g.shape[:2]
    xs = x.reshape(-1, c_in, *x.shape[-nd:])  # (n*m, C, *spatial)
    m = xs.shape[0] // n
    padding = module.padding
    if module.padding_mode != "zeros":
        xs = F.pad(xs, module._reversed_padding_repeated_twice, mode=module.padding_mode)
        padding = (0,) * nd
    elif padding == "same":
        xs = F.pad(xs, _same_padding(module.kernel_size, module.dilation))
        padding = (0,) * nd
    elif padding == "valid":
        padding = (0,) * nd
    kernel, stride, dilation = module.kernel_size, module.stride, module.dilation
    if nd == 1:
        xs = xs.unsqueeze(2)
        kernel, stride, dilation, padding = (
            (1, kernel[0]),
            (1, stride[0]),
            (1, dilation[0]),
            (0, padding[0]),
        )
    patches = F.unfold(xs, kernel, dilation=dilation, padding=padding, stride=stride)
    n_loc = patches.shape[-1]
    # shape: (n, m * L, C * prod(kernel))
    patches = patches.reshape(n, m, -1, n_loc).transpose(2, 3).reshape(n, m * n_loc, -1)
    gf = g.reshape(n, k, m, c_out, n_loc).transpose(3, 4).reshape(n, k, m * n_loc, c_out)
    out = {}
    if "weight" in names:
        if groups == 1:
            out["weight"] = Kron(gf, patches)
        else:
            gg = gf.reshape(n, k, m * n_loc, groups, c_out // groups)
            pg = patches.reshape(n, m * n_loc, groups, -1)
            out["weight"] = Dense(torch.einsum("nkpgo,npgi->nkgoi", gg, pg).reshape(n, k, -1))
    if "bias" in names:
        out["bias"] = Dense(gf.sum(2))
    return out


def embedding_rule(module: nn.Embedding, x, g, names) -> dict:
    """``nn.Embedding`` (rows at ``padding_idx`` get no gradient)."""
    n, k = g.shape[:2]
    idx = x.reshape(n, -1)
    mask = None
    if module.padding_idx is not None:
        mask = (idx != module.padding_idx).to(g.dtype)
    gf = g.reshape(n, k, idx.shape[1], module.embedding_dim)
    return {"weight": Kron(gf, OneHot(idx, module.num_embeddings, mask))}


def _embedding_params(module: nn.Embedding) -> tuple[str, ...]:
    # max_norm renormalizes the table in place; scale_grad_by_freq changes autograd's
    # gradient: both leave the generic path.
    if module.max_norm is not None or module.scale_grad_by_freq:
        return ()
    return ("weight",)


def _elementwise_affine(xhat, g, names, feat_ndim: int) -> dict:
    """``y = xhat * w + b`` with ``w, b`` over the last ``feat_ndim`` axes of ``xhat``."""
    n, k = g.shape[:2]
    d = math.prod(xhat.shape[xhat.ndim - feat_ndim :])
    gf = g.reshape(n, k, -1, d)
    out = {}
    if "weight" in names:
        out["weight"] = Dense(torch.einsum("nkpd,npd->nkd", gf, xhat.reshape(n, -1, d)))
    if "bias" in names:
        out["bias"] = Dense(gf.sum(2))
    return out


def layer_norm_rule(module: nn.LayerNorm, x, g, names) -> dict:
    """``nn.LayerNorm`` affine parameters."""
    shape = tuple(module.normalized_shape)
    xhat = F.layer_norm(x, shape, None, None, module.eps)
    return _elementwise_affine(xhat, g, names, len(shape))


def _channel_affine(xhat, g, names) -> dict:
    """Per-channel affine: ``xhat, g[:, a]`` are ``(n, m, C, S)``; parameters ``(C,)``."""
    n, k = g.shape[:2]
    gf = g.reshape(n, k, *xhat.shape[1:])
    out = {}
    if "weight" in names:
        out["weight"] = Dense(torch.einsum("nkmcs,nmcs->nkc", gf, xhat))
    if "bias" in names:
        out["bias"] = Dense(gf.sum((2, 4)))
    return out


def group_norm_rule(module: nn.GroupNorm, x, g, names) -> dict:
    """``nn.GroupNorm`` affine parameters (input ``(m, C, *spatial)`` per sample)."""
    n, c = x.shape[0], module.num_channels
    xs = x.reshape(-1, c, math.prod(x.shape[3:]) if x.ndim > 3 else 1)
    xhat = F.group_norm(xs, module.num_groups, None, None, module.eps)
    return _channel_affine(xhat.reshape(n, -1, c, xs.shape[-1]), g, names)


def batch_norm_rule(module: nn.modules.batchnorm._BatchNorm, x, g, names) -> dict:
    """Eval-mode BatchNorm (running statistics) affine parameters."""
    n, c = x.shape[0], module.num_features
    xs = x.reshape(n, -1, c, math.prod(x.shape[3:]) if x.ndim > 3 else 1)
    mean = module.running_mean.to(x.dtype)[:, None]
    inv = torch.rsqrt(module.running_var.to(x.dtype) + module.eps)[:, None]
    return _channel_affine((xs - mean) * inv, g, names)


def _batch_norm_params(module) -> tuple[str, ...]:
    if module.training or module.running_mean is None or module.running_var is None:
        return ()
    return ("weight", "bias")


#: module type -> (rule, handled parameter names or a function of the module giving them)
BUILTIN_RULES = {
    nn.Linear: (linear_rule, ("weight", "bias")),
    DenseNTK: (dense_ntk_rule, ("weight", "bias")),
    nn.Conv1d: (conv_rule, ("weight", "bias")),
    nn.Conv2d: (conv_rule, ("weight", "bias")),
    nn.Embedding: (embedding_rule, _embedding_params),
    nn.LayerNorm: (layer_norm_rule, ("weight", "bias")),
    nn.GroupNorm: (group_norm_rule, ("weight", "bias")),
    nn.BatchNorm1d: (batch_norm_rule, _batch_norm_params),
    nn.BatchNorm2d: (batch_norm_rule, _batch_norm_params),
}
