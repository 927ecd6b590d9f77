"""Empirical (finite-width) NTKs of any PyTorch model.

``empirical_ntk`` (modes full / trace / diagonal / sum_logits / logit; implementations
jacobian / ntvp / structured / auto / projected), ``ntk_features`` (random-projection
tangent features), the matrix-free ``ntk_vp``, ``linearize`` and
``taylor_expand``, and ``register_rule`` for structured rules of user modules.
"""

from ntkit.empirical.api import empirical_ntk, monte_carlo_kernel, ntk_vp
from ntkit.empirical.factors import Dense, Kron, OneHot
from ntkit.empirical.functional import FunctionalModel, functionalize
from ntkit.empirical.linearize import TaylorModel, linearize, taylor_expand
from ntkit.empirical.projected import ntk_features
from ntkit.empirical.structured import register_rule

__all__ = [
    "Dense",
    "FunctionalModel",
    "Kron",
    "OneHot",
    "TaylorModel",
    "empirical_ntk",
    "functionalize",
    "linearize",
    "monte_carlo_kernel",
    "ntk_features",
    "ntk_vp",
    "register_rule",
    "taylor_expand",
]
