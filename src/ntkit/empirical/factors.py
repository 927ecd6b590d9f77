"""Per-parameter Jacobian factors and their kernel contractions.

A *factor* describes one parameter's per-sample Jacobian of the projected outputs, in a form
that is cheap to store and to contract:

- :class:`Dense`: the Jacobian itself, ``j: (n, K, D)`` (``D`` = parameter size).
- :class:`Kron`: a sum of outer products over positions (a linear map applied at ``P``
  positions, e.g. a dense layer on a sequence or a convolution on image patches):
  ``J[i, a] = sum_p g[i, a, p, :] (x) x[i, p, :]`` with ``g: (n, K, P, A)`` the output
  cotangents and ``x: (n, P, B)`` the inputs (or :class:`OneHot` indices for an embedding).

Contracting two factors gives the parameter's share of the kernel, in one of three layouts:

- ``"full"``: ``(n1, K1, n2, K2)``, ``Theta[i, a, j, b] = J1[i, a] . J2[j, b]``;
- ``"trace"``: ``(n1, n2)``, ``sum_a J1[i, a] . J2[j, a]`` (same directions on both sides);
- ``"diag"``: ``(n, K1, K2)``, only ``i == j`` (same samples on both sides).

A :class:`Kron` factor is contracted either through Gram matrices of its two parts (never
forming the Jacobian: cost ``n1 n2 P Q (B + K A)``) or by materialising ``sum_p g (x) x``
(cost ``n K P A B + n1 n2 K^2 A B``); :func:`kron_strategy` picks the cheaper one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

__all__ = [
    "Dense",
    "Kron",
    "OneHot",
    "contract",
    "gram",
    "kron_strategy",
    "materialize",
    "mirror_lower",
    "sym_bounds",
]

#: Rows per block when a symmetric Gram matrix is computed block-triangularly.
_SYM_MIN_ROWS = 320
#: Largest temporary (entries) of a positions-by-positions Gram contraction.
_TEMP_ENTRIES = 2**24


@dataclass(eq=False)
class OneHot:
    """Integer inputs of an embedding, standing for one-hot rows of width ``size``.

    Attributes:
        idx: ``(n, P)`` integer indices.
        size: Number of embeddings ``V``.
        mask: ``(n, P)`` floating weights (0 at ``padding_idx``, else 1) or ``None``.
    """

    idx: torch.Tensor
    size: int
    mask: torch.Tensor | None = None

    @property
    def positions(self) -> int:
        return self.idx.shape[1]

    def dense(self, dtype: torch.dtype) -> torch.Tensor:
        """The one-hot rows ``(n, P, V)``."""
        out = torch.nn.functional.one_hot(self.idx, self.size).to(dtype)
        if self.mask is not None:
            out = out * self.mask[..., None]
        return out


@dataclass(eq=False)
class Dense:
    """A materialised per-sample Jacobian ``j: (n, K, D)``."""

    j: torch.Tensor

    @property
    def n(self) -> int:
        return self.j.shape[0]


@dataclass(eq=False)
class Kron:
    """``J[i, a] = sum_p g[i, a, p] (x) x[i, p]``.

    Attributes:
        g: Output cotangents ``(n, K, P, A)``.
        x: Inputs ``(n, P, B)`` or :class:`OneHot` with ``P`` positions.
    """

    g: torch.Tensor
    x: torch.Tensor | OneHot
    _dense: Dense | None = field(default=None, repr=False)

    @property
    def n(self) -> int:
        return self.g.shape[0]

    @property
    def width_in(self) -> int:
        return self.x.size if isinstance(self.x, OneHot) else self.x.shape[-1]


Factor = Dense | Kron


def materialize(f: Factor) -> Dense:
    """The :class:`Dense` form of a factor (cached on a :class:`Kron`)."""
    if isinstance(f, Dense):
        return f
    if f._dense is None:
        xd = f.x.dense(f.g.dtype) if isinstance(f.x, OneHot) else f.x
        j = torch.einsum("nkpa,npb->nkab", f.g, xd)
        f._dense = Dense(j.reshape(j.shape[0], j.shape[1], -1))
    return f._dense


def sym_bounds(n: int, unit: int = 1) -> list[int] | None:
    """Row-block bounds of a symmetric ``(n, n)`` Gram computed block-triangularly.

    Bounds fall on multiples of ``unit`` (the output directions of a sample in ``full``
    mode), so that every block covers whole samples.
    """
    units = n // unit
    if n < 2 * _SYM_MIN_ROWS or units < 2:
        return None
    nb = min(8, n // _SYM_MIN_ROWS, units)
    return [round(i * units / nb) * unit for i in range(nb + 1)]


def gram(
    a: torch.Tensor,
    b: torch.Tensor,
    sym: bool,
    unit: int = 1,
    scale: torch.Tensor | None = None,
    unit2: int | None = None,
) -> torch.Tensor:
    """``a @ b.T`` for ``a: (N, D)``, ``b: (M, D)``, optionally times a per-sample scale.

    With ``sym`` (``b`` is ``a``), only the diagonal and upper row blocks of
    :func:`sym_bounds` are computed (fewer FLOPs); the lower blocks are left unset and must be
    filled by :func:`mirror_lower` (with the same ``unit``) once the caller has summed all
    its Gram matrices.

    Args:
        a: ``(N, D)`` with ``N = n1 * unit`` (rows grouped by sample).
        b: ``(M, D)`` with ``M = n2 * unit``.
        sym: Whether ``b`` is ``a``.
        unit: Rows of ``a`` per sample.
        scale: Optional ``(n1, n2)``; entry ``(i u + s, j u2 + t)`` of the result is
            multiplied by ``scale[i, j]`` (block by block, in place: no second full-size pass).
        unit2: Rows of ``b`` per sample (default ``unit``; equal to it when ``sym``).

    Returns:
        ``(N, M)``.
    """
    n = a.shape[0]
    unit2 = unit if unit2 is None else unit2
    bounds = sym_bounds(n, unit) if sym and a.shape[1] >= 128 else None
    if bounds is None:
        return _scaled(a @ b.T, scale, unit, unit2)
    out = torch.empty(n, n, dtype=a.dtype, device=a.device)
    for r in range(len(bounds) - 1):
        r0, r1 = bounds[r], bounds[r + 1]
        blk = a[r0:r1] @ a[r0:].T
        sub = None if scale is None else scale[r0 // unit : r1 // unit, r0 // unit :]
        out[r0:r1, r0:] = _scaled(blk, sub, unit, unit)
    return out


def _scaled(m: torch.Tensor, scale: torch.Tensor | None, unit: int, unit2: int) -> torch.Tensor:
    """``m: (n1 u, n2 u2)`` times ``scale: (n1, n2)`` broadcast over each ``u x u2`` block."""
    if scale is None:
        return m
    n1, n2 = scale.shape
    m.view(n1, unit, n2, unit2).mul_(scale[:, None, :, None])
    return m


def mirror_lower(m: torch.Tensor, unit: int = 1) -> torch.Tensor:
    """Make a square ``m`` exactly symmetric (in place).

    The lower row blocks of :func:`sym_bounds` (same ``unit`` as the :func:`gram` calls) are
    copied from the upper ones, and each diagonal block is replaced by ``(B + B^T) / 2``
    (matrix products are not bitwise symmetric).
    """
    n = m.shape[0]
    bounds = sym_bounds(n, unit) or [0, n]
    for r in range(len(bounds) - 1):
        rs = slice(bounds[r], bounds[r + 1])
        blk = m[rs, rs]
        blk.copy_((blk + blk.T) / 2)
        if r:
            m[rs, : bounds[r]] = m[: bounds[r], rs].T
    return m


def kron_strategy(
    n1: int, n2: int, k: int, p: int, q: int, a: int, b: int, how: str
) -> tuple[str, float]:
    """Cheaper way to contract two :class:`Kron` factors, and its cost in multiply-adds.

    Args:
        n1: Samples on the first side.
        n2: Samples on the second side.
        k: Output directions.
        p: Positions on the first side.
        q: Positions on the second side.
        a: Width of the cotangent part.
        b: Width of the input part.
        how: ``"full"``, ``"trace"`` or ``"diag"``.

    Returns:
        ``("gram" | "materialize", cost)``.
    """
    pairs = n1 if how == "diag" else n1 * n2
    kk = k if how == "trace" else k * k
    if p == 1 and q == 1:
        gram_cost = pairs * (b + kk * a)
    else:
        # x-Gram, then the cotangent side contracted through it (see _kron_gram)
        gram_cost = pairs * p * q * (b + k * a) + (0 if how == "trace" else pairs * p * k * k * a)
    mat_cost = (n1 + (0 if how == "diag" else n2)) * k * max(p, q) * a * b + pairs * kk * a * b
    return ("gram", gram_cost) if gram_cost <= mat_cost else ("materialize", mat_cost)


def contract(f1: Factor, f2: Factor, how: str, sym: bool = False) -> torch.Tensor:
    """Contract two factors of the same parameter into its kernel share.

    Args:
        f1: Factor of the first inputs (``n1`` samples, ``K1`` directions).
        f2: Factor of the second inputs (``n2`` samples, ``K2`` directions); ``sym`` means
            it is ``f1`` itself (the result is then exactly symmetric).
        how: ``"full"`` -> ``(n1, K1, n2, K2)``; ``"trace"`` -> ``(n1, n2)``;
            ``"diag"`` -> ``(n, K1, K2)``.
        sym: Whether ``f2`` is ``f1``; then only the upper row blocks of the result (as a
            square ``(n1 K1, n1 K1)`` or ``(n1, n1)`` matrix) are valid, see :func:`gram`.

    Returns:
        The contribution.
    """
    if isinstance(f1, Kron) and isinstance(f2, Kron):
        p, q = f1.g.shape[2], f2.g.shape[2]
        k = max(f1.g.shape[1], f2.g.shape[1])
        strategy, _ = kron_strategy(f1.n, f2.n, k, p, q, f1.g.shape[3], f1.width_in, how)
        if strategy == "gram":
            return _kron_gram(f1, f2, how, sym)
    return _dense_contract(materialize(f1), materialize(f2), how, sym)


def _dense_contract(d1: Dense, d2: Dense, how: str, sym: bool) -> torch.Tensor:
    j1, j2 = d1.j, d2.j
    n1, k1, _ = j1.shape
    n2, k2, _ = j2.shape
    if how == "full":
        full = gram(j1.reshape(n1 * k1, -1), j2.reshape(n2 * k2, -1), sym, unit=k1)
        return full.view(n1, k1, n2, k2)
    if how == "trace":
        return gram(j1.reshape(n1, -1), j2.reshape(n2, -1), sym)
    return torch.bmm(j1, j2.transpose(1, 2))


def _x_gram(x1, x2, how: str, sym: bool, dtype) -> torch.Tensor:
    """Input-side Gram: ``(n1, n2, P, Q)``, or ``(n, P, Q)`` for ``how="diag"``."""
    if isinstance(x1, OneHot):
        if how == "diag":
            eq = x1.idx[:, :, None] == x2.idx[:, None, :]
        else:
            eq = x1.idx[:, None, :, None] == x2.idx[None, :, None, :]
        out = eq.to(dtype)
        if x1.mask is not None:
            m1 = x1.mask[:, :, None] if how == "diag" else x1.mask[:, None, :, None]
            m2 = x2.mask[:, None, :] if how == "diag" else x2.mask[None, :, None, :]
            out = out * m1 * m2
        return out
    if how == "diag":
        return torch.bmm(x1, x2.transpose(1, 2))
    n1, p, _ = x1.shape
    n2, q, _ = x2.shape
    if p == 1 and q == 1:
        return (x1[:, 0] @ x2[:, 0].T).view(n1, n2, 1, 1)
    return torch.einsum("ipc,jqc->ijpq", x1, x2)


def _kron_gram(f1: Kron, f2: Kron, how: str, sym: bool) -> torch.Tensor:
    g1, g2 = f1.g, f2.g
    n1, k1, p, a = g1.shape
    n2, k2, q, _ = g2.shape
    gx = _x_gram(f1.x, f2.x, how, sym, g1.dtype)
    if how == "diag":
        if p == 1 and q == 1:
            return torch.bmm(g1[:, :, 0], g2[:, :, 0].transpose(1, 2)) * gx[:, :, :1]
        t = torch.einsum("ipq,ibqc->ibpc", gx, g2)
        return torch.einsum("iapc,ibpc->iab", g1, t)
    if p == 1 and q == 1:
        gx = gx[:, :, 0, 0]
        if how == "trace":
            return gram(g1.reshape(n1, -1), g2.reshape(n2, -1), sym, scale=gx)
        gg = gram(g1.reshape(n1 * k1, a), g2.reshape(n2 * k2, a), sym, k1, gx, unit2=k2)
        return gg.view(n1, k1, n2, k2)
    # positions on both sides: contract in row blocks to bound the temporaries
    per_row = n2 * p * (q + (0 if how == "trace" else k2 * a))
    rows = max(1, _TEMP_ENTRIES // max(per_row, 1))
    blocks = []
    for s in range(0, n1, rows):
        g1s, gxs = g1[s : s + rows], gx[s : s + rows]
        if how == "trace":
            v = torch.einsum("iapc,jaqc->ijpq", g1s, g2)
            blocks.append((v * gxs).sum((2, 3)))
        else:
            t = torch.einsum("ijpq,jbqc->ijpbc", gxs, g2)
            blocks.append(torch.einsum("iapc,ijpbc->iajb", g1s, t))
    return torch.cat(blocks, 0)
