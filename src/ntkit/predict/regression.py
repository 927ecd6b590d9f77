"""Kernel (ridge / ridgeless) regression, formula F5 of the reference sheet."""

from __future__ import annotations

import torch

from ntkit._validation import check_finite

__all__ = ["kernel_regression", "solve_psd"]


def _as_tensor(x, name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        try:
            x = torch.as_tensor(x)
        except Exception as err:  # noqa: BLE001 - re-raised with context
            raise TypeError(f"{name} must be a tensor or array; got {type(x).__name__}.") from err
    if not x.is_floating_point():
        x = x.to(torch.float64)
    check_finite(x, name)
    return x


def solve_psd(k: torch.Tensor, y: torch.Tensor, *, ridge: float = 0.0) -> torch.Tensor:
    """Solve ``(k + ridge I) a = y`` for a symmetric positive semi-definite ``k``.

    With ``ridge > 0`` a Cholesky solve is tried first. Without ridge (or if Cholesky fails)
    the minimum-norm solution comes from an eigendecomposition, discarding eigenvalues below
    ``n * eps * lambda_max`` (a stable pseudo-inverse, finite for singular kernels).

    Args:
        k: ``(n, n)`` symmetric PSD matrix.
        y: ``(n, m)`` right-hand sides.
        ridge: Absolute ridge ``lambda >= 0``.

    Returns:
        ``(n, m)`` solution.
    """
    n = k.shape[0]
    eye = torch.eye(n, dtype=k.dtype, device=k.device)
    if ridge > 0:
        chol, info = torch.linalg.cholesky_ex(k + ridge * eye)
        if int(info) == 0:
            return torch.cholesky_solve(y, chol)
    evals, evecs = torch.linalg.eigh((k + k.T) / 2 + ridge * eye)
    cutoff = n * torch.finfo(k.dtype).eps * evals.abs().max()
    keep = evals > cutoff
    inv = torch.where(keep, 1.0 / torch.where(keep, evals, torch.ones_like(evals)), 0.0)
    return evecs @ (inv[:, None] * (evecs.T @ y))


def kernel_regression(
    k_train_train,
    y_train,
    k_test_train,
    *,
    ridge: float = 0.0,
    ridge_relative: float | None = None,
) -> torch.Tensor:
    """Kernel regression predictions ``k(x, X) (K + lambda I)^+ Y``.

    Args:
        k_train_train: ``(n, n)`` training kernel.
        y_train: ``(n,)`` or ``(n, m)`` targets.
        k_test_train: ``(n_test, n)`` kernel between test and training inputs.
        ridge: Absolute ridge ``lambda``; 0 (default) is ridgeless (stable pseudo-inverse).
        ridge_relative: If given, ``lambda = ridge_relative * mean(diag K)`` (and ``ridge``
            must be 0): a ridge that scales with the kernel.

    Returns:
        ``(n_test, m)`` predictions (``(n_test,)`` for 1-D targets).

    Raises:
        ValueError: mismatched shapes, negative ridge, both ridges given, NaN/Inf.
    """
    k = _as_tensor(k_train_train, "k_train_train")
    kt = _as_tensor(k_test_train, "k_test_train").to(k.dtype)
    y = _as_tensor(y_train, "y_train").to(k.dtype)
    if k.ndim != 2 or k.shape[0] != k.shape[1]:
        raise ValueError(f"k_train_train must be square (n, n); got {tuple(k.shape)}.")
    n = k.shape[0]
    squeeze = y.ndim == 1
    y2 = y[:, None] if squeeze else y
    if y2.ndim != 2 or y2.shape[0] != n:
        raise ValueError(f"y_train must be (n,) or (n, m) with n = {n}; got {tuple(y.shape)}.")
    if kt.ndim != 2 or kt.shape[1] != n:
        raise ValueError(f"k_test_train must be (n_test, {n}); got {tuple(kt.shape)}.")
    if ridge < 0 or (ridge_relative is not None and ridge_relative < 0):
        raise ValueError(
            f"ridges must be >= 0; got ridge={ridge}, ridge_relative={ridge_relative}."
        )
    if ridge_relative is not None:
        if ridge:
            raise ValueError("give either ridge (absolute) or ridge_relative, not both.")
        ridge = float(ridge_relative) * float(torch.diagonal(k).mean())
    alpha = solve_psd(k, y2, ridge=float(ridge))
    out = kt @ alpha
    return out[:, 0] if squeeze else out
