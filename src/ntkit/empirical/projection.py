"""Sparse random projections of per-parameter Jacobian factors (count sketch, TensorSketch).

Every parameter's per-sample Jacobian ``J`` (for one output direction, or all directions
stacked in ``trace`` mode) is mapped to ``dim`` numbers by a *count sketch*: entry ``i`` of
``J`` is added, with a random sign ``s(i)``, to bucket ``h(i)`` (Charikar, Chen &
Farach-Colton 2002). The sketch is linear, ``CS(u) = S u`` for a sparse ``dim x D`` matrix
``S`` with one random sign per column, and ``E[S^T S] = I``, so
``E[CS(u) . CS(u')] = u . u'`` (unbiased) with variance
``(|u|^2 |u'|^2 + (u . u')^2 - 2 sum_i u_i^2 u'_i^2) / dim`` -- that of a dense Gaussian
projection, minus a term.

For a :class:`Kron` factor ``J = sum_p g_p (x) x_p`` the Jacobian is never formed: with the
hash ``H(a, b) = h_g(a) + h_x(b) mod dim`` and sign ``s_g(a) s_x(b)``, the count sketch of
``g_p (x) x_p`` is the circular convolution of the count sketches of ``g_p`` and ``x_p``
(TensorSketch, Pham & Pagh 2013), so
``CS(J) = irfft(sum_p rfft(CS_g(g_p)) * rfft(CS_x(x_p)))``: cost ``P (K A + B)`` for the
sketches plus ``P`` FFTs of length ``dim``, instead of ``K A B`` per position. It is still a
count sketch (unbiased); its variance is larger for rank-one factors (a dense layer on a
single vector) and about the same for sums over many positions.

Hashes and signs are drawn by a CPU generator seeded from ``(seed, parameter names, role)``
through SHA-256, so they are the same on every call, chunk, process and device.
"""

from __future__ import annotations

import hashlib

import torch

from ntkit.empirical.factors import Factor, Kron, OneHot

__all__ = ["Projector", "factor_temp_entries", "hash_entries", "key_label"]


def key_label(key) -> str:
    """The parameter name(s) a factor key stands for, as one string."""
    return ",".join(key) if isinstance(key, tuple) else str(key)


