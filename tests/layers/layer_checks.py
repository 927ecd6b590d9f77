"""Shared checks for layer families: Monte Carlo convergence, kernel properties, tiling.

Every check compares against something independent of the kernel code under test: random
finite networks built from the same description (Monte Carlo), the definition of symmetry
and positive semi-definiteness, and the untiled result of the same call.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch
from torch.func import functional_call, jacrev

import ntkit.layers as L
from ntkit import empirical_ntk


def randn(shape, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=torch.float64)


def rel(a, b):
    return float((a - b).norm() / b.norm())


def features_kernel(body, x, seed):
    """``f(x) f(x)^T / width`` of the finite body (mean over all output coordinates)."""
    model = body.module(tuple(x.shape[1:]), seed=seed, dtype=torch.float64)
    with torch.no_grad():
        f = model(x).reshape(x.shape[0], -1)
    return f @ f.T / f.shape[1]


def jacobian_ntk(model, x, context=contextlib.nullcontext):
    """``J J^T`` of a one-output finite ``model`` at ``x`` (reverse mode), run in ``context()``."""
    params = {k: v.detach() for k, v in model.named_parameters()}

    def f(p):
        with context():
            return functional_call(model, p, (x,)).reshape(x.shape[0])

    out = 0.0
    for j in jacrev(f)(params).values():
        j = j.reshape(x.shape[0], -1)
        out = out + j @ j.T
    return out


def mc_errors(build, x, width, seeds=(0, 1, 2), readout=None):
    """Mean relative errors (NNGP of the body's features, NTK with a one-output readout).

    ``build(width)`` must end with a layer whose output kernel is ``(n, n)`` (a readout
    such as ``GlobalAvgPool`` or ``Flatten``), so its features' Gram is the NNGP.
    """
    body = build(width)
    net = L.serial(body, readout or L.Dense(1, b_std=0.1))
    nngp = body.kernel(x, get="nngp").nngp
    ntk = net.kernel(x).ntk
    e_nngp = np.mean([rel(features_kernel(body, x, s), nngp) for s in seeds])
    e_ntk = []
    for s in seeds:
        model = net.module(tuple(x.shape[1:]), seed=s, dtype=torch.float64)
        e_ntk.append(rel(empirical_ntk(model, x, mode="trace"), ntk))
    return e_nngp, float(np.mean(e_ntk))


def assert_converges(build, x, *, narrow=16, wide=256, bound=0.2, seeds=(0, 1, 2)):
    """Errors at width ``wide`` are below half those at ``narrow`` (expected: 1/4 = 16^-1/2)."""
    small = mc_errors(build, x, narrow, seeds)
    big = mc_errors(build, x, wide, seeds)
    for name, e_small, e_big in zip(("nngp", "ntk"), small, big):
        assert e_big < 0.5 * e_small, (name, e_small, e_big)
        assert e_big < bound, (name, e_big)
    return small, big


def assert_properties(net, x1, x2):
    """Symmetry, PSD, ``x2=None`` equal to ``x2=x1``, and cross blocks of a joint batch."""
    k = net.kernel(x1)
    for t in (k.nngp, k.ntk):
        assert t.shape[:2] == (x1.shape[0], x1.shape[0])
        m = t.reshape(t.shape[0], t.shape[1], -1)
        if m.shape[2] == 1:
            m = m[..., 0]
            torch.testing.assert_close(m, m.T, rtol=0, atol=0)
            assert float(torch.linalg.eigvalsh(m).min()) > -1e-10 * float(m.abs().max())
    explicit = net.kernel(x1, x1.clone())
    torch.testing.assert_close(explicit.nngp, k.nngp, rtol=1e-12, atol=1e-13)
    joint = net.kernel(torch.cat([x1, x2]))
    cross = net.kernel(x1, x2)
    n1 = x1.shape[0]
    torch.testing.assert_close(cross.nngp, joint.nngp[:n1, n1:], rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(cross.ntk, joint.ntk[:n1, n1:], rtol=1e-12, atol=1e-13)


def assert_tiling_invariant(net, x1, x2=None):
    """The kernel under the smallest workable ``max_memory`` (many tiles) equals the untiled one."""
    full = net.kernel(x1, x2)
    budget, smallest = 2**26, None
    while budget > 1000:
        try:
            tiled = net.kernel(x1, x2, max_memory=budget)
        except ValueError:
            break
        smallest = tiled
        budget //= 2
    assert smallest is not None
    torch.testing.assert_close(smallest.nngp, full.nngp, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(smallest.ntk, full.ntk, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(smallest.cov1, full.cov1, rtol=1e-12, atol=1e-14)
