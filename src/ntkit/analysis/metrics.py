"""Metrics on kernel matrices: alignment, CKA, kernel distance and spectra.

Every function takes kernel matrices ``(n, n)`` (an empirical NTK in ``trace``,
``sum_logits`` or ``logit`` mode, or an analytic kernel) and computes in float64.

Conventions:

- centering: ``Kc = H K H`` with ``H = I - 11^T / n`` (Cortes, Mohri & Rostamizadeh 2012);
  without it the constant mode dominates and every kernel looks alike;
- ``kernel_distance(K1, K2) = 1 - <K1, K2>_F / (||K1||_F ||K2||_F)`` (after centering by
  default), so ``cka(K1, K2) = 1 - kernel_distance(K1, K2, centered=True)``;
- ``alignment(K, y) = <K, Y Y^T>_F / (||K||_F ||Y Y^T||_F)`` (Cristianini et al. 2001), with
  integer labels one-hot encoded and both matrices centered by default;
- spectra: eigenvalues in descending order; ``effective_rank = exp(entropy(p))`` with
  ``p = lambda / sum(lambda)`` (Roy & Vetterli 2007); ``top_k_mass = sum_{i<=k} lambda_i^2 /
  sum_i lambda_i^2``; ``condition_number = lambda_max / lambda_min`` (``inf`` when
  ``lambda_min <= 0``).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ntkit._validation import check_finite
from ntkit.predict._checks import as_float_tensor

__all__ = [
    "alignment",
    "center",
    "cka",
    "condition_number",
    "effective_rank",
    "eigenvalues",
    "kernel_distance",
    "top_k_mass",
]


def as_kernel_matrix(k, name: str = "K") -> torch.Tensor:
    """Check ``k`` is a finite square ``(n, n)`` real matrix; return it as float64."""
    if not isinstance(k, (torch.Tensor, np.ndarray)):
        raise TypeError(
            f"{name} must be a torch.Tensor or numpy.ndarray of shape (n, n); "
            f"got {type(k).__name__}."
        )
    k = as_float_tensor(k, name, dtype=torch.float64)
    if k.ndim != 2 or k.shape[0] != k.shape[1] or k.shape[0] == 0:
        raise ValueError(
            f"{name} must be a square kernel matrix of shape (n, n) with n >= 1; got shape "
            f"{tuple(k.shape)} (reduce a full (n, n, O, O) NTK with mode='trace' first)."
        )
    return k


def center(k: torch.Tensor) -> torch.Tensor:
    """``H K H`` with ``H = I - 11^T/n``: subtract row and column means, add the grand mean.

    Args:
        k: Kernel matrix ``(n, n)``.

    Returns:
        Centered kernel ``(n, n)``, float64.
    """
    k = as_kernel_matrix(k)
    return _center(k)


def _center(k: torch.Tensor) -> torch.Tensor:
    return k - k.mean(0, keepdim=True) - k.mean(1, keepdim=True) + k.mean()


def _cosine(a: torch.Tensor, b: torch.Tensor, what: str) -> float:
    na, nb = torch.linalg.norm(a), torch.linalg.norm(b)
    if float(na) == 0 or float(nb) == 0:
        raise ValueError(
            f"{what} is undefined: a kernel has zero Frobenius norm (after centering, a "
            "constant kernel is zero)."
        )
    return float((a * b).sum() / (na * nb))


def kernel_distance(k1, k2, *, centered: bool = True) -> float:
    """``1 - <K1, K2>_F / (||K1||_F ||K2||_F)``, after centering both by default.

    Args:
        k1: Kernel matrix ``(n, n)``.
        k2: Kernel matrix ``(n, n)`` on the same inputs.
        centered: Center both kernels first (``H K H``).

    Returns:
        The distance in ``[0, 2]`` (``[0, 1]`` for PSD kernels); 0 iff proportional.

    Raises:
        ValueError: shapes differ, non-finite entries, or a zero kernel.
    """
    k1, k2 = as_kernel_matrix(k1, "K1"), as_kernel_matrix(k2, "K2")
    if k1.shape != k2.shape:
        raise ValueError(
            f"K1 and K2 must have the same shape; got {tuple(k1.shape)} and {tuple(k2.shape)}."
        )
    if centered:
        k1, k2 = _center(k1), _center(k2)
    return 1.0 - _cosine(k1, k2, "kernel_distance")


def cka(k1, k2) -> float:
    """Centered kernel alignment ``<HK1H, HK2H>_F / (||HK1H||_F ||HK2H||_F)`` (Kornblith 2019).

    Args:
        k1: Kernel matrix ``(n, n)``.
        k2: Kernel matrix ``(n, n)`` on the same inputs.

    Returns:
        CKA in ``[-1, 1]`` (``[0, 1]`` for PSD kernels); ``1 - kernel_distance(k1, k2)``.
    """
    return 1.0 - kernel_distance(k1, k2, centered=True)


def _targets_matrix(y, n: int) -> torch.Tensor:
    if isinstance(y, np.ndarray):
        y = torch.from_numpy(np.ascontiguousarray(y))
    if not isinstance(y, torch.Tensor):
        raise TypeError(f"y must be a torch.Tensor or numpy.ndarray; got {type(y).__name__}.")
    if y.shape[:1] != (n,) or y.ndim > 2:
        raise ValueError(
            f"y must have shape ({n},) or ({n}, O) to match K ({n}, {n}); got {tuple(y.shape)}."
        )
    if not y.is_floating_point():
        if y.ndim != 1 or bool((y < 0).any()):
            raise ValueError(
                "integer y must be class labels >= 0 of shape (n,); got shape "
                f"{tuple(y.shape)}, min {int(y.min())}."
            )
        y = torch.nn.functional.one_hot(y.long()).to(torch.float64)
    y = y.to(torch.float64).reshape(n, -1)
    check_finite(y, "y")
    return y


def alignment(k, y, *, centered: bool = True) -> float:
    """Kernel-target alignment ``<K, Y Y^T>_F / (||K||_F ||Y Y^T||_F)``.

    Args:
        k: Kernel matrix ``(n, n)``.
        y: Targets ``(n,)`` or ``(n, O)`` (floats), or integer class labels ``(n,)``
            (one-hot encoded).
        centered: Center ``K`` and ``Y Y^T`` first (centered alignment, Cortes et al. 2012).

    Returns:
        The alignment in ``[-1, 1]``.
    """
    k = as_kernel_matrix(k)
    y = _targets_matrix(y, k.shape[0])
    t = y @ y.T
    if centered:
        k, t = _center(k), _center(t)
    return _cosine(k, t, "alignment")


def eigenvalues(k, *, k_top: int | None = None) -> torch.Tensor:
    """Eigenvalues of the symmetrized kernel matrix, descending.

    Args:
        k: Kernel matrix ``(n, n)``.
        k_top: Return only the largest ``k_top`` (default: all ``n``).

    Returns:
        Eigenvalues ``(n,)`` or ``(k_top,)``, float64, descending.
    """
    mat = as_kernel_matrix(k)
    n = mat.shape[0]
    if k_top is not None and not (isinstance(k_top, int) and 1 <= k_top <= n):
        raise ValueError(f"k_top must be an integer in [1, {n}]; got {k_top!r}.")
    evals = torch.linalg.eigvalsh(0.5 * (mat + mat.T)).flip(0)
    return evals if k_top is None else evals[:k_top]


def effective_rank(k) -> float:
    """``exp(-sum p_i log p_i)`` with ``p = lambda / sum(lambda)`` (Roy & Vetterli 2007).

    Negative eigenvalues of a PSD kernel (round-off) are clipped to 0. Lies in ``[1, n]``.
    """
    evals = eigenvalues(k).clamp_min(0)
    total = float(evals.sum())
    if total <= 0:
        raise ValueError("effective_rank is undefined for a kernel without positive eigenvalues.")
    p = evals / total
    p = p[p > 0]
    return float(math.exp(float(-(p * p.log()).sum())))


def condition_number(k) -> float:
    """``lambda_max / lambda_min`` of the symmetrized kernel; ``inf`` if ``lambda_min <= 0``."""
    evals = eigenvalues(k)
    if float(evals[-1]) <= 0:
        return math.inf
    return float(evals[0] / evals[-1])


def top_k_mass(k, top: int) -> float:
    """Share of the squared spectrum in the top ``top`` eigenvalues.

    ``sum_{i<=top} lambda_i^2 / sum_i lambda_i^2`` (the squared Frobenius norm captured by
    the best rank-``top`` approximation).
    """
    evals = eigenvalues(k)
    n = evals.shape[0]
    if not (isinstance(top, int) and 1 <= top <= n):
        raise ValueError(f"top must be an integer in [1, {n}]; got {top!r}.")
    sq = evals.square()
    total = float(sq.sum())
    if total == 0:
        raise ValueError("top_k_mass is undefined for a zero kernel.")
    return float(sq.sort(descending=True).values[:top].sum() / total)
