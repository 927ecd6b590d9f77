"""The immutable result of an infinite-width kernel computation."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch

__all__ = ["Kernel"]


@dataclass(frozen=True, eq=False)
class Kernel:
    """NNGP and NTK of a batch pair, with what layers need to keep going.

    Layers are pure functions ``Kernel -> Kernel``; use :meth:`replace` to derive a new one.
    Kernels describe one output channel: with ``O`` outputs the full covariance is
    ``nngp ⊗ I_O`` (likewise for ``ntk``).

    Attributes:
        nngp: NNGP covariance between ``x1`` and ``x2``. Shape ``(n1, n2)`` for vector
            features; ``(n1, n2, H, H', W, W')`` (full spatial covariance) or
            ``(n1, n2, H, W)`` (``diagonal_spatial``) for images, one spatial pair per axis.
        ntk: NTK, same shape as ``nngp``; ``None`` when the NTK is not computed.
        cov1: Variances of ``x1`` (the batch diagonal of the ``x1, x1`` NNGP): ``(n1,)``,
            or ``(n1, H, H, W, W)`` / ``(n1, H, W)`` with spatial axes.
        cov2: Variances of ``x2``, shaped as ``cov1``; ``None`` when ``x2`` is ``x1``.
        shape: Per-sample shape of the finite network's activations at this point,
            ``(features,)`` or ``(channels, *spatial)``; standard parameterization and
            channel concatenation read widths from it.
        is_gaussian: Whether the pre-activations are (jointly) Gaussian, which the
            closed-form activation rules require.
        independent: Whether the value is zero-mean and independent of every sibling
            branch since the last ``FanOut`` (true right after a weight layer). Sums and
            concatenations need all but one branch independent to drop cross-covariances.
        decoupled: Whether the value depends on weights of its own since the last
            ``FanOut`` (so it is independent of every sibling), whatever its mean: stays
            true through activations. Products need all but one branch decoupled
            (``E[X Y X' Y'] = E[X X'] E[Y Y']`` for independent branches).
        diagonal_spatial: Whether only same-location covariances are kept.
        x1_is_x2: Whether ``x2`` is the same batch as ``x1`` (``nngp`` is symmetric).
        pair_shift: Inside a tile of an ``x1_is_x2`` computation, entry ``(i, j)`` pairs a
            sample with itself exactly when ``j - i == pair_shift`` (layers such as
            Dropout act on those entries only).
        pattern1: Inside a tile of graph inputs (:class:`ntkit.layers.Graphs`), the dense
            adjacency ``(n1, N, N)`` of the rows' graphs; ``None`` otherwise.
        pattern2: Likewise for the columns' graphs, ``(n2, N, N)``.
        mask1: Inside a tile of masked inputs (:class:`ntkit.layers.Masked`), the rows'
            boolean masks ``(n1, *spatial)`` of real positions; ``None`` otherwise.
        mask2: Likewise for the columns, ``(n2, *spatial)``.
    """

    nngp: torch.Tensor
    ntk: torch.Tensor | None
    cov1: torch.Tensor
    cov2: torch.Tensor | None
    shape: tuple[int, ...]
    is_gaussian: bool = True
    independent: bool = False
    decoupled: bool = False
    diagonal_spatial: bool = False
    x1_is_x2: bool = False
    pair_shift: int = 0
    pattern1: torch.Tensor | None = None
    pattern2: torch.Tensor | None = None
    mask1: torch.Tensor | None = None
    mask2: torch.Tensor | None = None

    def get_ntk(self) -> torch.Tensor:
        """The NTK as a tensor (``ntk`` typed without ``None``), for type-checked code.

        Raises:
            ValueError: the NTK was not computed (``net.kernel(..., get="nngp")``).
        """
        if self.ntk is None:
            raise ValueError(
                "this Kernel has no NTK: it was computed with get='nngp'; call "
                "net.kernel(x1, x2) or net.kernel(x1, x2, get=('nngp', 'ntk'))."
            )
        return self.ntk

    def replace(self, **changes) -> Kernel:
        """Return a copy with the given fields replaced."""
        return dataclasses.replace(self, **changes)

    @property
    def entries_per_pair(self) -> int:
        """Entries of ``nngp`` per ``(x1, x2)`` pair (the product of its spatial axes)."""
        return math.prod(self.nngp.shape[2:])

    @property
    def cov2_or_cov1(self) -> torch.Tensor:
        """Variances of ``x2``: ``cov2``, or ``cov1`` when ``x2`` is ``x1``."""
        return self.cov1 if self.cov2 is None else self.cov2

    def __repr__(self) -> str:
        def desc(t):
            return "None" if t is None else f"tensor{tuple(t.shape)}"

        return (
            f"Kernel(nngp={desc(self.nngp)}, ntk={desc(self.ntk)}, shape={self.shape}, "
            f"is_gaussian={self.is_gaussian}, dtype={self.nngp.dtype}, device={self.nngp.device})"
        )
