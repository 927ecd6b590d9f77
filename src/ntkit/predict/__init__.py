"""Inference with kernels: regression, Gaussian-process posteriors, training dynamics."""

from ntkit.predict.regression import kernel_regression, solve_psd

__all__ = ["kernel_regression", "solve_psd"]
