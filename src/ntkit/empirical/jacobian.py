"""Empirical NTK by Jacobian contraction: the exact, straightforward implementation.

``Theta(x, x')_ab = sum_p J_ap(x) J_bp(x')`` with per-sample Jacobians of the projected
outputs ``C f`` from ``torch.func.vmap(torch.func.jacrev(...))``.
"""

from __future__ import annotations

import torch
from torch.func import jacrev, vmap

from ntkit.empirical.factors import Dense
from ntkit.empirical.functional import FunctionalModel

__all__ = ["JacobianFeaturizer", "per_sample_jacobians"]


def per_sample_jacobians(
    model: FunctionalModel, x: torch.Tensor, directions: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    """Jacobian of every (projected) output in every parameter, per sample.

    Args:
        model: The functional model.
        x: Inputs ``(n, *in_shape)``.
        directions: ``C: (K, O)`` output directions, or ``None`` for all ``O`` outputs.

    Returns:
        name -> ``(n, K, P_name)`` with ``P_name`` the flattened parameter size.
    """
    if directions is not None and directions.shape[0] == directions.shape[1]:
        eye = torch.eye(directions.shape[0], dtype=directions.dtype, device=directions.device)
        if torch.equal(directions, eye):
            directions = None

    def single(p, xi):
        out = model.fn(p, xi.unsqueeze(0)).reshape(-1)
        return out if directions is None else directions @ out

    jac = vmap(jacrev(single), in_dims=(None, 0))(model.params, x)
    return {name: j.reshape(j.shape[0], j.shape[1], -1) for name, j in jac.items()}


class JacobianFeaturizer:
    """Factors of the Jacobian implementation: one :class:`Dense` per parameter."""

    def __init__(self, model: FunctionalModel):
        self.model = model

    def __call__(self, x: torch.Tensor, directions: torch.Tensor) -> dict[str, Dense]:
        """``name -> Dense((c, K, P_name))`` for ``x: (c, ...)`` and ``directions: (K, O)``."""
        return {n: Dense(j) for n, j in per_sample_jacobians(self.model, x, directions).items()}
