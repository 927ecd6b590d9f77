"""Kernel regression from features: ``K = phi phi^T`` solved in ``O(n k^2)``, not ``O(n^3)``.

With features ``phi: (n, k)`` of a kernel (e.g. :func:`ntkit.ntk_features`), the kernel
regression predictor ``phi_t phi^T (phi phi^T + lambda I)^+ y`` equals
``phi_t (phi^T phi + lambda I)^+ phi^T y`` (push-through identity; for ``lambda = 0`` both
are ``phi_t phi^+ y``, the minimum-norm fit), which needs only the ``k x k`` matrix
``phi^T phi``.
"""

from __future__ import annotations

import torch

from ntkit.predict._checks import as_float_tensor, resolve_ridge
from ntkit.predict.regression import solve_psd

__all__ = ["feature_regression"]


def _rows(phi: torch.Tensor, name: str, full: bool) -> torch.Tensor:
    if full:
        if phi.ndim != 3:
            raise ValueError(
                f"{name} must be (n, O, k) like phi_train; got shape {tuple(phi.shape)}."
            )
        return phi.reshape(-1, phi.shape[-1])
    if phi.ndim != 2:
        raise ValueError(f"{name} must be (n, k) like phi_train; got shape {tuple(phi.shape)}.")
    return phi


def feature_regression(
    phi_train,
    y_train,
    phi_test,
    *,
    ridge: float = 0.0,
    ridge_relative: float | None = None,
) -> torch.Tensor:
    """Kernel (ridge) regression with the kernel ``phi(x) . phi(x')`` given by features.

    The same predictions as :func:`ntkit.predict.kernel_regression` on
    ``K = phi_train phi_train^T`` and ``k(x, X) = phi_test phi_train^T``, in ``O(n k^2 + k^3)``
    time and ``O(k^2)`` extra memory instead of ``O(n^3)`` and ``O(n^2)``.

    Args:
        phi_train: ``(n, k)`` features of a kernel shared by all outputs (``mode="trace"``
            features), or ``(n, O, k)`` per-output features (``mode="full"``).
        y_train: ``(n,)`` or ``(n, m)`` targets (``(n, O)`` with per-output features).
        phi_test: ``(n_test, k)`` (or ``(n_test, O, k)``) features of the test inputs.
        ridge: Absolute ridge ``lambda`` (on the kernel's scale); 0 (default) gives the
            minimum-norm (ridgeless) fit.
        ridge_relative: If given, ``lambda = ridge_relative * mean(diag K)`` with
            ``diag K = |phi_i|^2`` (and ``ridge`` must be 0).

    Returns:
        ``(n_test, m)`` predictions (``(n_test,)`` for 1-D targets, ``(n_test, O)`` with
        per-output features), in the features' dtype.

    Raises:
        ValueError: mismatched shapes, NaN/Inf, negative ridge, both ridges given.
        TypeError: inputs that are not tensors/arrays.
    """
    phi = as_float_tensor(phi_train, "phi_train")
    full = phi.ndim == 3
    if phi.ndim not in (2, 3) or phi.shape[0] == 0:
        raise ValueError(
            f"phi_train must be (n, k) or (n, O, k) with n >= 1; got shape {tuple(phi.shape)}."
        )
    pt = as_float_tensor(phi_test, "phi_test", dtype=phi.dtype, device=phi.device)
    y = as_float_tensor(y_train, "y_train", dtype=phi.dtype, device=phi.device)
    n, k = phi.shape[0], phi.shape[-1]
    if pt.shape[-1] != k or (full and pt.ndim == 3 and pt.shape[1] != phi.shape[1]):
        raise ValueError(
            f"phi_test must have the feature shape of phi_train {tuple(phi.shape[1:])}; got "
            f"{tuple(pt.shape[1:])}."
        )
    a, at = _rows(phi, "phi_train", full), _rows(pt, "phi_test", full)
    squeeze = y.ndim == 1 and not full
    if full:
        if tuple(y.shape) != (n, phi.shape[1]):
            raise ValueError(
                f"y_train must be (n, O) = ({n}, {phi.shape[1]}) with per-output features; "
                f"got {tuple(y.shape)}."
            )
        y = y.reshape(-1, 1)
    else:
        y = y[:, None] if y.ndim == 1 else y
        if y.ndim != 2 or y.shape[0] != n:
            raise ValueError(f"y_train must be (n,) or (n, m) with n = {n}; got {tuple(y.shape)}.")
    gram = a.T @ a  # (k, k)
    diag_mean = (a * a).sum(1).mean()
    lam = resolve_ridge(ridge, ridge_relative, diag_mean.reshape(1, 1))
    w = solve_psd((gram + gram.T) / 2, a.T @ y, ridge=lam)  # (k, m)
    out = at @ w
    if full:
        return out.reshape(pt.shape[0], phi.shape[1])
    return out[:, 0] if squeeze else out
