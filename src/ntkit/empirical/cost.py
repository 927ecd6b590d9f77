"""Cost model that picks the implementation for ``implementation="auto"``.

Time and memory of the three implementations, following the table of Novak,
Sohl-Dickstein & Schoenholz 2022 ("Fast Finite Width Neural Tangent Kernel", Table 1),
with ``N`` samples, ``O`` (here ``K``) output directions, ``P`` parameters and ``[FP]`` the
cost of one sample's forward pass, measured once with ``torch.utils.flop_counter``:

- Jacobian contraction: ``N K [FP]`` to get per-sample Jacobians, ``N^2 K^2 P`` to contract
  them (``N^2 K P`` traced); memory ``N K P``.
- NTK-vector products: ``N^2 K [FP]``; memory one parameter vector and one batch of
  activations per column.
- Structured derivatives: ``N K [FP]`` for the cotangents (no weight gradients), then per
  layer the cheaper of an input-Gram / cotangent-Gram contraction and a materialised
  Jacobian (see :func:`ntkit.empirical.factors.kron_strategy`); the generic fallback
  parameters cost what the Jacobian implementation costs for them.

FLOPs are turned into seconds with per-device throughputs for dense matrix products and
for vectorised automatic differentiation, plus a per-pass overhead; the constants only need
to rank the implementations, and were set from ``benchmarks/empirical_ntk.py``. Plans that
do not fit in ``max_memory`` are skipped, and chunking's recomputation is charged.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from ntkit.empirical.assemble import ChunkPlan, plan_chunks
from ntkit.empirical.factors import kron_strategy, sym_bounds
from ntkit.empirical.modes import ModeSpec
from ntkit.empirical.profile import ModelProfile
from ntkit.empirical.structured import feature_bytes
from ntkit.empirical.vector_products import ntvp_plan

__all__ = [
    "IMPLEMENTATIONS",
    "CostContext",
    "CostEstimate",
    "choose",
    "estimate",
    "jacobian_cost",
    "ntvp_cost",
    "structured_cost",
]

#: The exact implementations (``auto`` chooses among them); see ``implementations.REGISTRY``.
IMPLEMENTATIONS = ("jacobian", "ntvp", "structured")

#: Throughputs per device: FLOP/s of matrix products (contractions), FLOP/s of vectorised
#: forward/backward passes, bytes/s of the data movement that materialises per-sample
#: Jacobians or input patches, and seconds of overhead per pass.
_THROUGHPUT = {
    "cpu": {"matmul": 8e10, "autodiff": 4e10, "bytes": 1e9, "pass": 2e-3},
    "cuda": {"matmul": 2e13, "autodiff": 5e12, "bytes": 2e11, "pass": 3e-4},
}


#: Cost of one Jacobian-vector product vectorised over kernel columns, in forward passes.
_JVP = 5.0


@dataclass(frozen=True)
class CostEstimate:
    """Estimated seconds, peak bytes and chunk plan of one implementation."""

    implementation: str
    seconds: float
    peak_bytes: float
    plan: object


def _sym(rows: int, d: int, sym: bool, unit: int = 1) -> float:
    """Share of a Gram matrix's FLOPs computed when it is symmetric (see ``factors.gram``)."""
    bounds = sym_bounds(rows, unit) if sym and d >= 128 else None
    if bounds is None:
        return 1.0
    nb = len(bounds) - 1
    return (nb + 1) / (2 * nb)


def _autodiff_flops(plan, k: int, fwd: float) -> float:
    """One forward per featurized sample and a backward (about 2 forwards) per direction."""
    return plan.featurized / k * fwd + plan.featurized * 2.0 * fwd


def _contract_flops(spec: ModeSpec, n1: int, n2: int, sym: bool, k: int, d: int) -> float:
    """FLOPs of contracting per-sample Jacobians of size ``d``."""
    if spec.how == "diag":
        return 2.0 * n1 * k * k * d
    if spec.how == "trace":
        return 2.0 * n1 * n2 * k * d * _sym(n1, k * d, sym)
    return 2.0 * n1 * n2 * k * k * d * _sym(n1 * k, d, sym, unit=k)


