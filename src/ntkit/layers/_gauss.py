"""Gaussian expectations of any elementwise function, to a stated tolerance at any scale.

For ``(u, v) ~ N(0, [[q11, q12], [q12, q22]])`` with ``s_i = sqrt(q_ii)`` and
``rho = q12 / (s1 s2)``, Mehler's formula gives

    E[f(u) g(v)] = sum_k c_k(f, s1) c_k(g, s2) rho^k,   c_k(f, s) = E[f(s z) h_k(z)],

with ``h_k = He_k / sqrt(k!)`` the orthonormal Hermite polynomials. The coefficients depend on
one sample's scale only, so they are tabulated once per function over ``log10 s`` (piecewise
Chebyshev interpolation, checked against direct quadrature when the table is built) and the
per-pair work is a polynomial in ``rho``. The truncation after ``K`` terms is bounded by
Cauchy-Schwarz, ``|rho|^(K+1) t_K(f, s1) t_K(g, s2)`` with the tail energies
``t_K^2 = E[f(s z)^2] - sum_(k <= K) c_k^2``; pairs where this bound exceeds the tolerance
(correlations near +-1) are integrated directly, in 1-D for ``|rho| = 1`` and by nested
composite Gauss-Legendre quadrature otherwise.

Every 1-D integral is a composite Gauss-Legendre rule over panels that resolve both the
Gaussian (panels of 1/4 standard deviation over +-9.5 of them) and the function (panels of
1/4 on ``[-8, 8]`` in the function's own variable, growing geometrically to 40, plus the
``breakpoints`` where it has kinks or jumps); each is evaluated with two rules (8 and 12
nodes per panel) and the difference is the error estimate. Any estimate above the tolerance
raises instead of returning an inaccurate number.
"""

from __future__ import annotations

import functools
import math
import threading

import numpy as np
import torch

#: Standard deviations covered on each side (Gaussian mass beyond: 2e-21).
TAIL = 9.5
#: Panels across +-TAIL standard deviations.
Z_PANELS = 76
#: Panel edges in the function's own variable: width 1/4 on [-8, 8], then geometric to 40.
FEATURE_EDGES = np.unique(
    np.concatenate(
        [
            np.linspace(-8.0, 8.0, 65),
            8.0 * 5.0 ** (np.arange(1, 13) / 12.0),
            -8.0 * 5.0 ** (np.arange(1, 13) / 12.0),
        ]
    )
)
#: Smallest and largest standard deviation of the tables (variances 1e-6 .. 1e6).
LOG10_SD_RANGE = (-3.0, 3.0)
#: Chebyshev nodes per decade of standard deviation.
TABLE_NODES = 24
#: Hermite coefficients tabulated (the series is cut at most here).
MAX_TERMS = 64


