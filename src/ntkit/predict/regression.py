"""Kernel (ridge / ridgeless) regression."""

from __future__ import annotations

import numpy as np
import torch

from ntkit.predict._checks import (
    KernelSystem,
    as_float_tensor,
    check_repair,
    check_symmetric,
    resolve_ridge,
    symmetric_eigh,
)

__all__ = ["kernel_regression", "solve_psd"]


def solve_psd(
    k: torch.Tensor, y: torch.Tensor, *, ridge: float = 0.0, repair: str | None = None
) -> torch.Tensor:
    """Solve ``(k + ridge I) a = y`` for a symmetric positive semi-definite ``k``.

    With ``ridge > 0`` a Cholesky solve is tried first. Without ridge (or if Cholesky fails)
    the minimum-norm solution comes from an eigendecomposition, discarding eigenvalues below
    ``n * eps * lambda_max`` (a stable pseudo-inverse, finite for singular kernels). A
    matrix that is not symmetric, or whose ``k + ridge I`` has an eigenvalue below
    ``-n * eps * lambda_max``, is refused unless ``repair`` says how to fix it. On the CPU
    from 4096 samples on the Cholesky factor overwrites one copy of ``k + ridge I`` (peak:
    one extra ``n x n`` matrix; two below that size).

    No loss convention enters: this is linear algebra (kernel regression under either
    ``(1/2) sum`` or ``(1/2) mean`` of squared errors has the same minimizer).

    Args:
        k: ``(n, n)`` symmetric PSD matrix.
        y: ``(n, m)`` right-hand sides.
        ridge: Absolute ridge ``lambda >= 0``.
        repair: ``None`` (default: refuse a non-symmetric or indefinite ``k``),
            ``"symmetrize"`` (use ``(k + k^T) / 2``, still refuse indefinite) or
            ``"project"`` (symmetrize and discard negative eigenvalues: the nearest PSD
            matrix's pseudo-inverse).

    Returns:
        ``(n, m)`` solution.

    Raises:
        ValueError: non-square ``k``, mismatched ``y``, NaN/Inf, negative ridge, a
            non-symmetric or indefinite ``k`` (without ``repair``).
    """
    k = as_float_tensor(k, "k")
    y = as_float_tensor(y, "y", dtype=k.dtype, device=k.device)
    if k.ndim != 2 or k.shape[0] != k.shape[1]:
        raise ValueError(f"k must be square (n, n); got {tuple(k.shape)}.")
    if y.ndim != 2 or y.shape[0] != k.shape[0]:
        raise ValueError(f"y must be (n, m) with n = {k.shape[0]}; got {tuple(y.shape)}.")
    ridge = resolve_ridge(ridge, None, k)
    check_symmetric(k, "k", check_repair(repair))
    if ridge > 0:
        out = _cholesky_solve(k, y, ridge)
        if out is not None:
            return out
    a = k.clone()
    a.diagonal().add_(ridge)
    refuse = None if repair == "project" else "the kernel matrix (plus ridge)"
    evals, evecs = symmetric_eigh(a, refuse_negative=refuse)  # null space (<= cutoff) -> 0
    del a
    keep = evals > 0
    inv = torch.where(keep, 1.0 / torch.where(keep, evals, torch.ones_like(evals)), 0.0)
    return evecs @ (inv[:, None] * (evecs.T @ y))


#: From this many samples on, CPU Cholesky factors run in place through scipy's LAPACK (one
#: extra ``n x n`` matrix instead of torch's two). Smaller ones stay in torch: alternating
#: between scipy's OpenBLAS thread pool and torch's OpenMP pool on every small solve let
#: the idle pool's spinning threads take the cores (a 2-thread digits grid search of 19
#: fits at n = 533: 1.27 s through scipy, 0.40 s in torch).
IN_PLACE_MIN_N = 4096


