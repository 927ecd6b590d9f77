"""A slow, obviously-correct reference for kernels of convolutional networks.

The kernel is carried as ONE joint covariance matrix over every (sample, location) of the
stacked batch ``[x1; x2]``: ``K[(i, s), (j, t)]`` with locations ``s`` flattened in C order.
Every linear layer is an explicit matrix ``P`` built with Python loops over output
locations and taps (``K -> P K P^T``), and every elementwise rule reads the variances from
the diagonal of ``K``. Nothing here shares code with ntkit's fast implementation.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch


@dataclass
class Joint:
    K: torch.Tensor  # (N*S, N*S)
    T: torch.Tensor  # (N*S, N*S)
    n: int  # samples N
    spatial: tuple  # per-sample spatial shape
    channels: int
    same: bool  # x2 is x1 (dropout scales the sample's own entries)


def _pad_amounts(length, k, s, padding):
    if padding == "valid":
        return 0
    if isinstance(padding, int):
        return padding
    out = math.ceil(length / s)
    total = max((out - 1) * s + k - length, 0)
    return total // 2


def _out_len(length, k, s, padding):
    if padding == "valid":
        return (length - k) // s + 1
    if isinstance(padding, int):
        return (length + 2 * padding - k) // s + 1
    return math.ceil(length / s)


def tap_matrices(spatial, ks, strides, padding):
    """One (S_out, S_in) 0/1 matrix per tap (multi-index), built by explicit loops."""
    outs = [_out_len(L, k, s, padding) for L, k, s in zip(spatial, ks, strides)]
    los = [_pad_amounts(L, k, s, padding) for L, k, s in zip(spatial, ks, strides)]
    s_in, s_out = math.prod(spatial), math.prod(outs)
    mats = []
    for tap in itertools.product(*[range(k) for k in ks]):
        P = torch.zeros(s_out, s_in, dtype=torch.float64)
        for o_flat, o in enumerate(itertools.product(*[range(m) for m in outs])):
            idx = []
            for ax in range(len(spatial)):
                i = o[ax] * strides[ax] + tap[ax] - los[ax]
                if padding == "circular":
                    i %= spatial[ax]
                elif not 0 <= i < spatial[ax]:
                    idx = None
                    break
                idx.append(i)
            if idx is None:
                continue
            i_flat = 0
            for ax in range(len(spatial)):
                i_flat = i_flat * spatial[ax] + idx[ax]
            P[o_flat, i_flat] = 1.0
        mats.append(P)
    return mats, tuple(outs)


def _lift(P, n):
    return torch.kron(torch.eye(n, dtype=torch.float64), P)


def inputs(x1, x2=None):
    x = x1 if x2 is None else torch.cat([x1, x2])
    x = x.double()
    n, c = x.shape[:2]
    flat = x.reshape(n, c, -1)  # (N, C, S)
    K = torch.einsum("ics,jct->isjt", flat, flat).reshape(n * flat.shape[2], -1) / c
    return Joint(K, torch.zeros_like(K), n, tuple(x.shape[2:]), c, x2 is None)


def conv(J, out_channels, k, stride=1, padding="valid", w_std=1.0, b_std=None, param="ntk"):
    nd = len(J.spatial)
    ks = (k,) * nd if isinstance(k, int) else tuple(k)
    st = (stride,) * nd if isinstance(stride, int) else tuple(stride)
    mats, outs = tap_matrices(J.spatial, ks, st, padding)
    taps = len(mats)
    SK = sum(_lift(P, J.n) @ J.K @ _lift(P, J.n).T for P in mats)
    ST = sum(_lift(P, J.n) @ J.T @ _lift(P, J.n).T for P in mats)
    b2 = 0.0 if b_std is None else b_std**2
    K = w_std**2 / taps * SK + b2
    if param == "ntk":
        T = K + w_std**2 / taps * ST
    else:
        T = J.channels * SK + w_std**2 / taps * ST + (0.0 if b_std is None else 1.0)
    return Joint(K, T, J.n, outs, out_channels, J.same)


def relu(J):
    """Arc-cosine kernel; theta = atan2(sqrt(d_i d_j - K^2), K) is well conditioned near 0."""
    d = torch.diagonal(J.K)
    prod = d[:, None] * d[None, :]
    sin_part = torch.sqrt(torch.clamp(prod - J.K * J.K, min=0.0))  # sqrt(prod) sin(theta)
    theta = torch.atan2(sin_part, J.K)
    K = (sin_part + (math.pi - theta) * J.K) / (2 * math.pi)
    T = J.T * (math.pi - theta) / (2 * math.pi)
    return Joint(K, T, J.n, J.spatial, J.channels, J.same)


def erf(J):
    d = torch.diagonal(J.K)
    den = torch.sqrt((1 + 2 * d[:, None]) * (1 + 2 * d[None, :]))
    K = 2 / math.pi * torch.arcsin(2 * J.K / den)
    T = J.T * 4 / math.pi / torch.sqrt(den**2 - 4 * J.K**2)
    return Joint(K, T, J.n, J.spatial, J.channels, J.same)


def _linear(J, P, spatial, channels=None):
    L = _lift(P, J.n)
    return Joint(
        L @ J.K @ L.T,
        L @ J.T @ L.T,
        J.n,
        spatial,
        J.channels if channels is None else channels,
        J.same,
    )


def avg_pool(J, k, stride=None, padding=0, average=True):
    nd = len(J.spatial)
    ks = (k,) * nd if isinstance(k, int) else tuple(k)
    stride = ks if stride is None else stride
    st = (stride,) * nd if isinstance(stride, int) else tuple(stride)
    mats, outs = tap_matrices(J.spatial, ks, st, padding)
    P = sum(mats) / (len(mats) if average else 1.0)
    return _linear(J, P, outs)


def global_pool(J, average=True):
    S = math.prod(J.spatial)
    P = torch.ones(1, S, dtype=torch.float64) / (S if average else 1.0)
    return _linear(J, P, ())


def flatten(J):
    """Kernel of flattened features: mean over locations of same-location covariances."""
    S = math.prod(J.spatial)
    idx = torch.arange(J.n)
    K = torch.zeros(J.n, J.n, dtype=torch.float64)
    T = torch.zeros_like(K)
    for s in range(S):
        rows = idx * S + s
        K += J.K[rows][:, rows] / S
        T += J.T[rows][:, rows] / S
    return Joint(K, T, J.n, (), J.channels * S, J.same)


def dense(J, out, w_std=1.0, b_std=None, param="ntk"):
    assert J.spatial == ()
    b2 = 0.0 if b_std is None else b_std**2
    K = w_std**2 * J.K + b2
    if param == "ntk":
        T = K + w_std**2 * J.T
    else:
        T = J.channels * J.K + w_std**2 * J.T + (0.0 if b_std is None else 1.0)
    return Joint(K, T, J.n, (), out, J.same)


def layer_norm(J, eps=1e-5):
    d = torch.diagonal(J.K) + eps
    inv = 1 / torch.sqrt(d[:, None] * d[None, :])
    return Joint(J.K * inv, J.T * inv, J.n, J.spatial, J.channels, J.same)


def dropout(J, rate):
    """Scale each (sample, location)'s own variance: only the diagonal of the joint matrix.

    With x2 given separately, the x1-x2 block is unchanged; the reference then gets the
    x1 and x2 own-variance blocks right but the cross block must not be scaled, which
    holds automatically since the joint diagonal lies in the x1-x1 and x2-x2 blocks.
    """
    f = 1 / (1 - rate)
    K, T = J.K.clone(), J.T.clone()
    i = torch.arange(K.shape[0])
    K[i, i] *= f
    T[i, i] *= f
    return Joint(K, T, J.n, J.spatial, J.channels, J.same)


def attention(J, out_channels, qk_std=1.0, ov_std=1.0, b_std=None, mechanism="softmax"):
    S = math.prod(J.spatial)
    A = torch.zeros_like(J.K)
    for i in range(J.n):
        blk = slice(i * S, (i + 1) * S)
        logits = qk_std * J.K[blk, blk]
        if mechanism == "softmax":
            w = torch.exp(logits - logits.max(dim=1, keepdim=True).values)
            w = w / w.sum(dim=1, keepdim=True)
        elif mechanism == "relu":
            w = logits.clamp_min(0)
        elif mechanism == "abs":
            w = logits.abs()
        else:
            w = logits
        A[blk, blk] = w
    b2 = 0.0 if b_std is None else b_std**2
    K = ov_std**2 * A @ J.K @ A.T + b2
    T = ov_std**2 * A @ (J.T + 2 * J.K) @ A.T + b2
    return Joint(K, T, J.n, J.spatial, out_channels, J.same)


def cross_block(J, n1, which="K"):
    """The (x1, x2) block in ntkit's layout: (n1, n2, H, H', W, W') or (n1, n2)."""
    M = getattr(J, which)
    S = math.prod(J.spatial) if J.spatial else 1
    n = J.n
    n2 = n - n1 if not J.same else n
    M = M.reshape(n, *J.spatial, n, *J.spatial)
    r0 = 0
    c0 = 0 if J.same else n1
    nd = len(J.spatial)
    block = M[r0 : r0 + n1][(slice(None),) * (1 + nd) + (slice(c0, c0 + n2),)]
    # (n1, *sp, n2, *sp') -> (n1, n2, s0, s0', s1, s1', ...)
    order = [0, 1 + nd]
    for ax in range(nd):
        order += [1 + ax, 2 + nd + ax]
    del S
    return block.permute(order)


def location_diagonal(t, nd):
    for _ in range(nd):
        t = torch.diagonal(t, dim1=2, dim2=3)
    return t


# ------------------------------------------------------------------ helpers for the tests
def random_input(shape, seed):
    """Standard-normal float64 input of ``shape`` from its own generator."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=torch.float64)


def check_kernel(k, J, n1):
    """Assert that ntkit's kernel ``k`` equals the reference block ``x1 x x2`` of ``J``."""
    for attr, which, tol in (("nngp", "K", 1e-10), ("ntk", "T", 1e-10)):
        want = cross_block(J, n1, which)
        got = getattr(k, attr)
        if k.diagonal_spatial:
            want = location_diagonal(want, len(J.spatial))
        assert got.shape == want.shape, (attr, got.shape, want.shape)
        torch.testing.assert_close(got, want, rtol=tol, atol=tol * float(want.abs().max()))