def _legendre(g: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    t, w = np.polynomial.legendre.leggauss(g)
    return (
        torch.as_tensor(t, dtype=like.dtype, device=like.device),
        torch.as_tensor(w, dtype=like.dtype, device=like.device),
    )


def _nodes(edges: torch.Tensor, g: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Composite Gauss-Legendre nodes and weights over sorted ``edges`` (..., P + 1)."""
    t, w = _legendre(g, edges)
    mid = (edges[..., 1:] + edges[..., :-1]) / 2
    half = (edges[..., 1:] - edges[..., :-1]) / 2
    x = mid.unsqueeze(-1) + half.unsqueeze(-1) * t
    wx = half.unsqueeze(-1) * w
    return x.flatten(-2), wx.flatten(-2)


def _edges(center, scale, feature_scales, breakpoints, like) -> torch.Tensor:
    """Panel edges of a Gaussian integral in the variable ``y = center + scale * z``.

    ``feature_scales``: the function features at ``x`` (feature grid, breakpoints) appear at
    ``y = x / a`` for each ``a`` in the list (e.g. ``y = z`` and ``x = s z``: ``a = s``).
    """
    zgrid = torch.linspace(-TAIL, TAIL, Z_PANELS + 1, dtype=like.dtype, device=like.device)
    lo = center - TAIL * scale
    hi = center + TAIL * scale
    parts = [center.unsqueeze(-1) + scale.unsqueeze(-1) * zgrid]
    feats = torch.as_tensor(
        np.concatenate([FEATURE_EDGES, np.asarray(breakpoints, dtype=np.float64)]),
        dtype=like.dtype,
        device=like.device,
    )
    for a in feature_scales:
        a = a.unsqueeze(-1)
        safe = torch.where(a != 0, a, torch.ones_like(a))
        pts = torch.where(a != 0, feats / safe, lo.unsqueeze(-1).expand(*a.shape[:-1], 1))
        parts.append(torch.minimum(torch.maximum(pts, lo.unsqueeze(-1)), hi.unsqueeze(-1)))
    edges = torch.cat([p.expand(*center.shape, p.shape[-1]) for p in parts], dim=-1)
    return edges.sort(dim=-1).values


def _gauss_weight(z: torch.Tensor) -> torch.Tensor:
    return torch.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)


# ----------------------------------------------------------------------------- coefficients
class HermiteTable:
    """``c_k(f, s)`` and ``E[f(s z)^2]`` tabulated in ``log10 s`` (piecewise Chebyshev).

    Args:
        f: Elementwise torch function.
        breakpoints: Kinks and jumps of ``f``.
        tol: Absolute accuracy (relative to ``sqrt(E[f^2])``) the table must reach.
        name: For error messages.
    """

    def __init__(self, f, breakpoints, tol: float, name: str):
        self.f = f
        self.breakpoints = tuple(float(b) for b in breakpoints)
        self.name = name
        lo, hi = LOG10_SD_RANGE
        self.segments = int(round(hi - lo))
        m = TABLE_NODES
        j = np.arange(m)
        self.cheb = np.cos((2 * j + 1) * np.pi / (2 * m))  # first kind: endpoints excluded
        self.bary = (-1.0) ** j * np.sin((2 * j + 1) * np.pi / (2 * m))
        t = lo + (np.arange(self.segments)[:, None] + (1 + self.cheb[None, :]) / 2)  # (S, m)
        sd = torch.as_tensor(10.0**t, dtype=torch.float64).reshape(-1)
        coef, energy = direct_coefficients(f, sd, MAX_TERMS, self.breakpoints, tol, name)
        self.coef = coef.reshape(self.segments, m, MAX_TERMS + 1)
        self.energy = energy.reshape(self.segments, m)
        self.at_zero = float(f(torch.zeros((), dtype=torch.float64)))
        # check the interpolation between the nodes against direct quadrature
        probe = torch.as_tensor(
            10.0 ** (lo + (np.arange(self.segments * 3) + 0.37) / 3.0), dtype=torch.float64
        )
        direct, direct_e = direct_coefficients(f, probe, MAX_TERMS, self.breakpoints, tol, name)
        self.direct = False
        interp, interp_e = self.lookup(probe)
        err = (interp - direct).abs().amax(-1) / direct_e.clamp_min(1e-300).sqrt()
        # Where interpolation in s is not accurate enough (kinks make high-order
        # coefficients oscillate in s), every lookup integrates directly instead.
        self.direct = float(err.max()) > tol
        self.tol = tol
        self.odd = bool(self.coef[..., 0::2].abs().max() <= 1e-13 * self.coef.abs().max())
        self.even = bool(self.coef[..., 1::2].abs().max() <= 1e-13 * self.coef.abs().max())

    def _exact_at_zero(self, c, e, zero):
        """``(c, e)`` with the exact values at ``sd == 0`` (``f(0)``, zeros; ``f(0)^2``)."""
        if not bool(zero.any()):
            return c, e
        c0 = torch.zeros_like(c)
        c0[..., 0] = self.at_zero
        c = torch.where(zero.unsqueeze(-1), c0, c)
        return c, torch.where(zero, torch.full_like(e, self.at_zero**2), e)

    def _direct_lookup(self, sd, safe, zero):
        flat = safe.reshape(-1)
        uniq, inverse = torch.unique(flat.detach(), return_inverse=True)
        if flat.requires_grad and torch.is_grad_enabled():
            uniq, inverse = flat, torch.arange(flat.numel(), device=flat.device)
        c, e = direct_coefficients(
            self.f, uniq.to(torch.float64), MAX_TERMS, self.breakpoints, self.tol, self.name
        )
        c, e = c.to(sd.dtype)[inverse], e.to(sd.dtype)[inverse]
        c = c.reshape(*sd.shape, MAX_TERMS + 1)
        e = e.reshape(sd.shape)
        return self._exact_at_zero(c, e, zero)

    def lookup(self, sd: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Interpolated ``(c_k (..., K+1), E[f^2] (...))`` at standard deviations ``sd``.

        ``sd == 0`` is exact (``f(0)`` and zeros); ``sd`` outside the table raises.
        """
        lo, hi = LOG10_SD_RANGE
        zero = sd == 0
        safe = torch.where(zero, torch.ones_like(sd), sd)
        t = torch.log10(safe)
        bad = (~zero) & ((t < lo) | (t > hi))
        if self.direct and not bool(bad.any()):
            return self._direct_lookup(sd, safe, zero)
        if bool(bad.any()):
            v = float(sd[bad].flatten()[0]) ** 2
            raise ValueError(
                f"{self.name}: a pre-activation variance of {v:.3g} is outside the range "
                f"1e-6..1e6 where the kernel of fn is computed to its tolerance. Rescale "
                "the inputs or w_std/b_std, or use a closed-form activation."
            )
        seg = ((t - lo).floor().clamp(0, self.segments - 1)).long()
        local = 2.0 * (t - lo - seg.to(t.dtype)) - 1.0  # in [-1, 1]
        cheb = torch.as_tensor(self.cheb, dtype=sd.dtype, device=sd.device)
        bary = torch.as_tensor(self.bary, dtype=sd.dtype, device=sd.device)
        d = local.unsqueeze(-1) - cheb
        d = torch.where(d == 0, torch.full_like(d, 1e-300), d)
        wts = bary / d
        wts = wts / wts.sum(-1, keepdim=True)  # (..., m)
        coef = self.coef.to(sd.device, sd.dtype)  # (segments, m, K+1)
        energy = self.energy.to(sd.device, sd.dtype)  # (segments, m)
        # one small matrix product per segment in use (no (..., m, K+1) gather)
        flat_w, flat_seg = wts.reshape(-1, wts.shape[-1]), seg.reshape(-1)
        c = flat_w.new_zeros(flat_w.shape[0], coef.shape[-1])
        e = flat_w.new_zeros(flat_w.shape[0])
        for j in torch.unique(flat_seg).tolist():
            rows = (flat_seg == j).nonzero()[:, 0]
            c = c.index_copy(0, rows, flat_w[rows] @ coef[j])
            e = e.index_copy(0, rows, flat_w[rows] @ energy[j])
        c = c.reshape(*sd.shape, coef.shape[-1])
        e = e.reshape(sd.shape)
        return self._exact_at_zero(c, e, zero)


def direct_coefficients(f, sd, terms, breakpoints, tol, name):
    """``c_k(f, s) = E[f(s z) h_k(z)]`` for ``k <= terms`` and ``E[f(s z)^2]``, ``sd > 0``.

    Returns:
        ``(coef (n, terms + 1), energy (n,))``.

    Raises:
        ValueError: the two quadrature rules disagree by more than ``tol`` (relative to
            ``sqrt(E[f^2])``), e.g. a kink of ``f`` not in ``breakpoints``.
    """
    sd = sd.reshape(-1)
    zero = torch.zeros_like(sd)
    edges = _edges(zero, sd, [torch.ones_like(sd)], breakpoints, sd)  # in x = s z
    out = []
    for g in (8, 12):
        x, w = _nodes(edges, g)
        z = x / sd.unsqueeze(-1)
        w = w * _gauss_weight(z) / sd.unsqueeze(-1)
        fx = f(x)
        energy = (fx * fx * w).sum(-1)
        fx = fx * w
        # orthonormal Hermite recurrence h_(k+1) = (z h_k - sqrt(k) h_(k-1)) / sqrt(k + 1),
        # in place (no autograd through the table)
        h_prev, h = torch.zeros_like(z), torch.ones_like(z)
        coef = [fx.sum(-1)]
        inplace = not (torch.is_grad_enabled() and z.requires_grad)
        for k in range(terms):
            if inplace:
                h_prev.mul_(-math.sqrt(k)).addcmul_(z, h).div_(math.sqrt(k + 1))
                h_prev, h = h, h_prev
            else:
                h_prev, h = h, (z * h - math.sqrt(k) * h_prev) / math.sqrt(k + 1)
            coef.append((fx * h).sum(-1))
        out.append((torch.stack(coef, -1), energy))
    (c8, e8), (c12, e12) = out
    scale = e12.clamp_min(1e-300).sqrt()
    err = torch.maximum((c12 - c8).abs().amax(-1) / scale, (e12 - e8).abs() / scale**2).detach()
    _check_finite(c12, e12, name)
    if float(err.max()) > tol:
        i = int(err.argmax())
        raise ValueError(
            f"{name}: Gaussian integrals of fn at standard deviation {float(sd[i]):.3g} do "
            f"not converge to the tolerance {tol:g} (estimate {float(err[i]):.2g}). If fn has "
            "kinks or jumps away from the integers in [-8, 8], pass them as breakpoints=."
        )
    return c12, e12


def _check_finite(c, e, name):
    if not (bool(torch.isfinite(c).all()) and bool(torch.isfinite(e).all())):
        raise ValueError(
            f"{name}: fn is not finite (or not square-integrable) under a Gaussian at some "
            "variance: E[fn(u)^2] is infinite or NaN. Use a function with at most polynomial "
            "growth that is defined on the whole real line."
        )


_TABLE_LOCK = threading.Lock()


def table_for(owner, attr: str, f, breakpoints, tol, name) -> HermiteTable:
    """The table cached on ``owner`` (built once, under a lock: tiles run in threads).

    Tables are also shared between layers with the same function, breakpoints and
    tolerance (a bounded memo of a deterministic computation, :func:`_shared_table`).
    """
    table = owner.__dict__.get(attr)
    if table is None:
        with _TABLE_LOCK:
            table = owner.__dict__.get(attr)
            if table is None:
                try:
                    table = _shared_table(f, tuple(breakpoints), float(tol), name)
                except TypeError:  # an unhashable callable
                    table = HermiteTable(f, breakpoints, tol, name)
                owner.__dict__[attr] = table
    return table


@functools.lru_cache(maxsize=16)
def _shared_table(f, breakpoints, tol, name) -> HermiteTable:
    return HermiteTable(f, breakpoints, tol, name)


# ----------------------------------------------------------------------------- expectations
def expectation(ft: HermiteTable, gt: HermiteTable, q12, q11, q22, rtol: float, name: str):
    """``E[f(u) g(v)]`` for every entry (arguments broadcast), to ``rtol`` relative accuracy.

    The error is at most ``rtol * sqrt(E[f(u)^2] E[g(v)^2])`` (the tables' interpolation
    error, checked to a tenth of that when they were built, included).

    Args:
        ft: Table of ``f``.
        gt: Table of ``g``.
        q12: Covariances, e.g. ``(n1, n2)``.
        q11: Variances of ``u``, broadcastable to ``q12`` (e.g. ``(n1, 1)``).
        q22: Variances of ``v``, broadcastable to ``q12`` (e.g. ``(1, n2)``).
        rtol: Relative tolerance.
        name: For error messages.
    """
    shape = torch.broadcast_shapes(q12.shape, q11.shape, q22.shape)
    q12 = q12.expand(shape)
    s1, s2 = q11.clamp_min(0).sqrt(), q22.clamp_min(0).sqrt()
    c1, e1 = ft.lookup(s1)  # (..., K+1) on q11's own (unbroadcast) shape
    c2, e2 = gt.lookup(s2)
    norm = s1 * s2
    positive = (norm > 0).expand(shape)
    safe = torch.where(norm > 0, norm, torch.ones_like(norm))
    rho = torch.where(positive, q12 / safe, torch.zeros_like(q12))
    rho = rho + (rho.clamp(-1.0, 1.0) - rho).detach()  # clamp rounding, keep the gradient
    # perfectly correlated pairs (exactly, as on the batch diagonal): a 1-D integral
    ones = positive & (((q11 * q22 - q12 * q12).detach() <= 0) | (rho.detach().abs() >= 1))
    arho = torch.where(ones, torch.zeros_like(rho), rho).abs().detach()
    scale = (e1 * e2).clamp_min(0).sqrt().detach().expand(shape)
    sq = scale.clamp_min(1e-300)

    # truncation after K terms: |rho|^(K+1) t_K(f, s1) t_K(g, s2) (Cauchy-Schwarz on the tail)
    e1d, e2d = e1.detach(), e2.detach()
    tail1 = (e1d.unsqueeze(-1) - (c1.detach() ** 2).cumsum(-1)).clamp_min(0).sqrt()
    tail2 = (e2d.unsqueeze(-1) - (c2.detach() ** 2).cumsum(-1)).clamp_min(0).sqrt()
    tau1 = tail1 / e1d.clamp_min(1e-300).sqrt().unsqueeze(-1)
    tau2 = tail2 / e2d.clamp_min(1e-300).sqrt().unsqueeze(-1)
    big = float(arho.max()) if arho.numel() else 0.0
    terms = MAX_TERMS
    for k in (8, 16, 24, 32, 48):
        if big ** (k + 1) * float(tau1[..., k].max()) * float(tau2[..., k].max()) <= 0.5 * rtol:
            terms = k
            break
    direct = ones
    if terms == MAX_TERMS:
        bound = arho ** (terms + 1) * tail1[..., terms] * tail2[..., terms]
        direct = direct | ((bound > 0.5 * rtol * sq) & positive)

    odd = ft.odd and gt.odd
    even = ft.even and gt.even
    # Horner in rho (in rho^2 over the nonzero terms when f and g share a parity); the
    # products c_k(f, s1) c_k(g, s2) broadcast, e.g. (n1, 1) x (1, n2)
    step = 2 if (odd or even) else 1
    x = rho * rho if step == 2 else rho
    acc = torch.zeros_like(rho)
    for k in reversed(range(1 if odd else 0, terms + 1, step)):
        acc = torch.addcmul(acc * x, c1[..., k], c2[..., k])
    out = acc * rho if odd else acc
    if ft is gt and bool(ones.any()):
        # a sample with itself (rho = 1, equal variances): E[f(s z)^2], the table's energy
        same = ones & (s1 == s2).expand(shape) & (rho.detach() > 0)
        if bool(same.any()):
            out = torch.where(same, e1.expand(shape), out)
            direct = direct & ~same
    if bool(direct.any()):
        out = out.clone()
        s1f, s2f = s1.expand(shape), s2.expand(shape)
        out[direct] = _direct_pairs(
            ft, gt, s1f[direct], s2f[direct], rho[direct], ones[direct], rtol, name, sq[direct]
        )
    return out


def _direct_pairs(ft, gt, s1, s2, rho, ones, rtol, name, scale):
    """Direct quadrature for pairs whose series converges too slowly (``|rho|`` near 1)."""
    f, g = ft.f, gt.f
    bps = tuple(sorted(set(ft.breakpoints) | set(gt.breakpoints)))
    out = torch.empty_like(rho)
    if bool(ones.any()):  # |rho| = 1: v = sign(rho) s2/s1 u, a 1-D integral
        a, b = s1[ones], s2[ones] * torch.sign(rho[ones]).detach()
        zero = torch.zeros_like(a)
        edges = _edges(zero, torch.ones_like(a), [a, b], bps, a)
        vals = []
        for n in (8, 12):
            z, w = _nodes(edges, n)
            w = w * _gauss_weight(z)
            vals.append((f(a.unsqueeze(-1) * z) * g(b.unsqueeze(-1) * z) * w).sum(-1))
        _check_estimate(vals, scale[ones], rtol, name)
        out[ones] = vals[1]
    rest = ~ones
    if bool(rest.any()):
        r = rho[rest]
        gap = (1.0 - r * r).clamp_min(0).sqrt()
        out[rest] = _nested(f, g, s1[rest], s2[rest], r, gap, bps, rtol, name, scale[rest])
    return out


def _nested(f, g, s1, s2, rho, gap, bps, rtol, name, scale, chunk: int = 1):
    """``E[f(s1 z1) g(s2 (rho z1 + gap z2))]`` by nested composite Gauss-Legendre rules."""
    results = []
    for i in range(0, s1.shape[0], chunk):
        a, b, r, c = s1[i : i + chunk], s2[i : i + chunk], rho[i : i + chunk], gap[i : i + chunk]
        zero = torch.zeros_like(a)
        outer = _edges(zero, torch.ones_like(a), [a, b * r], bps, a)  # in z1
        vals = []
        for n in (6, 10):
            z1, w1 = _nodes(outer, n)  # (p, N)
            w1 = w1 * _gauss_weight(z1)
            center = (b * r).unsqueeze(-1) * z1  # inner variable y = s2 (rho z1 + gap z2)
            width = (b * c).unsqueeze(-1).expand_as(center)
            inner = _edges(center, width, [torch.ones_like(center)], bps, a)
            y, w2 = _nodes(inner, n)  # (p, N, M)
            w2 = w2 * _gauss_weight((y - center.unsqueeze(-1)) / width.unsqueeze(-1))
            w2 = w2 / width.unsqueeze(-1)
            smoothed = (g(y) * w2).sum(-1)  # (p, N)
            vals.append((f(a.unsqueeze(-1) * z1) * smoothed * w1).sum(-1))
        _check_estimate(vals, scale[i : i + chunk], rtol, name)
        results.append(vals[1])
    return torch.cat(results)


def _check_estimate(vals, scale, rtol, name):
    lo, hi = vals
    err = (hi - lo).abs().detach() / scale.clamp_min(1e-300)
    if not bool(torch.isfinite(hi).all()):
        raise ValueError(f"{name}: the Gaussian expectation of fn is not finite.")
    if bool((err > rtol).any()):
        raise ValueError(
            f"{name}: the Gaussian expectation of fn does not converge to rtol={rtol:g} "
            f"(estimate {float(err.max()):.2g}); pass kinks and jumps of fn as breakpoints=, "
            "or loosen rtol."
        )
