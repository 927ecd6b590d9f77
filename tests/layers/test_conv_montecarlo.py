"""Monte Carlo: finite networks built by ``net.module`` converge to ``net.kernel``.

For every layer type and padding, the empirical NNGP of the (wide) feature layer,
``f(x1) f(x2)^T / width``, and the empirical NTK of the network with a one-output readout
concentrate around the analytic kernels with fluctuations ~ width^-1/2. The checks compare
the mean relative Frobenius error over a few random networks at two widths 16x apart:
the ratio should be about 1/4 (asserted < 1/2) and the wide error small.
"""

import numpy as np
import pytest
import torch
from torch.func import functional_call, jacrev

import ntkit.layers as L
from ntkit import empirical_ntk

pytestmark = pytest.mark.montecarlo

SEEDS = (0, 1, 2)
NARROW, WIDE = 16, 256


def _x(shape, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=torch.float64)


def _rel(a, b):
    return float((a - b).norm() / b.norm())


def _features_kernel(body, x, seed):
    model = body.module(tuple(x.shape[1:]), seed=seed, dtype=torch.float64)
    with torch.no_grad():
        f = model(x)
    return f @ f.T / f.shape[1]


def _ntk(net, x, seed):
    model = net.module(tuple(x.shape[1:]), seed=seed, dtype=torch.float64)
    return empirical_ntk(model, x, mode="trace")


def _errors(build, x, width, seeds=SEEDS):
    body = build(width)
    net = L.serial(body, L.Dense(1, b_std=0.1))
    nngp = body.kernel(x, get="nngp").nngp
    ntk = net.kernel(x).ntk
    e_nngp = np.mean([_rel(_features_kernel(body, x, s), nngp) for s in seeds])
    e_ntk = np.mean([_rel(_ntk(net, x, s), ntk) for s in seeds])
    return e_nngp, e_ntk


def _conv_relu(padding, stride=1, ksize=3, pool=None, param="ntk"):
    def build(c):
        return L.serial(
            L.Conv(c, ksize, stride=stride, padding=padding, b_std=0.2, parameterization=param),
            L.ReLU(),
            L.Conv(c, 2, padding=padding, w_std=1.2, parameterization=param),
            L.ReLU(),
            pool or L.GlobalAvgPool(),
        )

    return build


CASES = {
    "conv-same": (_conv_relu("same"), (2, 5, 5)),
    "conv-valid-stride2": (_conv_relu("valid", stride=2), (2, 6, 6)),
    "conv-same-stride2": (_conv_relu("same", stride=2), (2, 5, 5)),
    "conv-circular": (_conv_relu("circular"), (2, 4, 5)),
    "conv-explicit-padding": (_conv_relu(1, ksize=(3, 2)), (2, 4, 4)),
    "conv-standard": (_conv_relu("same", param="standard"), (2, 4, 4)),
    "conv-1d": (_conv_relu("same"), (3, 7)),
    "flatten": (_conv_relu("same", pool=L.Flatten()), (2, 4, 4)),
    "global-sum-pool": (_conv_relu("circular", pool=L.GlobalSumPool()), (2, 4, 4)),
    "avg-pool": (
        lambda c: L.serial(
            L.Conv(c, 3, padding="same"),
            L.ReLU(),
            L.AvgPool(2),
            L.Conv(c, 2),
            L.ReLU(),
            L.GlobalAvgPool(),
        ),
        (2, 5, 5),
    ),
    "sum-pool-padded": (
        lambda c: L.serial(
            L.Conv(c, 3, padding="same"),
            L.Erf(),
            L.SumPool(3, stride=1, padding=1),
            L.Conv(c, 2),
            L.ReLU(),
            L.Flatten(),
        ),
        (2, 4, 4),
    ),
    "layer-norm": (
        lambda c: L.serial(
            L.Conv(c, 3, padding="same", b_std=0.5),
            L.LayerNorm(),
            L.ReLU(),
            L.Conv(c, 2, padding="same"),
            L.LayerNorm(),
            L.GlobalAvgPool(),
        ),
        (2, 4, 4),
    ),
    "attention": (
        lambda c: L.serial(
            L.Conv(c, 2, padding="same"),
            L.GlobalSelfAttention(c, n_heads=2, key_channels=c, qk_std=0.8, b_std=0.1),
            L.ReLU(),
            L.GlobalAvgPool(),
        ),
        (2, 3, 3),
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_finite_networks_converge(case):
    build, in_shape = CASES[case]
    x = _x((3, *in_shape), 0)
    narrow = _errors(build, x, NARROW)
    wide = _errors(build, x, WIDE)
    for name, e_small, e_big in zip(("nngp", "ntk"), narrow, wide):
        assert e_big < 0.5 * e_small, (name, e_small, e_big)
        # attention's logits fluctuate like key_channels^-1/2 on top: a larger constant
        assert e_big < (0.3 if case == "attention" else 0.2), (name, e_big)


def test_error_shrinks_like_inverse_sqrt_width():
    build = _conv_relu("same")
    x = _x((3, 2, 4, 4), 1)
    widths = [16, 32, 64, 128, 256]
    errs = np.array([_errors(build, x, w, seeds=(0, 1, 2, 3)) for w in widths])
    for column, name in enumerate(("nngp", "ntk")):
        slope = np.polyfit(np.log(widths), np.log(errs[:, column]), 1)[0]
        assert -0.8 < slope < -0.3, (name, slope, errs[:, column])


# ----------------------------------------------------------------------------- dropout
def _fixed_mask_ntk(model, x, seed):
    """NTK of a train-mode network with ONE dropout mask per sample (the same in J and J')."""
    params = {k: v.detach() for k, v in model.named_parameters()}

    def f(p):
        torch.manual_seed(seed)  # the same mask for every evaluation
        return functional_call(model, p, (x,)).reshape(x.shape[0], -1)

    jac = jacrev(f)(params)
    out = 0.0
    for j in jac.values():
        j = j.reshape(x.shape[0], j.shape[1], -1)
        out = out + torch.einsum("iap,jap->ij", j, j)
    return out / jac[next(iter(jac))].shape[1]


def test_dropout_converges():
    x = _x((3, 2, 4, 4), 2)

    def build(c):
        return L.serial(
            L.Conv(c, 3, padding="same"),
            L.ReLU(),
            L.Dropout(0.4),
            L.Conv(c, 2),
            L.ReLU(),
            L.GlobalAvgPool(),
        )

    def errors(c):
        body = build(c)
        net = L.serial(body, L.Dense(1))
        nngp = body.kernel(x, get="nngp").nngp
        ntk = net.kernel(x).ntk
        e1, e2 = [], []
        for s in SEEDS:
            torch.manual_seed(100 + s)
            e1.append(_rel(_features_kernel(body, x, s), nngp))
            model = net.module((2, 4, 4), seed=s, dtype=torch.float64)
            e2.append(_rel(_fixed_mask_ntk(model, x, 200 + s), ntk))
        return np.mean(e1), np.mean(e2)

    narrow, wide = errors(NARROW), errors(WIDE)
    for e_small, e_big in zip(narrow, wide):
        assert e_big < 0.5 * e_small and e_big < 0.2, (narrow, wide)
    # the kernel without Dropout's diagonal boost is measurably different
    plain = L.serial(
        L.Conv(8, 3, padding="same"), L.ReLU(), L.Conv(8, 2), L.ReLU(), L.GlobalAvgPool()
    )
    assert _rel(plain.kernel(x, get="nngp").nngp, build(8).kernel(x, get="nngp").nngp) > 0.1
