"""Analysis of networks and kernels.

Kernel metrics, Hessian sharpness, NTK tracking, label-aware kernels and local elasticity.
"""

from ntkit.analysis.eigen_features import (
    KernelPredictor,
    eigen_feature_weights,
    eigen_features,
    feature_accuracy,
    feature_robust_accuracy,
)
from ntkit.analysis.label_aware import (
    empirical_k4,
    label_aware_hr,
    label_aware_nth,
    local_elasticity,
    two_layer_relu_k4,
)
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
    "KernelPredictor",
    "eigen_feature_weights",
    "eigen_features",
    "feature_accuracy",
    "feature_robust_accuracy",
    "NTKTracker",
    "TraceEstimate",
    "alignment",
    "center",
    "cka",
    "condition_number",
    "effective_rank",
    "eigenvalues",
    "empirical_k4",
    "hessian_trace",
    "hessian_vector_product",
    "kernel_distance",
    "label_aware_hr",
    "label_aware_nth",
    "local_elasticity",
    "sharpness",
    "top_k_mass",
    "two_layer_relu_k4",
]
