"""Slow, obviously-correct references shared by the tests (independent of ntkit's code)."""

from __future__ import annotations

import math
import warnings

import numpy as np
from scipy import integrate

_L = 10.0  # Gaussian tails beyond 10 standard deviations are below 1e-22


def _phi(z):
    return math.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)


def gaussian_expectation(f, g, q11: float, q12: float, q22: float) -> float:
    """E[f(u) g(v)] for (u, v) ~ N(0, [[q11, q12], [q12, q22]]) by nested adaptive quadrature.

    u = sqrt(q11) z1, v = a z1 + b z2 with a = q12 / sqrt(q11), b = sqrt(q22 - a^2); kinks of
    f and g at 0 are passed to the integrator as break points.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", integrate.IntegrationWarning)
        return _nested_quad(f, g, q11, q12, q22)


def _nested_quad(f, g, q11, q12, q22):
    s1 = math.sqrt(q11)
    a = q12 / s1
    b = math.sqrt(max(q22 - a * a, 0.0))

    def inner(z1):
        if b < 1e-12:
            return g(a * z1)
        kink = -a * z1 / b
        pts = [kink] if -_L < kink < _L else None
        val, _ = integrate.quad(
            lambda z2: _phi(z2) * g(a * z1 + b * z2),
            -_L,
            _L,
            points=pts,
            limit=200,
            epsabs=1e-14,
            epsrel=1e-12,
        )
        return val

    val, _ = integrate.quad(
        lambda z1: _phi(z1) * f(s1 * z1) * inner(z1),
        -_L,
        _L,
        points=[0.0],
        limit=200,
        epsabs=1e-14,
        epsrel=1e-12,
    )
    return val


def mlp_kernels(x1, x2, layers):
    """NNGP and NTK of an MLP pair by pair by the infinite-width recursion (quadrature).

    Args:
        x1: (n1, d) numpy array.
        x2: (n2, d) numpy array.
        layers: list of ("dense", w_std, b_std) and ("act", phi, dphi) entries
            (NTK parameterization; b_std None means no bias).

    Returns:
        (nngp, ntk) numpy arrays (n1, n2).
    """
    d = x1.shape[1]
    n1, n2 = x1.shape[0], x2.shape[0]
    nngp = np.zeros((n1, n2))
    ntk = np.zeros((n1, n2))
    for i in range(n1):
        for j in range(n2):
            q11 = x1[i] @ x1[i] / d
            q22 = x2[j] @ x2[j] / d
            q12 = x1[i] @ x2[j] / d
            t12 = 0.0
            for layer in layers:
                if layer[0] == "dense":
                    _, w, b = layer
                    b2 = 0.0 if b is None else b * b
                    q11, q22, q12 = w * w * q11 + b2, w * w * q22 + b2, w * w * q12 + b2
                    t12 = q12 + w * w * t12
                else:
                    _, phi, dphi = layer
                    dot = gaussian_expectation(dphi, dphi, q11, q12, q22)
                    q12_new = gaussian_expectation(phi, phi, q11, q12, q22)
                    q11 = gaussian_expectation(phi, phi, q11, q11, q11)
                    q22 = gaussian_expectation(phi, phi, q22, q22, q22)
                    q12 = q12_new
                    t12 = t12 * dot
            nngp[i, j], ntk[i, j] = q12, t12
    return nngp, ntk
