"""Empirical NTK by Jacobian contraction: the exact reference implementation.

``Theta(x, x')_ab = sum_p J_ap(x) J_bp(x')`` with per-sample Jacobians from
``torch.func.vmap(torch.func.jacrev(...))``.
"""

from __future__ import annotations

import torch
from torch.func import jacrev, vmap

from ntkit.empirical.functional import FunctionalModel


def per_sample_jacobians(model: FunctionalModel, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Jacobian of every output in every parameter, per sample.

    Args:
        model: The functional model.
        x: Inputs ``(n, *in_shape)``.

    Returns:
        name -> ``(n, O, P_name)`` with ``O`` the flattened output size and ``P_name`` the
        flattened parameter size.
    """

    def single(p, xi):
        return model.fn(p, xi.unsqueeze(0)).reshape(-1)

    jac = vmap(jacrev(single), in_dims=(None, 0))(model.params, x)
    return {name: j.reshape(j.shape[0], j.shape[1], -1) for name, j in jac.items()}


def jacobian_ntk(
    model: FunctionalModel, x1: torch.Tensor, x2: torch.Tensor | None, mode: str
) -> torch.Tensor:
    """Contract per-sample Jacobians into the NTK.

    Args:
        model: The functional model.
        x1: ``(n1, *in_shape)``.
        x2: ``(n2, *in_shape)`` or ``None`` for ``x1``.
        mode: ``"full"`` -> ``(n1, n2, O, O)``; ``"trace"`` -> ``(n1, n2)`` (sum over a of
            ``Theta_aa``).

    Returns:
        The kernel tensor.
    """
    j1 = per_sample_jacobians(model, x1)
    j2 = j1 if x2 is None else per_sample_jacobians(model, x2)
    out = None
    for name, a in j1.items():
        b = j2[name]
        term = (
            torch.einsum("iap,jbp->ijab", a, b)
            if mode == "full"
            else torch.einsum("iap,jap->ij", a, b)
        )
        out = term if out is None else out + term
    return out
