"""Random projections of per-parameter Jacobian factors (the math of projected features).

Every parameter's per-sample Jacobian ``J`` (for one output direction, or all directions
stacked in ``trace`` mode) is projected to ``dim`` numbers by a random sign matrix that is
never formed in full: entry ``j`` of the projection is ``r_j^T G s_j`` where ``G`` is the
Jacobian viewed as a matrix (cotangent side x input side) and ``r_j``, ``s_j`` are
independent Rademacher vectors (a row-wise Kronecker, "Khatri-Rao", sketch). Since
``E[r r^T] = E[s s^T] = I``, ``E[(r^T G s)(r^T G' s)] = <G, G'>``: the features are an
unbiased estimate of the kernel for every parameter, and the parameters' independent
projections add up to an unbiased estimate of the whole kernel. For a :class:`Kron` factor
``G = sum_p g_p (x) x_p`` the projection is computed either by position,
``sum_p (r . g_p)(s . x_p)`` (cost ``P dim (A + B)``), or by forming ``G`` first
(``P A B + A B dim``), whichever is cheaper; both give the same numbers up to rounding.

Signs are drawn by a CPU generator seeded from ``(seed, parameter names, role)`` through
SHA-256, so they are the same on every call, chunk, process and device.
"""

from __future__ import annotations

import hashlib
import math

import torch

from ntkit.empirical.factors import Factor, Kron, OneHot

__all__ = ["Projector", "factor_temp_entries", "key_label", "sign_entries"]

#: Dense factors with at most this many entries per direction get a plain sign matrix.
SMALL_DENSE = 64
#: Projection columns per block when a factor is projected through its matrix form.
J_BLOCK = 512


def key_label(key) -> str:
    """The parameter name(s) a factor key stands for, as one string."""
    return ",".join(key) if isinstance(key, tuple) else str(key)


