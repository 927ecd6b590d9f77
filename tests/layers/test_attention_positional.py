"""Positional embeddings in GlobalSelfAttention: explicit reference, Monte Carlo, errors."""

import math

import pytest
import torch

import ntkit.layers as L
from tests.layers import cnn_reference as R
from tests.layers.layer_checks import assert_converges, assert_tiling_invariant, randn


def _decay(d):
    return torch.exp(-d / 3.0)


def _position_matrix(spatial, p, decay):
    """R over C-ordered positions, by loops over pairs of positions."""
    import itertools

    pos = list(itertools.product(*[range(n) for n in spatial]))
    r = torch.zeros(len(pos), len(pos), dtype=torch.float64)
    for i, s in enumerate(pos):
        for j, t in enumerate(pos):
            dist = sum(abs(a - b) ** p for a, b in zip(s, t))
            r[i, j] = 1.0 if decay is None and i == j else 0.0
            if decay is not None:
                r[i, j] = math.exp(-dist / 3.0)
    return r


def _ref_attention(J, out, kind, std, decay, p, c_pe, values, qk, ov, b_std):
    S = math.prod(J.spatial)
    iw, pw = (
        (1.0, std**2)
        if kind == "sum"
        else (J.channels / (J.channels + c_pe), std**2 * c_pe / (J.channels + c_pe))
    )
    Rm = torch.kron(
        torch.ones(J.n, J.n, dtype=torch.float64), _position_matrix(J.spatial, p, decay)
    )
    mixed = iw * J.K + pw * Rm
    A = torch.zeros_like(J.K)
    for i in range(J.n):
        blk = slice(i * S, (i + 1) * S)
        A[blk, blk] = torch.softmax(qk * mixed[blk, blk], dim=1)
    K_val = mixed if values else J.K
    T_val = iw * J.T + pw * Rm if values else J.T
    b2 = 0.0 if b_std is None else b_std**2
    K = ov**2 * A @ K_val @ A.T + b2
    T = ov**2 * A @ (T_val + 2 * K_val) @ A.T + b2
    return R.Joint(K, T, J.n, J.spatial, out, J.same)


@pytest.mark.parametrize("kind", ["sum", "concat"])
@pytest.mark.parametrize("decay", [None, _decay], ids=["identity", "decay"])
@pytest.mark.parametrize("values", [False, True])
def test_matches_explicit_reference(kind, decay, values):
    x1, x2 = randn((2, 2, 3, 2), 0), randn((2, 2, 3, 2), 1)
    c_pe = 5 if kind == "concat" else None
    att = L.GlobalSelfAttention(
        4,
        2,
        4,
        qk_std=0.8,
        ov_std=1.1,
        b_std=0.1,
        pos_emb=kind,
        pos_emb_std=0.7,
        pos_emb_decay=decay,
        pos_emb_p_norm=1.5,
        pos_emb_channels=c_pe,
        value_pos_emb=values,
    )
    net = L.serial(L.Conv(3, 2, padding="same", w_std=1.3, b_std=0.2), att, L.GlobalAvgPool())
    got = net.kernel(x1, x2)
    J = R.conv(R.inputs(x1, x2), 3, 2, padding="same", w_std=1.3, b_std=0.2)
    J = _ref_attention(J, 4, kind, 0.7, decay, 1.5, c_pe or 3, values, 0.8, 1.1, 0.1)
    J = R.global_pool(J)
    torch.testing.assert_close(got.nngp, R.cross_block(J, 2, "K"), rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(got.ntk, R.cross_block(J, 2, "T"), rtol=1e-12, atol=1e-13)


def test_embeddings_break_permutation_invariance():
    """Without embeddings, attention + global pooling ignores the order of positions."""
    x = randn((3, 2, 5), 2)
    perm = torch.randperm(5, generator=torch.Generator().manual_seed(0))

    def net(**kw):
        return L.serial(L.Conv(4, 1), L.GlobalSelfAttention(4, **kw), L.ReLU(), L.GlobalAvgPool())

    plain = net()
    torch.testing.assert_close(plain.kernel(x).nngp, plain.kernel(x[..., perm]).nngp)
    pos = net(pos_emb="sum", pos_emb_decay=_decay, value_pos_emb=True)
    assert float((pos.kernel(x).nngp - pos.kernel(x[..., perm]).nngp).abs().max()) > 1e-3


CASES = {
    "sum-decay-values": dict(pos_emb="sum", pos_emb_decay=_decay, value_pos_emb=True),
    "concat-identity": dict(pos_emb="concat", pos_emb_std=1.2),
}


@pytest.mark.montecarlo
@pytest.mark.parametrize(
    "case",
    ["sum-decay-values", pytest.param("concat-identity", marks=pytest.mark.slow)],  # ~9 s
)
def test_finite_networks_converge(case):
    kw = CASES[case]

    def build(c):
        return L.serial(
            L.Conv(c, 2, padding="same"),
            L.GlobalSelfAttention(c, n_heads=2, key_channels=c, qk_std=0.8, b_std=0.1, **kw),
            L.ReLU(),
            L.GlobalAvgPool(),
        )

    # as for attention without embeddings, the logits fluctuate like key_channels^-1/2 on top
    assert_converges(
        build, randn((3, 2, 3, 3), 3), narrow=32, wide=512, bound=0.3, seeds=(0, 1, 2, 3)
    )


def test_tiling():
    net = L.serial(
        L.Conv(3, 2, padding="same"),
        L.GlobalSelfAttention(3, pos_emb="concat", pos_emb_decay=_decay, value_pos_emb=True),
        L.GlobalAvgPool(),
        L.Dense(1),
    )
    x1, x2 = randn((5, 2, 3, 2), 4), randn((4, 2, 3, 2), 5)
    assert_tiling_invariant(net, x1, x2)
    assert_tiling_invariant(net, x1)


def test_bad_input():
    with pytest.raises(ValueError, match="pos_emb must be one of"):
        L.GlobalSelfAttention(4, pos_emb="rotary")
    with pytest.raises(ValueError, match="concat' only"):
        L.GlobalSelfAttention(4, pos_emb="sum", pos_emb_channels=3)
    with pytest.raises(TypeError, match="callable"):
        L.GlobalSelfAttention(4, pos_emb="sum", pos_emb_decay=0.5)
    bad = L.GlobalSelfAttention(4, pos_emb="sum", pos_emb_decay=lambda d: 1.0 - d)
    with pytest.raises(ValueError, match="eigenvalue"):
        bad.module((2, 5))