def _structured_costs(
    prof: ModelProfile, spec: ModeSpec, n1: int, n2: int, sym: bool, k: int, fused: bool
) -> tuple[float, float]:
    """``(FLOPs, bytes moved)`` of building and contracting the structured factors."""
    flops = moved = 0.0
    n_feat = n1 + (0 if sym or spec.how == "diag" else n2)
    shapes = prof.fused_shapes if fused else prof.factor_shapes
    for s in shapes.values():
        if s[0] == "dense":
            flops += _contract_flops(spec, n1, n2, sym, k, s[1])
            continue
        _, p, a, b = s
        strategy, macs = kron_strategy(n1, n2, k, p, p, a, b, spec.how)
        unit = k if spec.how == "full" else 1
        share = _sym(n1 * unit, a if spec.how == "full" else k * a, sym, unit) if p == 1 else 1.0
        flops += 2.0 * macs * share
        if p > 1:  # inputs gathered per position (e.g. convolution patches)
            moved += n_feat * p * b
    return flops, moved


@dataclass(frozen=True)
class CostContext:
    """What a cost model sees of one request.

    Attributes:
        prof: The model's profile (one-sample forward pass).
        spec: The mode.
        n1: Samples of ``x1``.
        n2: Samples of ``x2`` (``n1`` when ``sym``).
        sym: ``x2 is None``.
        itemsize: Bytes per entry.
        budget: ``max_memory``.
        device_type: ``"cpu"`` or ``"cuda"`` (others use the CUDA constants).
        per_parameter: Whether one kernel per parameter is returned.
        dim: Projected features (``implementation="projected"`` only).
    """

    prof: ModelProfile
    spec: ModeSpec
    n1: int
    n2: int
    sym: bool
    itemsize: int
    budget: float
    device_type: str
    per_parameter: bool = False
    dim: int | None = None

    @property
    def rate(self) -> dict:
        return _THROUGHPUT["cpu" if self.device_type == "cpu" else "cuda"]

    @property
    def n_results(self) -> int:
        return len(self.prof.param_numel) if self.per_parameter else 1

    def seconds(self, ad_flops, mm_flops, moved_entries, passes) -> float:
        """Seconds of autodiff FLOPs, matrix-product FLOPs, moved entries and passes."""
        rate = self.rate
        return (
            ad_flops / rate["autodiff"]
            + mm_flops / rate["matmul"]
            + moved_entries * self.itemsize / rate["bytes"]
            + passes * rate["pass"]
        )


def jacobian_cost(ctx: CostContext) -> CostEstimate:
    """Cost of Jacobian contraction.

    Per-sample Jacobians (forward + ``K`` backward passes with weight gradients), written
    out, then contracted.

    Raises:
        ValueError: one sample and one direction do not fit ``ctx.budget``.
    """
    prof, spec, k = ctx.prof, ctx.spec, ctx.spec.n_directions
    total_p = prof.total_params
    plan = plan_chunks(
        spec,
        ctx.n1,
        ctx.n2,
        ctx.sym,
        prof.act_bytes,
        total_p * ctx.itemsize + 2 * prof.act_bytes,
        ctx.itemsize,
        ctx.budget,
        ctx.n_results,
        "this kernel with implementation='jacobian'",
    )
    t = ctx.seconds(
        _autodiff_flops(plan, k, max(prof.flops, 1.0)),
        _contract_flops(spec, ctx.n1, ctx.n2, ctx.sym, k, total_p),
        plan.featurized * total_p,
        _passes(plan),
    )
    return CostEstimate("jacobian", t, plan.peak, plan)


