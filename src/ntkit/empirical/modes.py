"""Kernel modes as output directions plus a contraction.

Every mode is ``Theta_C(x, x') = (C J(x)) (C J(x'))^T`` for a matrix of output directions
``C: (K, O)``, followed by one of three contractions:

=============  =================================  ===========  ==================
mode           directions ``C``                   contraction  result
=============  =================================  ===========  ==================
``full``       ``I_O``                            full         ``(n1, n2, O, O)``
``trace``      ``I_O``                            trace        ``(n1, n2)``
``diagonal``   ``I_O``                            diag         ``(n, O, O)``
``sum_logits`` ``ones(1, O) / sqrt(O)``           trace        ``(n1, n2)``
``logit``      ``e_i^T``                          trace        ``(n1, n2)``
=============  =================================  ===========  ==================

``sum_logits`` is the pseudo-NTK ``(1/O) grad(sum_a f_a(x)) . grad(sum_b f_b(x'))``
(Mohamadi, Bae & Sutherland 2023): one direction instead of ``O``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = ["MODES", "ModeSpec", "mode_spec"]

MODES = ("full", "trace", "diagonal", "sum_logits", "logit")


@dataclass(frozen=True)
class ModeSpec:
    """A parsed mode.

    Attributes:
        mode: The mode name.
        how: ``"full"``, ``"trace"`` or ``"diag"``.
        n_out: ``O``.
        logit: The output index for ``mode="logit"``.
    """

    mode: str
    how: str
    n_out: int
    logit: int | None = None

    @property
    def n_directions(self) -> int:
        return 1 if self.mode in ("sum_logits", "logit") else self.n_out

    def directions(self, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """``C: (K, O)``."""
        o = self.n_out
        if self.mode == "sum_logits":
            return torch.full((1, o), 1.0 / math.sqrt(o), dtype=dtype, device=device)
        if self.mode == "logit":
            c = torch.zeros(1, o, dtype=dtype, device=device)
            c[0, self.logit] = 1.0
            return c
        return torch.eye(o, dtype=dtype, device=device)

    def result_shape(self, n1: int, n2: int) -> tuple[int, ...]:
        """Internal result shape: ``(n1, K, n2, K)``, ``(n1, n2)`` or ``(n1, K, K)``."""
        k = self.n_directions
        if self.how == "full":
            return (n1, k, n2, k)
        if self.how == "trace":
            return (n1, n2)
        return (n1, k, k)

    def finalize(self, t: torch.Tensor) -> torch.Tensor:
        """Internal layout -> public layout.

        Full: ``(n1, n2, O, O)``, a permuted view of ``(n1, O, n2, O)`` storage (so
        ``t.permute(0, 2, 1, 3).reshape(n1 * O, n2 * O)`` costs nothing).
        """
        if self.how == "full":
            return t.permute(0, 2, 1, 3)
        return t


def mode_spec(mode: str, logit: int | None, n_out: int) -> ModeSpec:
    """Validate ``mode``/``logit`` for a model with ``n_out`` outputs per sample.

    Raises:
        ValueError: unknown mode, ``logit`` missing/out of range, or given without
            ``mode="logit"``.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}; got {mode!r}.")
    if mode == "logit":
        if logit is None or isinstance(logit, bool) or int(logit) != logit:
            raise ValueError(f"mode='logit' needs logit=i, an integer output index; got {logit!r}.")
        if not -n_out <= int(logit) < n_out:
            raise ValueError(
                f"logit={logit} is out of range for a model with {n_out} outputs per sample."
            )
        return ModeSpec(mode, "trace", n_out, int(logit) % n_out)
    if logit is not None:
        raise ValueError(f"logit={logit!r} is only used with mode='logit'; got mode={mode!r}.")
    how = {"full": "full", "diagonal": "diag"}.get(mode, "trace")
    return ModeSpec(mode, how, n_out)
