"""The registry of empirical-NTK implementations: each with its cost model and computation.

``empirical_ntk(..., implementation=name)`` looks the name up here. An implementation
carries

- ``cost(ctx) -> CostEstimate``: estimated seconds, peak bytes and chunk plan for a request
  (:class:`~ntkit.empirical.cost.CostContext`); it raises ``ValueError`` with the estimate
  and the options that fit when the request cannot be done within ``max_memory`` (so the
  refusal of an explicitly requested implementation comes from the same model that
  ``auto`` ranks by);
- ``compute(ctx, est, x1, x2, names, seed)``: the kernel in the mode's internal layout;
- ``exact``: whether ``auto`` may choose it (``projected`` is an unbiased estimate, chosen
  only by name).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ntkit.empirical.assemble import assemble
from ntkit.empirical.cost import (
    CostContext,
    CostEstimate,
    jacobian_cost,
    ntvp_cost,
    structured_cost,
)
from ntkit.empirical.jacobian import JacobianFeaturizer
from ntkit.empirical.projected import check_dim, plan_projection, projected_kernel
from ntkit.empirical.structured import StructuredFeaturizer
from ntkit.empirical.vector_products import ntvp_kernel

__all__ = ["REGISTRY", "Implementation"]


@dataclass(frozen=True)
class Implementation:
    """One way to compute an empirical NTK.

    Attributes:
        name: The ``implementation=`` name.
        cost: ``cost(ctx) -> CostEstimate``; raises ``ValueError`` when it cannot fit.
        compute: ``compute(ctx, est, x1, x2, names, seed)`` -> kernel (internal layout), or
            ``{name: kernel}`` when ``names`` is a list.
        exact: Whether the result is exact (``auto`` chooses among exact ones only).
    """

    name: str
    cost: Callable[[CostContext], CostEstimate]
    compute: Callable
    exact: bool = True


def _dtype(ctx: CostContext) -> torch.dtype:
    return next(iter(ctx.prof.fm.params.values())).dtype


def _jacobian(ctx, est, x1, x2, names, seed):
    feat = JacobianFeaturizer(ctx.prof.fm)
    feat.dtype = _dtype(ctx)
    return assemble(feat, x1, x2, ctx.spec, est.plan, names)


def _structured(ctx, est, x1, x2, names, seed):
    feat = StructuredFeaturizer(ctx.prof, fuse=names is None)
    feat.dtype = _dtype(ctx)
    return assemble(feat, x1, x2, ctx.spec, est.plan, names)


def _ntvp(ctx, est, x1, x2, names, seed):
    cols, rows = est.plan
    fm = ctx.prof.fm
    if names is None:
        return ntvp_kernel(fm, x1, x2, ctx.spec, cols, rows)
    return {n: ntvp_kernel(fm, x1, x2, ctx.spec, cols, rows, params=[n]) for n in names}


def projected_cost(ctx: CostContext) -> CostEstimate:
    """Cost of projected features.

    The structured featurization once per sample, the factors' projections, then one
    ``(n1 K, dim) x (dim, n2 K)`` product.

    Raises:
        ValueError: no ``dim``, ``per_parameter``, ``dim`` out of range, or a budget that
            cannot hold one sample.
    """
    prof, spec = ctx.prof, ctx.spec
    if ctx.dim is None:
        raise ValueError("implementation='projected' needs dim=k, the number of features.")
    if ctx.per_parameter:
        raise ValueError(
            "per_parameter=True is not available with implementation='projected' (one "
            "projection covers all parameters); use an exact implementation."
        )
    dim = check_dim(ctx.dim, prof.total_params)
    k = spec.n_directions
    rows = k if spec.how in ("full", "diag") else 1
    result = math.prod(spec.result_shape(ctx.n1, ctx.n2)) * ctx.itemsize
    other = 0 if ctx.sym else ctx.n2 * rows * dim * ctx.itemsize
    plan = plan_projection(prof, spec, ctx.n1, dim, ctx.itemsize, ctx.budget, result + other)
    n_feat = ctx.n1 + (0 if ctx.sym else ctx.n2)
    fwd = max(prof.flops, 1.0)
    ad = n_feat * (fwd * math.ceil(k / plan.dirs) + 2.0 * k * fwd)
    proj = 2.0 * n_feat * k * sum(
        _proj_macs(s, dim) for s in list(prof.fused_shapes.values())
    ) + 2.0 * n_feat * k * dim * sum(prof.param_numel[nm] for nm in prof.generic)
    pairs = ctx.n1 * (ctx.n1 if spec.how == "diag" else ctx.n2)
    mm = proj + 2.0 * pairs * rows * rows * dim
    passes = math.ceil(n_feat / plan.rows) * math.ceil(k / plan.dirs)
    return CostEstimate("projected", ctx.seconds(ad, mm, 0.0, passes), plan.peak, plan)


def _proj_macs(shape: tuple, dim: int) -> float:
    """Multiply-adds per sample and direction of projecting one factor (cheaper path)."""
    if shape[0] == "dense":
        return shape[1] * dim
    _, p, a, b = shape
    return min(p * dim * (a + b + 1), p * a * b + a * b * dim)


def _projected(ctx, est, x1, x2, names, seed):
    return projected_kernel(ctx.prof, x1, x2, ctx.spec, int(ctx.dim), seed, ctx.budget)


#: name -> :class:`Implementation`; ``auto`` ranks the exact ones by their cost models.
REGISTRY: dict[str, Implementation] = {
    "jacobian": Implementation("jacobian", jacobian_cost, _jacobian),
    "ntvp": Implementation("ntvp", ntvp_cost, _ntvp),
    "structured": Implementation("structured", structured_cost, _structured),
    "projected": Implementation("projected", projected_cost, _projected, exact=False),
}
