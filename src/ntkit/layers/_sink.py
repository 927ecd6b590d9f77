"""Result sinks: where finished kernel tiles go.

A sink receives each tile's :class:`~ntkit.Kernel` block with its row and column ranges
(:meth:`MemorySink.write`) and, once all tiles are in, returns the result
(:meth:`MemorySink.result`). :class:`MemorySink` assembles the full kernel in memory; a
store sink (``ntkit.tiling``) writes tiles to disk instead. Writes of different tiles touch
disjoint parts of the result, so tiles may be written concurrently.
"""

from __future__ import annotations

import torch

from ntkit.kernel import Kernel
from ntkit.layers._planner import KernelProblem
from ntkit.layers._spatial import n_spatial, transpose_pair


class MemorySink:
    """Assemble the ``(n1, n2, ...)`` kernel in preallocated tensors.

    With ``x2 = x1`` only upper-triangle tiles arrive: each is also mirrored below the
    diagonal, and the same-batch square of a row range's first tile is symmetrized, so the
    result is exactly symmetric.
    """

    def __init__(self, problem: KernelProblem, *, into: dict | None = None):
        """Allocate the outputs, or write into ``into`` (tensors or views of a larger result).

        Args:
            problem: The prepared computation.
            into: Optional ``{"nngp", "ntk", "cov1", "cov2"}`` tensors of the result's
                shapes (``ntk``/``cov2`` may be ``None`` when not computed), and optionally
                ``"mirror_nngp"``/``"mirror_ntk"``: ``(n2, n1, ...)`` views where each block
                is also written transposed (an off-diagonal tile of a symmetric matrix).
        """
        probe, dtype, device = problem.probe, problem.dtype, problem.device
        n1, n2 = problem.n1, problem.n2
        self.problem = problem
        into = {} if into is None else into
        self._mirrors = [
            (name, into[f"mirror_{name}"])
            for name in ("nngp", "ntk")
            if into.get(f"mirror_{name}") is not None and not problem.symmetric
        ]
        if into:
            self.nngp, self.ntk = into["nngp"], into.get("ntk") if problem.want_ntk else None
            self.cov1 = into["cov1"]
            self.cov2 = None if problem.symmetric else into["cov2"]
        else:
            self.nngp = torch.empty((n1, n2, *probe.nngp.shape[2:]), dtype=dtype, device=device)
            self.ntk = torch.empty_like(self.nngp) if problem.want_ntk else None
            self.cov1 = torch.empty((n1, *probe.cov1.shape[1:]), dtype=dtype, device=device)
            self.cov2 = (
                None
                if problem.symmetric
                else torch.empty((n2, *probe.cov1.shape[1:]), dtype=dtype, device=device)
            )
        self._n_spatial = n_spatial(probe)
        self._diagonal = probe.diagonal_spatial

    def write(self, a0: int, a1: int, j0: int, j1: int, block: Kernel) -> None:
        """Store the block of rows ``a0:a1`` and columns ``j0:j1``."""
        symmetric = self.problem.symmetric
        self.nngp[a0:a1, j0:j1] = block.nngp
        if self.ntk is not None:
            self.ntk[a0:a1, j0:j1] = block.ntk
        if j0 == (a0 if symmetric else 0):
            self.cov1[a0:a1] = block.cov1
        if symmetric:
            # mirror the columns outside the same-batch square; symmetrize the square
            c0 = a1 - j0 if j0 == a0 else 0
            for src, dst in self._pairs(block):
                if c0 < j1 - j0:
                    dst[j0 + c0 : j1, a0:a1] = self._transpose(src[:, c0:])
                if j0 == a0:
                    square = dst[a0:a1, a0:a1]
                    square.copy_((square + self._transpose(square)) / 2)
        elif a0 == 0:
            self.cov2[j0:j1] = block.cov2
        for name, dst in self._mirrors:
            dst[j0:j1, a0:a1] = self._transpose(getattr(block, name))

    def _pairs(self, block: Kernel):
        yield block.nngp, self.nngp
        if self.ntk is not None:
            yield block.ntk, self.ntk

    def _transpose(self, t: torch.Tensor) -> torch.Tensor:
        return transpose_pair(t, self._n_spatial, self._diagonal)

    def result(self) -> Kernel:
        """The assembled kernel (call after every tile is written)."""
        problem = self.problem
        symmetric = problem.symmetric
        return problem.probe.replace(
            nngp=self.nngp,
            ntk=self.ntk,
            cov1=self.cov1,
            cov2=(self.cov1 if problem.explicit_x2 else None) if symmetric else self.cov2,
            x1_is_x2=symmetric,
            pair_shift=0,
            pattern1=None,
            pattern2=None,
            mask1=None,
            mask2=None,
        )
