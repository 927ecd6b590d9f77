"""ntkit: neural tangent kernels for PyTorch.

Infinite-width NNGP/NTK kernels of layer descriptions (:mod:`ntkit.layers`), empirical NTKs
of any ``torch.nn.Module``, and what the kernels say about training.
"""

from ntkit import layers
from ntkit.empirical import (
    empirical_ntk,
    linearize,
    monte_carlo_kernel,
    ntk_vp,
    register_rule,
    taylor_expand,
)
from ntkit.kernel import Kernel

__version__ = "0.1.0"

__all__ = [
    "Kernel",
    "__version__",
    "empirical_ntk",
    "layers",
    "linearize",
    "monte_carlo_kernel",
    "ntk_vp",
    "register_rule",
    "taylor_expand",
]
