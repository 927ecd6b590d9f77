"""Analysis of networks and kernels: label-aware kernels and local elasticity."""

from ntkit.analysis.label_aware import (
    empirical_k4,
    label_aware_hr,
    label_aware_nth,
    local_elasticity,
    two_layer_relu_k4,
)

__all__ = [
    "empirical_k4",
    "label_aware_hr",
    "label_aware_nth",
    "local_elasticity",
    "two_layer_relu_k4",
]