def _stream_seed(seed: int, key, role: str) -> int:
    digest = hashlib.sha256(f"ntkit|{int(seed)}|{key_label(key)}|{role}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def hash_entries(shape: tuple, k_total: int, how: str) -> int:
    """Hashes (and signs) stored for one factor of profile shape ``shape``."""
    rows = k_total if how == "trace" else 1
    if shape[0] == "kron":
        _, _, a, b = shape
        return rows * a + b
    return rows * shape[1]


def factor_temp_entries(shape: tuple, dim: int, kc: int, how: str) -> int:
    """Per-sample temporary entries of sketching one factor for ``kc`` directions."""
    if shape[0] == "kron":
        _, p, a, _ = shape
        sides = (kc if how == "full" else 1) + 1
        # count sketches, their spectra (complex: 2 reals per bin) and the product
        return p * kc * a + 3 * sides * p * (dim + 2)
    return kc * shape[1] + 2 * kc * dim


class Projector:
    """Count-sketches ``{key: factor}`` of a chunk of inputs to ``dim`` features.

    Args:
        dim: Number of features ``k``.
        seed: Seed of the hashes and signs.
        how: ``"trace"`` (all directions sketched together: features ``(n, dim)``) or
            ``"full"`` (one shared sketch per direction: ``(n, K, dim)``).
        n_directions: ``K``, the mode's number of output directions.
        dtype: Floating dtype of the features.
        device: Device of the features.
    """

    def __init__(
        self, dim: int, seed: int, how: str, n_directions: int, dtype: torch.dtype, device
    ):
        self.dim, self.seed, self.how, self.k_total = dim, seed, how, n_directions
        self.dtype, self.device = dtype, torch.device(device)
        self._hashes: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def hashes(self, key, role: str, m: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Buckets ``(m,)`` in ``[0, dim)`` and signs ``(m,)`` (+-1) for ``(key, role)``."""
        cache_key = (key_label(key), role, m)
        got = self._hashes.get(cache_key)
        if got is None:
            gen = torch.Generator().manual_seed(_stream_seed(self.seed, key, f"{role}/{m}"))
            h = torch.randint(0, self.dim, (m,), generator=gen)
            s = torch.randint(0, 2, (m,), generator=gen).to(self.dtype) * 2 - 1
            got = (h.to(self.device), s.to(self.device))
            self._hashes[cache_key] = got
        return got

    def _side(self, key, role: str, width: int, d0: int, kc: int):
        """Hashes of the cotangent side for directions ``d0 : d0 + kc``."""
        if self.how == "full":
            return self.hashes(key, role, width)
        h, s = self.hashes(key, role, self.k_total * width)
        return h[d0 * width : (d0 + kc) * width], s[d0 * width : (d0 + kc) * width]

    def _sketch(self, v: torch.Tensor, h: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """Count sketch along the last axis: ``(..., m) -> (..., dim)``."""
        out = torch.zeros((*v.shape[:-1], self.dim), dtype=v.dtype, device=v.device)
        return out.index_add_(v.ndim - 1, h, v * s)

    def __call__(self, feats: dict, d0: int = 0) -> torch.Tensor:
        """Sketched features of one chunk, summed over its factors.

        Args:
            feats: ``key -> factor`` for ``c`` samples and directions ``d0 : d0 + kc``.
            d0: Index of the chunk's first output direction.

        Returns:
            ``(c, dim)`` (trace: this direction block's share) or ``(c, kc, dim)`` (full).
        """
        out = None
        for key, f in feats.items():
            phi = self.project(key, f, d0)
            out = phi if out is None else out.add_(phi)
        return out

    def project(self, key, f: Factor, d0: int) -> torch.Tensor:
        """One factor's sketch (see :meth:`__call__`)."""
        if isinstance(f, Kron):
            return self._kron(key, f, d0)
        j = f.j  # (c, kc, D)
        c, kc, d = j.shape
        h, s = self._side(key, "dense", d, d0, kc)
        if self.how == "full":
            return self._sketch(j, h, s)
        return self._sketch(j.reshape(c, kc * d), h, s)

    def _kron(self, key, f: Kron, d0: int) -> torch.Tensor:
        g = f.g  # (c, kc, P, A)
        c, kc, p, a = g.shape
        hx, sx = self.hashes(key, "in", f.width_in)
        if isinstance(f.x, OneHot):
            vals = sx[f.x.idx]
            if f.x.mask is not None:
                vals = vals * f.x.mask
            cs_x = torch.zeros((c, p, self.dim), dtype=g.dtype, device=g.device)
            cs_x.scatter_(2, hx[f.x.idx].unsqueeze(-1), vals.unsqueeze(-1).to(g.dtype))
        else:
            cs_x = self._sketch(f.x, hx, sx)  # (c, P, dim)
        hg, sg = self._side(key, "out", a, d0, kc)
        # FFTs run in float32 at least (no half-precision FFT on the CPU)
        fft_dtype = torch.promote_types(g.dtype, torch.float32)
        fx = torch.fft.rfft(cs_x.to(fft_dtype), dim=-1)
        del cs_x
        if self.how == "full":
            fg = torch.fft.rfft(self._sketch(g, hg, sg).to(fft_dtype), dim=-1)  # (c, kc, P, F)
            out = torch.fft.irfft((fg * fx[:, None]).sum(2), n=self.dim, dim=-1)
        else:
            gp = g.permute(0, 2, 1, 3).reshape(c, p, kc * a)
            fg = torch.fft.rfft(self._sketch(gp, hg, sg).to(fft_dtype), dim=-1)  # (c, P, F)
            out = torch.fft.irfft((fg * fx).sum(1), n=self.dim, dim=-1)
        return out.to(g.dtype)
