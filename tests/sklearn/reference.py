"""Independent numpy references for the scikit-learn wrappers' tests.

``relu_mlp`` re-derives the NNGP/NTK of ``ntkit.sklearn.mlp(depth, w_std=w, b_std=b)`` (ReLU)
from the arc-cosine formulas (Cho & Saul 2009) and the NTK recursion (Jacot et al. 2018),
written for complex arguments so that complex-step differentiation gives derivatives exact to
rounding (Squire & Trapp 1998): ``df/dx = Im f(x + i h) / h`` with ``h = 1e-30``.
``skntk_closed_form`` re-derives scikit-ntk's formula from its documentation (thesis,
appendix A) for the convention mapping.
"""

from __future__ import annotations

import numpy as np


def relu_mlp(x1, x2, depth, w, b, *, symmetric=False):
    """``(nngp, ntk)`` of ``depth`` x (Dense, ReLU) + Dense, NTK parameterization.

    Inputs ``x1 (n1, d)``, ``x2 (n2, d)``; ``w``, ``b`` may be complex (``b=None``: no
    bias). ``symmetric``: ``x2`` is ``x1`` and the batch diagonal pairs a sample with itself
    (angle exactly 0).
    """
    d = x1.shape[1]
    b2 = 0.0 if b is None else b * b
    q = x1 @ x2.T / d + 0j
    v1 = (x1 * x1).sum(1)[:, None] / d + 0j
    v2 = (x2 * x2).sum(1)[None, :] / d + 0j
    ntk = np.zeros_like(q)

    def dense(q, ntk, v1, v2):
        q = w * w * q + b2
        return q, q + w * w * ntk, w * w * v1 + b2, w * w * v2 + b2

    q, ntk, v1, v2 = dense(q, ntk, v1, v2)
    for _ in range(depth):
        s = np.sqrt(v1 * v2)
        lam = q / s
        theta = np.arccos(np.clip(lam.real, -1, 1)) + 0j
        # arccos with its complex-step tangent, away from the diagonal's kink
        off = np.abs(lam.real) < 1
        theta[off] = np.arccos(lam[off])
        if symmetric:
            np.fill_diagonal(theta, 0.0)
        e = s * (np.sin(theta) + (np.pi - theta) * np.cos(theta)) / (2 * np.pi)
        edot = (np.pi - theta) / (2 * np.pi)
        q, ntk, v1, v2 = e, ntk * edot, v1 / 2, v2 / 2
        q, ntk, v1, v2 = dense(q, ntk, v1, v2)
    return q, ntk


def relu_mlp_log_gradient(x, depth, w, b, *, kind):
    """``dK/dlog(w)`` and ``dK/dlog(b)`` of :func:`relu_mlp` (symmetric), complex step."""
    h = 1e-30
    idx = 0 if kind == "nngp" else 1
    gw = relu_mlp(x, x, depth, w + 1j * h, b, symmetric=True)[idx].imag / h * w
    gb = relu_mlp(x, x, depth, w, b + 1j * h, symmetric=True)[idx].imag / h * b
    return np.stack([gw, gb], axis=-1)


def skntk_closed_form(x1, x2, depth, bias):
    """scikit-ntk 1.2's ``NeuralTangentKernel(depth, bias)(x1, x2)``, re-derived.

    ``Sigma^0 = x1 x2^T``, ``K^0 = Sigma^0 + bias^2``; for ``l = 1..depth``:
    ``Sigma^l = 2 kappa_1(Sigma^{l-1})`` (arc-cosine, no bias in the covariance),
    ``K^l = K^{l-1} 2 kappa_0 + Sigma^l + bias^2``; returned ``K^L / ((L + 1)(bias^2 + 1))``.
    """
    s = x1 @ x2.T
    n1 = (x1 * x1).sum(1)[:, None]
    n2 = (x2 * x2).sum(1)[None, :]
    k = s + bias**2
    for _ in range(depth):
        root = np.sqrt(n1 * n2)
        lam = np.clip(s / root, -1, 1)
        theta = np.arccos(lam)
        s = root * (np.sin(theta) + (np.pi - theta) * lam) / np.pi
        k = k * (np.pi - theta) / np.pi + s + bias**2
        # 2 kappa_1 keeps the batch diagonal (theta = 0: 2 * n * pi / (2 pi) = n)
    return k / ((depth + 1) * (bias**2 + 1))