def _stream_seed(seed: int, key, role: str) -> int:
    digest = hashlib.sha256(f"ntkit|{int(seed)}|{key_label(key)}|{role}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def dense_split(d: int) -> tuple[int, int]:
    """``(d0, d1)`` with ``d0 * d1 >= d``: the matrix a large dense factor is viewed as."""
    d0 = math.isqrt(d - 1) + 1 if d > 1 else 1
    return d0, -(-d // d0)


def _kron_path(p: int, a: int, b: int, kc: int, dim: int) -> str:
    """``"position"`` or ``"matrix"``: cheaper way to project ``sum_p g_p (x) x_p``."""
    by_position = p * dim * (kc * a + b) + p * kc * dim
    by_matrix = kc * p * a * b + kc * a * b * dim
    return "position" if by_position <= by_matrix else "matrix"


def sign_entries(shape: tuple, dim: int, k_total: int, how: str) -> int:
    """Random signs stored for one factor of profile shape ``shape`` (see ``ModelProfile``)."""
    rows = k_total if how == "trace" else 1
    if shape[0] == "kron":
        _, _, a, b = shape
        return dim * (rows * a + b)
    d = shape[1]
    if d <= SMALL_DENSE:
        return dim * rows * d
    d0, d1 = dense_split(d)
    return dim * (rows * d0 + d1)


def factor_temp_entries(shape: tuple, dim: int, kc: int, how: str) -> int:
    """Per-sample temporary entries of projecting one factor for ``kc`` directions."""
    if shape[0] == "kron":
        _, p, a, b = shape
        if _kron_path(p, a, b, kc, dim) == "position":
            return p * dim * (1 + (kc if how == "full" else 1)) + p * kc * a
        return kc * a * b + kc * a * min(dim, J_BLOCK)
    d = shape[1]
    if d <= SMALL_DENSE:
        return kc * d
    d0, d1 = dense_split(d)
    return kc * d0 * d1 + kc * d0 * min(dim, J_BLOCK)


class Projector:
    """Projects ``{key: factor}`` of a chunk of inputs to ``dim`` features.

    Args:
        dim: Number of features ``k``.
        seed: Seed of the random signs.
        how: ``"trace"`` (all directions projected together: features ``(n, dim)``) or
            ``"full"`` (one shared projection per direction: ``(n, K, dim)``).
        n_directions: ``K``, the mode's number of output directions.
        dtype: Floating dtype of the features.
        device: Device of the features.
    """

    def __init__(
        self, dim: int, seed: int, how: str, n_directions: int, dtype: torch.dtype, device
    ):
        self.dim, self.seed, self.how, self.k_total = dim, seed, how, n_directions
        self.dtype, self.device = dtype, torch.device(device)
        self._signs: dict[tuple, torch.Tensor] = {}

    def signs(self, key, role: str, m: int) -> torch.Tensor:
        """``(dim, m)`` Rademacher signs for ``(key, role)``, in the features' dtype."""
        cache_key = (key_label(key), role, m)
        s = self._signs.get(cache_key)
        if s is None:
            gen = torch.Generator().manual_seed(_stream_seed(self.seed, key, f"{role}/{m}"))
            s = torch.randint(0, 2, (self.dim, m), generator=gen, dtype=torch.int8)
            s = (s * 2 - 1).to(self.device)
            self._signs[cache_key] = s
        return s.to(self.dtype)

    def _side(self, key, role: str, width: int, d0: int, kc: int) -> torch.Tensor:
        """Signs of the cotangent side for directions ``d0 : d0 + kc`` (``(dim, kc*w)``)."""
        if self.how == "full":
            return self.signs(key, role, width)
        s = self.signs(key, role, self.k_total * width)
        return s[:, d0 * width : (d0 + kc) * width]

    def __call__(self, feats: dict, d0: int = 0) -> torch.Tensor:
        """Projected features of one chunk, summed over its factors, unscaled.

        Args:
            feats: ``key -> factor`` for ``c`` samples and directions ``d0 : d0 + kc``.
            d0: Index of the chunk's first output direction.

        Returns:
            ``(c, dim)`` (trace: this direction block's share) or ``(c, kc, dim)`` (full),
            times ``sqrt(dim)`` (the caller divides).
        """
        out = None
        for key, f in feats.items():
            phi = self.project(key, f, d0)
            out = phi if out is None else out.add_(phi)
        return out

    def project(self, key, f: Factor, d0: int) -> torch.Tensor:
        """One factor's unscaled projection (see :meth:`__call__`)."""
        if isinstance(f, Kron):
            return self._kron(key, f, d0)
        j = f.j  # (c, kc, D)
        c, kc, d = j.shape
        if d <= SMALL_DENSE:
            r = self._side(key, "dense", d, d0, kc)
            if self.how == "full":
                return j @ r.T
            return j.reshape(c, kc * d) @ r.T
        a, b = dense_split(d)
        if a * b != d:
            j = torch.nn.functional.pad(j, (0, a * b - d))
        return self._matrix(key, j.reshape(c, kc, a, b), d0)

    def _kron(self, key, f: Kron, d0: int) -> torch.Tensor:
        g = f.g  # (c, kc, P, A)
        c, kc, p, a = g.shape
        b = f.width_in
        if isinstance(f.x, OneHot) or _kron_path(p, a, b, kc, self.dim) == "position":
            rx = self.signs(key, "in", b)
            if isinstance(f.x, OneHot):
                v = rx.T[f.x.idx]  # (c, P, dim)
                if f.x.mask is not None:
                    v = v * f.x.mask[..., None]
            else:
                v = f.x @ rx.T  # (c, P, dim)
            rg = self._side(key, "out", a, d0, kc)
            if self.how == "full":
                u = g @ rg.T  # (c, kc, P, dim)
                return torch.einsum("ckpj,cpj->ckj", u, v)
            u = g.permute(0, 2, 1, 3).reshape(c, p, kc * a) @ rg.T  # (c, P, dim)
            return torch.einsum("cpj,cpj->cj", u, v)
        m = torch.einsum("ckpa,cpb->ckab", g, f.x)
        return self._matrix(key, m, d0)

    def _matrix(self, key, m: torch.Tensor, d0: int) -> torch.Tensor:
        """``r_j^T M s_j`` for ``m: (c, kc, A, B)``, in blocks of projection columns."""
        c, kc, a, b = m.shape
        rx = self.signs(key, "in", b)
        rg = self._side(key, "out", a, d0, kc)
        if self.how == "full":
            out = torch.empty(c, kc, self.dim, dtype=m.dtype, device=m.device)
        else:
            out = torch.empty(c, self.dim, dtype=m.dtype, device=m.device)
            m = m.reshape(c, kc * a, b)
        for j0 in range(0, self.dim, J_BLOCK):
            js = slice(j0, min(j0 + J_BLOCK, self.dim))
            t = m @ rx[js].T  # (c, kc, A, jb) or (c, kc*A, jb)
            if self.how == "full":
                out[:, :, js] = torch.einsum("ckaj,ja->ckj", t, rg[js])
            else:
                out[:, js] = torch.einsum("cmj,jm->cj", t, rg[js])
        return out
