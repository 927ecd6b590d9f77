"""Analysis of networks and kernels: kernel metrics, Hessian sharpness, NTK tracking."""

from ntkit.analysis.metrics import (
    alignment,
    center,
    cka,
    condition_number,
    effective_rank,
    eigenvalues,
    kernel_distance,
    top_k_mass,
)
from ntkit.analysis.sharpness import (
    TraceEstimate,
    hessian_trace,
    hessian_vector_product,
    sharpness,
)
from ntkit.analysis.tracker import NTKTracker

__all__ = [
    "NTKTracker",
    "TraceEstimate",
    "alignment",
    "center",
    "cka",
    "condition_number",
    "effective_rank",
    "eigenvalues",
    "hessian_trace",
    "hessian_vector_product",
    "kernel_distance",
    "sharpness",
    "top_k_mass",
]
