"""Gaussian-process posteriors with NNGP (Lee et al. 2018) or NTK (Lee et al. 2019) kernels.

With the NNGP kernel this is exact Bayesian inference in the infinitely wide network
(Lee et al. 2018); with the NTK it is the NTK-GP of He et al. 2020 (the posterior of an
ensemble trained with gradient descent from a suitably randomized initialization).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from ntkit.predict._checks import (
    KernelSystem,
    as_float_tensor,
    check_repair,
    check_symmetric,
    resolve_ridge,
    symmetric_eigh,
)

__all__ = ["GPPosterior", "gp_posterior"]


class GPPosterior(NamedTuple):
    """Posterior of the latent function at the test inputs.

    Attributes:
        mean: ``(n_test, m)`` (``(n_test,)`` for 1-D targets; ``(n_test, O)`` with a full
            kernel).
        cov: ``(n_test, n_test)`` covariance shared by the outputs (``(n_test, n_test, O, O)``
            with a full kernel), or ``(n_test,)`` variances if ``k_test_test`` was a
            diagonal (``(n_test, O)`` with a full kernel), or ``None`` if it was not given.
    """

    mean: torch.Tensor
    cov: torch.Tensor | None


class _Factor:
    """``(K + s^2 I)^{-1}`` applied through Cholesky, or an eigendecomposition when singular."""

    def __init__(self, k: torch.Tensor, noise: float, repair: str | None = None):
        n = k.shape[0]
        check_symmetric(k, "k_train_train", check_repair(repair))
        a = (k + k.mT) / 2 + noise * torch.eye(n, dtype=k.dtype, device=k.device)
        chol, info = torch.linalg.cholesky_ex(a)
        self.chol = chol if int(info) == 0 else None
        if self.chol is None:
            refuse = None if repair == "project" else "k_train_train (plus noise)"
            evals, self.evecs = symmetric_eigh(a, refuse_negative=refuse)  # null space -> 0
            keep = evals > 0
            self.inv_sqrt = torch.where(
                keep, 1 / torch.sqrt(torch.where(keep, evals, 1.0)), torch.zeros_like(evals)
            )

    def whiten(self, b: torch.Tensor) -> torch.Tensor:
        """``W b`` with ``W^T W = (K + s^2 I)^+``: ``(N, c) -> (N, c)``."""
        if self.chol is not None:
            return torch.linalg.solve_triangular(self.chol, b, upper=False)
        return self.inv_sqrt[:, None] * (self.evecs.mT @ b)


def gp_posterior(
    k_train_train,
    y_train,
    k_test_train,
    k_test_test=None,
    *,
    noise: float = 0.0,
    noise_relative: float | None = None,
    repair: str | None = None,
) -> GPPosterior:
    """Posterior mean and covariance of a zero-mean GP given noisy observations.

    ``mean = K(x, X) (K + s^2 I)^{-1} Y`` and
    ``cov = K(x, x') - K(x, X) (K + s^2 I)^{-1} K(X, x')``, the covariance of the latent
    function (add ``s^2`` to its diagonal for noisy predictive observations). Pass NNGP
    matrices for Bayesian inference in the infinite network, NTK matrices for the NTK-GP.

    ``K + s^2 I`` is factored by Cholesky; if that fails (singular kernel, ``noise=0`` with
    duplicated inputs) an eigendecomposition gives the pseudo-inverse, discarding
    eigenvalues ``<= N * eps * lambda_max`` -- finite results, equal to conditioning on the
    distinct observations when duplicated targets agree. Variances are clamped at 0 (rounding
    can make them slightly negative); the full covariance is symmetrized.

    The loss convention is irrelevant here (no training); ``s^2`` is the observation-noise
    variance, the same as scikit-learn's ``GaussianProcessRegressor(alpha=s^2)``.

    Args:
        k_train_train: ``(n, n)`` kernel (or full ``(n, n, O, O)``).
        y_train: ``(n,)`` or ``(n, m)`` targets (``(n, O)`` with a full kernel).
        k_test_train: ``(n_test, n)`` (or ``(n_test, n, O, O)``).
        k_test_test: ``(n_test, n_test)`` (or ``(n_test, n_test, O, O)``) for the full
            covariance, its diagonal ``(n_test,)`` (or ``(n_test, O)``: the ``O x O`` blocks'
            diagonals) for variances only, or ``None`` for the mean only.
        noise: Observation-noise variance ``s^2 >= 0``.
        noise_relative: ``s^2 = noise_relative * mean(diag K)`` instead of ``noise``.
        repair: ``None`` (default) refuses a training kernel that is not symmetric or not
            positive semi-definite (naming the asymmetry or the most negative eigenvalue);
            ``"symmetrize"`` uses ``(K + K^T) / 2``; ``"project"`` also discards negative
            eigenvalues.

    Returns:
        :class:`GPPosterior` ``(mean, cov)``.

    Raises:
        ValueError: mismatched shapes, NaN/Inf, negative noise or both noises given, a
            non-symmetric or indefinite training kernel (without ``repair``).
    """
    sys = KernelSystem.from_kernel(k_train_train)
    sys, y = sys.targets(y_train)
    kt = sys.cross(k_test_train)
    s2 = resolve_ridge(noise, noise_relative, sys.k, name="noise")
    fac = _Factor(sys.k, s2, repair)
    a = fac.whiten(kt.mT)  # shape: (N, R)
    mean = sys.unflatten(a.mT @ fac.whiten(y))
    if k_test_test is None:
        return GPPosterior(mean, None)
    kss = as_float_tensor(k_test_test, "k_test_test", dtype=sys.k.dtype, device=sys.k.device)
    n_test = sys.test_rows(kt)
    o = sys.n_out
    if o is None:
        full_shape, diag_shape = (n_test, n_test), (n_test,)
    else:
        full_shape, diag_shape = (n_test, n_test, o, o), (n_test, o)
    if tuple(kss.shape) == full_shape:
        if o is not None:
            kss = kss.permute(0, 2, 1, 3).reshape(n_test * o, n_test * o)
        cov = kss - a.mT @ a
        cov = (cov + cov.mT) / 2
        idx = torch.arange(cov.shape[0], device=cov.device)
        cov[idx, idx] = cov[idx, idx].clamp_min(0)
        if o is not None:
            cov = cov.reshape(n_test, o, n_test, o).permute(0, 2, 1, 3)
        return GPPosterior(mean, cov)
    if tuple(kss.shape) == diag_shape:
        var = (kss.reshape(-1) - (a * a).sum(0)).clamp_min(0)
        return GPPosterior(mean, var.reshape(diag_shape))
    raise ValueError(
        f"k_test_test must be the full {full_shape} kernel or its diagonal {diag_shape}; got "
        f"shape {tuple(kss.shape)}."
    )
