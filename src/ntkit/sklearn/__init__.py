"""scikit-learn integration: estimators and Gaussian-process kernels for any ntkit spec.

- :class:`NTKRegressor`, :class:`NTKClassifier`: the infinitely wide network as an estimator
  (kernel regression or gradient flow with its NTK or NNGP), usable in ``Pipeline`` and
  ``GridSearchCV``.
- :class:`NTKKernel`, :class:`NNGPKernel`: ``sklearn.gaussian_process.kernels.Kernel``
  subclasses whose float hyperparameters (``w_std``, ``b_std``, any marked free) are fitted
  by a ``GaussianProcessRegressor``'s marginal likelihood.

Conventions and examples: ``docs/sklearn.md``.
"""

from ntkit.sklearn._specs import ACTIVATIONS, mlp
from ntkit.sklearn.estimators import NTKClassifier, NTKRegressor
from ntkit.sklearn.gp_kernels import NNGPKernel, NTKKernel

__all__ = ["ACTIVATIONS", "NNGPKernel", "NTKClassifier", "NTKKernel", "NTKRegressor", "mlp"]
