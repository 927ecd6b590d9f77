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

from dataclasses import dataclass

from ntkit.empirical.assemble import ChunkPlan, plan_chunks
from ntkit.empirical.factors import kron_strategy
from ntkit.empirical.modes import ModeSpec
from ntkit.empirical.structured import ModelProfile, feature_bytes
from ntkit.empirical.vector_products import ntvp_plan

__all__ = ["IMPLEMENTATIONS", "CostEstimate", "choose", "estimate"]

IMPLEMENTATIONS = ("jacobian", "ntvp", "structured")

#: FLOP/s of large matrix products, of vectorised autodiff passes, and seconds per pass.
_THROUGHPUT = {
    "cpu": {"matmul": 6e10, "autodiff": 2e10, "pass": 2e-3},
    "cuda": {"matmul": 2e13, "autodiff": 4e12, "pass": 2e-4},
}


@dataclass(frozen=True)
class CostEstimate:
    """Estimated seconds, peak bytes and chunk plan of one implementation."""

    implementation: str
    seconds: float
    peak_bytes: float
    plan: object


def _contract_flops(spec: ModeSpec, n1: int, n2: int, sym: bool, k: int, d: int) -> float:
    """FLOPs of contracting per-sample Jacobians of size ``d``."""
    if spec.how == "diag":
        return 2.0 * n1 * k * k * d
    pairs = n1 * n2 * (0.6 if sym and n1 * k >= 1024 else 1.0)
    return 2.0 * pairs * (k if spec.how == "trace" else k * k) * d


def _structured_contract_flops(
    prof: ModelProfile, spec: ModeSpec, n1: int, n2: int, sym: bool, k: int, fused: bool
) -> float:
    flops = 0.0
    shapes = prof.fused_shapes if fused else prof.factor_shapes
    for s in shapes.values():
        if s[0] == "dense":
            flops += _contract_flops(spec, n1, n2, sym, k, s[1])
        else:
            _, p, a, b = s
            _, macs = kron_strategy(n1, n2, k, p, p, a, b, spec.how)
            flops += 2.0 * macs * (0.6 if sym and n1 * k >= 1024 and p == 1 else 1.0)
    for name in prof.generic:
        flops += _contract_flops(spec, n1, n2, sym, k, prof.param_numel[name])
    return flops


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
    """Cost of each implementation that fits in ``budget``.

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
    rate = _THROUGHPUT["cpu" if device_type == "cpu" else "cuda"]
    k = spec.n_directions
    fwd = max(prof.flops, 1.0)
    n_res = len(prof.param_numel) if per_parameter else 1
    out: dict[str, CostEstimate] = {}
    total_p = prof.total_params

    # Jacobian contraction
    try:
        plan = plan_chunks(
            spec,
            n1,
            n2,
            sym,
            prof.act_bytes,
            total_p * itemsize + 2 * prof.act_bytes,
            itemsize,
            budget,
            n_res,
        )
        feat = _featurize_flops(plan, n1, n2, sym, k, fwd, per_dir=2.0 * fwd + 2.0 * total_p)
        t = (
            feat / rate["autodiff"]
            + _contract_flops(spec, n1, n2, sym, k, total_p) / rate["matmul"]
        )
        out["jacobian"] = CostEstimate(
            "jacobian", t + _passes(plan) * rate["pass"], plan.peak, plan
        )
    except ValueError:
        pass

    # structured
    fixed, per_dir = feature_bytes(prof, k, itemsize)
    try:
        plan = plan_chunks(
            spec, n1, n2, sym, fixed, per_dir + prof.act_bytes, itemsize, budget, n_res
        )
        gen_p = sum(prof.param_numel[nm] for nm in prof.generic)
        feat = _featurize_flops(plan, n1, n2, sym, k, fwd, per_dir=fwd + 2.0 * gen_p)
        contract = _structured_contract_flops(prof, spec, n1, n2, sym, k, not per_parameter)
        t = feat / rate["autodiff"] + contract / rate["matmul"]
        out["structured"] = CostEstimate(
            "structured", t + _passes(plan) * rate["pass"], plan.peak, plan
        )
    except ValueError:
        pass

    # NTK-vector products
    try:
        cols, rows, peak = ntvp_plan(spec, n1, n2, total_p, prof.act_bytes, itemsize, budget)
        cols_total = (n1 if spec.how == "diag" else n2) * k
        rows_total = 1 if spec.how == "diag" else n1
        flops = cols_total * (3.0 * fwd * rows_total) + n2 * (fwd + k * 2.0 * fwd)
        if per_parameter:
            flops *= len(prof.param_numel)
        n_pass = -(-cols_total // cols) * -(-rows_total // rows)
        t = flops / rate["autodiff"] + n_pass * rate["pass"]
        out["ntvp"] = CostEstimate("ntvp", t, peak, (cols, rows))
    except ValueError:
        pass
    return out


def _featurize_flops(
    plan: ChunkPlan, n1: int, n2: int, sym: bool, k: int, fwd: float, per_dir: float
) -> float:
    samples = plan.featurized / k if k else 0.0
    return samples * fwd + plan.featurized * per_dir


def _passes(plan: ChunkPlan) -> float:
    return max(1.0, plan.featurized / max(plan.rows * plan.dirs, 1))


def choose(estimates: dict[str, CostEstimate]) -> str:
    """The implementation with the smallest estimated time (ties: structured first)."""
    order = {"structured": 0, "jacobian": 1, "ntvp": 2}
    return min(
        estimates.values(), key=lambda e: (e.seconds, order[e.implementation])
    ).implementation
