"""Empirical (finite-width) NTKs of any PyTorch model."""

from ntkit.empirical.api import empirical_ntk, monte_carlo_kernel
from ntkit.empirical.functional import FunctionalModel, functionalize

__all__ = ["FunctionalModel", "empirical_ntk", "functionalize", "monte_carlo_kernel"]
