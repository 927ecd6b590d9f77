"""Inference with kernels: regression, Gaussian-process posteriors, training dynamics.

- :func:`kernel_regression`, :func:`gp_posterior`: closed-form inference;
  :func:`feature_regression`: the same from features ``K = phi phi^T`` in ``O(n k^2)``.
- :func:`gradient_descent_mse`: outputs of gradient descent on the squared loss at any time
  (Lee et al. 2019, eqs. 9-11); :func:`gradient_descent_mse_ensemble`: the trained infinite
  ensemble's mean and covariance (Lee et al. 2019, sec. 2.3); :func:`gradient_descent`: any
  loss, by ODE integration;
  :func:`max_learning_rate`.
- :func:`conjugate_gradient` with :func:`kernel_operator` (analytic kernel in row blocks),
  :func:`empirical_ntk_operator` (``ntk_vp``) or :class:`DenseOperator`: iterative solves
  from matrix-free kernel products, for kernels too large to factor.
"""

from ntkit.predict.dynamics import MSEPredictor, Prediction, gradient_descent_mse, max_learning_rate
from ntkit.predict.ensemble import Ensemble, EnsemblePredictor, gradient_descent_mse_ensemble
from ntkit.predict.features import feature_regression
from ntkit.predict.gp import GPPosterior, gp_posterior
from ntkit.predict.ode import ODEPredictor, gradient_descent
from ntkit.predict.regression import kernel_regression, solve_psd
from ntkit.predict.solvers import (
    BlockKernelOperator,
    CGResult,
    DenseOperator,
    FunctionOperator,
    KernelOperator,
    conjugate_gradient,
    empirical_ntk_operator,
    kernel_operator,
)

__all__ = [
    "BlockKernelOperator",
    "CGResult",
    "DenseOperator",
    "Ensemble",
    "EnsemblePredictor",
    "FunctionOperator",
    "GPPosterior",
    "KernelOperator",
    "MSEPredictor",
    "ODEPredictor",
    "Prediction",
    "conjugate_gradient",
    "empirical_ntk_operator",
    "feature_regression",
    "gp_posterior",
    "gradient_descent",
    "gradient_descent_mse",
    "gradient_descent_mse_ensemble",
    "kernel_operator",
    "kernel_regression",
    "max_learning_rate",
    "solve_psd",
]