def _cholesky_solve(k: torch.Tensor, y: torch.Tensor, ridge: float) -> torch.Tensor | None:
    """Cholesky solve of ``(k + ridge I) a = y``.

    On the CPU from :data:`IN_PLACE_MIN_N` samples on, LAPACK factors one copy of ``k`` in
    place (through scipy); otherwise torch allocates the factor next to the copy. Returns
    ``None`` when ``k + ridge I`` is not positive definite.
    """
    a = k.clone()
    a.diagonal().add_(ridge)
    if (
        a.device.type == "cpu"
        and a.dtype in (torch.float32, torch.float64)
        and a.shape[0] >= IN_PLACE_MIN_N
    ):
        import scipy.linalg

        arr = a.numpy()  # C-contiguous and symmetric: arr.T is the same matrix, F-contiguous
        try:
            factor = scipy.linalg.cho_factor(
                arr.T, lower=False, overwrite_a=True, check_finite=False
            )
        except np.linalg.LinAlgError:
            return None
        sol = scipy.linalg.cho_solve(factor, y.numpy(), check_finite=False)
        return torch.from_numpy(np.ascontiguousarray(sol)).to(y.dtype)
    chol, info = torch.linalg.cholesky_ex(a)
    del a
    if int(info) != 0:
        return None
    return torch.cholesky_solve(y, chol)


def kernel_regression(
    k_train_train,
    y_train,
    k_test_train,
    *,
    ridge: float = 0.0,
    ridge_relative: float | None = None,
    repair: str | None = None,
) -> torch.Tensor:
    """Kernel regression predictions ``k(x, X) (K + lambda I)^+ Y``.

    This is the posterior mean of :func:`~ntkit.predict.gp_posterior` with noise
    ``lambda`` and the ``t = inf`` limit of :func:`~ntkit.predict.gradient_descent_mse`
    from zero initial outputs, under either loss convention (``(1/2) sum`` or ``(1/2) mean``
    of squared errors: the minimizer does not depend on it, ``lambda`` is on the kernel's
    scale). Ridgeless (``lambda = 0``) uses a pseudo-inverse that discards eigenvalues
    ``<= n * eps * lambda_max``, so singular kernels (duplicated inputs) give finite,
    minimum-norm results.

    Args:
        k_train_train: ``(n, n)`` training kernel (or a full ``(n, n, O, O)`` kernel).
        y_train: ``(n,)`` or ``(n, m)`` targets (``(n, O)`` with a full kernel).
        k_test_train: ``(n_test, n)`` kernel between test and training inputs
            (``(n_test, n, O, O)`` with a full kernel).
        ridge: Absolute ridge ``lambda``; 0 (default) is ridgeless (stable pseudo-inverse).
        ridge_relative: If given, ``lambda = ridge_relative * mean(diag K)`` (and ``ridge``
            must be 0): a ridge that scales with the kernel.
        repair: ``None`` (default) refuses a training kernel that is not symmetric or not
            positive semi-definite (naming the asymmetry or the most negative eigenvalue);
            ``"symmetrize"`` uses ``(K + K^T) / 2``; ``"project"`` also discards negative
            eigenvalues (see :func:`solve_psd`).

    Returns:
        ``(n_test, m)`` predictions (``(n_test,)`` for 1-D targets, ``(n_test, O)`` with a
        full kernel), in the kernel's dtype.

    Raises:
        ValueError: mismatched shapes, negative ridge, both ridges given, NaN/Inf, a
            non-symmetric or indefinite training kernel (without ``repair``).
    """
    sys = KernelSystem.from_kernel(k_train_train)
    sys, y = sys.targets(y_train)
    kt = sys.cross(k_test_train)
    lam = resolve_ridge(ridge, ridge_relative, sys.k)
    alpha = _solve(sys.k, y, lam, repair)
    return sys.unflatten(kt @ alpha)


def _solve(k, y, lam, repair):
    check_symmetric(k, "k_train_train", check_repair(repair))
    try:
        return solve_psd(k, y, ridge=lam, repair=repair or "symmetrize")
    except ValueError as err:
        if "not positive semi-definite" in str(err):
            raise ValueError(str(err).replace("the kernel matrix", "k_train_train")) from None
        raise
