"""ntkit: neural tangent kernels for PyTorch.

Infinite-width NNGP/NTK kernels of layer descriptions (:mod:`ntkit.layers`), empirical NTKs
of any ``torch.nn.Module``, and what the kernels say about training.
"""

from ntkit import layers, predict
from ntkit.empirical import (
    empirical_ntk,
    linearize,
    monte_carlo_kernel,
    ntk_features,
    ntk_vp,
    register_rule,
    taylor_expand,
)
from ntkit.kernel import Kernel
from ntkit.predict import (
    gp_posterior,
    gradient_descent,
    gradient_descent_mse,
    gradient_descent_mse_ensemble,
    kernel_regression,
    max_learning_rate,
)

__version__ = "0.1.0"

__all__ = [
    "Kernel",
    "__version__",
    "empirical_ntk",
    "layers",
    "linearize",
    "gp_posterior",
    "gradient_descent",
    "gradient_descent_mse",
    "gradient_descent_mse_ensemble",
    "kernel_regression",
    "max_learning_rate",
    "monte_carlo_kernel",
    "ntk_features",
    "ntk_vp",
    "predict",
    "register_rule",
    "taylor_expand",
]