def structured_cost(ctx: CostContext) -> CostEstimate:
    """Cost of the structured rules.

    Forward + ``K`` backward passes for the cotangents (no weight gradients), the generic
    parameters' Jacobians, then per-layer contractions.

    Raises:
        ValueError: one sample and one direction do not fit ``ctx.budget``.
    """
    prof, spec, k = ctx.prof, ctx.spec, ctx.spec.n_directions
    n1, n2, sym = ctx.n1, ctx.n2, ctx.sym
    gen_p = sum(prof.param_numel[nm] for nm in prof.generic)
    fixed, per_dir = feature_bytes(prof, k, ctx.itemsize)
    plan = plan_chunks(
        spec,
        n1,
        n2,
        sym,
        fixed,
        per_dir + prof.act_bytes,
        ctx.itemsize,
        ctx.budget,
        ctx.n_results,
    )
    # measured: the probes' backward costs about as much as one with weight gradients
    ad = (2 if prof.generic else 1) * _autodiff_flops(plan, k, max(prof.flops, 1.0))
    mm, moved = _structured_costs(prof, spec, n1, n2, sym, k, not ctx.per_parameter)
    mm += sum(_contract_flops(spec, n1, n2, sym, k, prof.param_numel[nm]) for nm in prof.generic)
    recompute = plan.featurized / (k * (n1 + (0 if sym else n2)))
    t = ctx.seconds(ad, mm, moved * recompute + plan.featurized * gen_p, _passes(plan))
    return CostEstimate("structured", t, plan.peak, plan)


def ntvp_cost(ctx: CostContext) -> CostEstimate:
    """Cost of NTK-vector products.

    Per-sample Jacobians of ``x2`` as tangents, then one Jacobian-vector product of the
    ``x1`` batch per kernel column.

    Raises:
        ValueError: one column does not fit ``ctx.budget``.
    """
    prof, spec, k = ctx.prof, ctx.spec, ctx.spec.n_directions
    n1, n2 = ctx.n1, ctx.n2
    fwd = max(prof.flops, 1.0)
    cols, rows, peak = ntvp_plan(
        spec, n1, n2, prof.total_params, prof.act_bytes, ctx.itemsize, ctx.budget
    )
    if spec.how == "diag":
        cols_total, jvp = n1 * k, _JVP * fwd * n1 * k
    else:
        cols_total, jvp = n2 * k, _JVP * fwd * n1 * n2 * k
    n_tan = n1 if spec.how == "diag" else n2
    n_pass = -(-cols_total // cols) * (1 if spec.how == "diag" else -(-n1 // rows))
    t = ctx.n_results * ctx.seconds(
        n_tan * fwd + n_tan * k * 2.0 * fwd + jvp, 0.0, n_tan * k * prof.total_params, n_pass
    )
    return CostEstimate("ntvp", t, peak, (cols, rows))


def estimate(
    prof: ModelProfile,
    spec: ModeSpec,
    n1: int,
    n2: int,
    sym: bool,
    itemsize: int,
    budget: float,
    device_type: str,
    per_parameter: bool = False,
) -> dict[str, CostEstimate]:
    """Cost of each exact implementation of the registry that fits in ``budget``.

    Args:
        prof: The model's profile (one-sample forward pass).
        spec: The mode.
        n1: Samples of ``x1``.
        n2: Samples of ``x2`` (``n1`` when ``sym``).
        sym: ``x2 is None``.
        itemsize: Bytes per entry.
        budget: ``max_memory``.
        device_type: ``"cpu"`` or ``"cuda"`` (others use the CUDA constants).
        per_parameter: Whether one kernel per parameter is returned.

    Returns:
        ``implementation -> CostEstimate`` (implementations that cannot fit are absent; the
        dict is empty when none fits).
    """
    ctx = CostContext(prof, spec, n1, n2, sym, itemsize, budget, device_type, per_parameter)
    return estimate_in(ctx)


def estimate_in(ctx: CostContext) -> dict[str, CostEstimate]:
    """:func:`estimate` for an already built :class:`CostContext`."""
    from ntkit.empirical.implementations import REGISTRY

    out: dict[str, CostEstimate] = {}
    for name, impl in REGISTRY.items():
        if not impl.exact:
            continue
        with contextlib.suppress(ValueError):
            out[name] = impl.cost(ctx)
    return out


def _passes(plan: ChunkPlan) -> float:
    return max(1.0, plan.featurized / max(plan.rows * plan.dirs, 1))


def choose(estimates: dict[str, CostEstimate]) -> str:
    """The implementation with the smallest estimated time (ties: structured first)."""
    order = {"structured": 0, "jacobian": 1, "ntvp": 2}
    return min(
        estimates.values(), key=lambda e: (e.seconds, order[e.implementation])
    ).implementation
