"""Shared input checks and the numerical policy of :mod:`ntkit.predict`.

Kernels come in two layouts:

- *shared* ``(n1, n2)``: one kernel for every output channel (the infinite-width case,
  ``K ⊗ I_m``); targets are ``(n,)`` or ``(n, m)``.
- *full* ``(n1, n2, O, O)``: a block per pair of outputs (an empirical NTK with
  ``mode="full"``); targets must be ``(n, O)``. It is solved as one ``(n*O, n*O)`` system
  whose row ``i*O + a`` is example ``i``, output ``a``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ntkit._validation import check_finite

#: Eigenvalues of a training kernel at or below ``N * eps(dtype) * lambda_max`` are treated
#: as exact zeros (its numerical null space): pseudo-inverses drop them, and the training
#: dynamics leave those directions untouched.
NULL_SPACE_FACTOR = 1.0

REDUCTIONS = ("sum", "mean")


def as_float_tensor(x, name: str, *, dtype: torch.dtype | None = None, device=None):
    """Tensor/array/number -> finite floating tensor (integers become float64)."""
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    elif not isinstance(x, torch.Tensor):
        if isinstance(x, (int, float)):
            x = torch.tensor(float(x), dtype=torch.float64)
        else:
            raise TypeError(
                f"{name} must be a torch.Tensor or numpy.ndarray; got {type(x).__name__}."
            )
    if x.is_complex():
        raise TypeError(f"{name} must be real-valued; got dtype {x.dtype}.")
    if dtype is None:
        dtype = x.dtype if x.is_floating_point() else torch.float64
    x = x.to(dtype=dtype, device=device)
    check_finite_fast(x, name)
    return x


def check_finite_fast(x: torch.Tensor, name: str) -> None:
    """:func:`ntkit._validation.check_finite` without an ``x``-sized temporary when finite.

    The sum of ``x`` is finite iff every entry is (barring overflow, which the exact check
    then clears); only a non-finite sum runs the exact, entry-naming check.
    """
    if x.numel() and not bool(torch.isfinite(x.sum())):
        check_finite(x, name)


def null_cutoff(evals: torch.Tensor) -> torch.Tensor:
    """The eigenvalue threshold of the numerical null space (see :data:`NULL_SPACE_FACTOR`)."""
    n = evals.shape[-1]
    scale = evals.abs().max() if evals.numel() else evals.new_tensor(0.0)
    return NULL_SPACE_FACTOR * n * torch.finfo(evals.dtype).eps * scale


def symmetric_eigh(
    k: torch.Tensor, *, refuse_negative: str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``eigh`` of the symmetrized matrix, eigenvalues at or below the cutoff set to 0.

    Args:
        k: ``(N, N)`` matrix.
        refuse_negative: If given (the matrix's name for the message), raise when an
            eigenvalue is below ``-cutoff`` (the matrix is not positive semi-definite)
            instead of discarding it.

    Returns:
        ``(evals, evecs)``: ``(N,)`` ascending, clamped ``>= 0``, and ``(N, N)``.
    """
    sym = k + k.mT  # one temporary; eigh returns the eigenvectors in a new matrix
    sym.mul_(0.5)
    evals, evecs = torch.linalg.eigh(sym)
    del sym
    cutoff = null_cutoff(evals)
    if refuse_negative is not None and evals.numel() and bool(evals[0] < -cutoff):
        raise ValueError(
            f"{refuse_negative} is not positive semi-definite: its most negative eigenvalue "
            f"is {float(evals[0]):.3g} (largest {float(evals[-1]):.3g}, rounding tolerance "
            f"{float(cutoff):.2g}). A kernel matrix must be PSD; fix how it was computed, or "
            "pass repair='project' to clip its negative eigenvalues to 0."
        )
    evals = torch.where(evals > cutoff, evals, torch.zeros_like(evals))
    return evals, evecs


#: Accepted values of the ``repair`` option of kernel_regression / gp_posterior / solve_psd.
REPAIRS = (None, "symmetrize", "project")


def check_repair(repair) -> str | None:
    """Validate ``repair`` (``None``, ``"symmetrize"`` or ``"project"``)."""
    if repair not in REPAIRS:
        raise ValueError(f"repair must be None, 'symmetrize' or 'project'; got {repair!r}.")
    return repair


def check_symmetric(k: torch.Tensor, name: str, repair: str | None) -> None:
    """Refuse a kernel matrix that is not symmetric to rounding, unless ``repair`` is set.

    The tolerance is ``1000 eps max|k|`` (kernels computed blockwise or in another order
    agree to a few ulps; ntkit's own are exactly symmetric).

    Raises:
        ValueError: naming the largest asymmetry and where it is.
    """
    if repair is not None or k.numel() == 0:
        return
    diff = (k - k.mT).abs()
    worst = float(diff.max())
    scale = float(k.abs().max())
    if worst > 1000 * torch.finfo(k.dtype).eps * scale:
        flat = int(diff.argmax())
        i, j = divmod(flat, k.shape[1])
        raise ValueError(
            f"{name} is not symmetric: |K[{i}, {j}] - K[{j}, {i}]| = {worst:.3g} (largest "
            f"entry {scale:.3g}). A kernel matrix must be symmetric; pass "
            "repair='symmetrize' to use (K + K^T) / 2."
        )


def resolve_ridge(ridge: float, ridge_relative: float | None, k: torch.Tensor, *, name="ridge"):
    """Absolute ridge from ``ridge`` or ``ridge_relative * mean(diag k)`` (not both)."""
    for value, label in ((ridge, name), (ridge_relative, f"{name}_relative")):
        if value is None:
            continue
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise TypeError(f"{label} must be a float; got {type(value).__name__}.")
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"{label} must be finite and >= 0; got {value}.")
    if ridge_relative is not None:
        if ridge:
            raise ValueError(
                f"give either {name} (absolute) or {name}_relative, not both; got "
                f"{name}={ridge}, {name}_relative={ridge_relative}."
            )
        return float(ridge_relative) * float(torch.diagonal(k).mean())
    return float(ridge)


def check_learning_rate(learning_rate) -> float:
    """``learning_rate`` as a float after checking it is a finite number > 0."""
    if not isinstance(learning_rate, (int, float)) or isinstance(learning_rate, bool):
        raise TypeError(f"learning_rate must be a float; got {type(learning_rate).__name__}.")
    if not math.isfinite(learning_rate) or learning_rate <= 0:
        raise ValueError(f"learning_rate must be finite and > 0; got {learning_rate}.")
    return float(learning_rate)


def check_reduction(reduction: str) -> str:
    """``"sum"`` or ``"mean"``, else ValueError."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}; got {reduction!r}.")
    return reduction


def as_times(t, *, discrete: bool, dtype: torch.dtype, device) -> tuple[torch.Tensor, bool]:
    """Times as a 1-D tensor ``(T,)`` plus whether the caller passed a scalar.

    Continuous times are real ``>= 0`` (``inf`` allowed); discrete times are step counts,
    integers ``>= 0`` (``inf`` allowed).
    """
    if isinstance(t, np.ndarray):
        t = torch.from_numpy(np.ascontiguousarray(t))
    if isinstance(t, torch.Tensor):
        if t.is_complex():
            raise TypeError(f"t must be real; got dtype {t.dtype}.")
        tt = t.detach().to(dtype=dtype, device=device)
    elif isinstance(t, (int, float)) and not isinstance(t, bool):
        tt = torch.tensor(float(t), dtype=dtype, device=device)
    elif isinstance(t, (list, tuple)):
        try:
            tt = torch.tensor(t, dtype=dtype, device=device)
        except (TypeError, ValueError) as err:
            raise TypeError(f"t must be a list of numbers; got {t!r}.") from err
    else:
        raise TypeError(f"t must be a number, a list or a 1-D tensor of times; got {type(t)}.")
    scalar = tt.ndim == 0
    if tt.ndim > 1:
        raise ValueError(f"t must be a scalar or 1-D; got shape {tuple(tt.shape)}.")
    tt = tt.reshape(-1)
    if bool(torch.isnan(tt).any()) or bool((tt < 0).any()):
        raise ValueError(f"times must be >= 0 (inf allowed) and not NaN; got {tt.tolist()}.")
    if discrete:
        finite = tt[torch.isfinite(tt)]
        if bool((finite != torch.round(finite)).any()):
            raise ValueError(
                f"discrete gradient descent needs integer step counts t; got {tt.tolist()}."
            )
    return tt, scalar


@dataclass(frozen=True)
class KernelSystem:
    """A training kernel flattened to ``(N, N)`` and the map between targets and columns.

    Attributes:
        k: ``(N, N)``, ``N = n`` (shared layout) or ``n * O`` (full layout).
        n: Number of training examples.
        n_out: ``O`` for the full layout, ``None`` for the shared one.
        squeeze: Whether the targets were 1-D (results are returned 1-D too).
    """

    k: torch.Tensor
    n: int
    n_out: int | None
    squeeze: bool

    @staticmethod
    def from_kernel(k_train_train, name: str = "k_train_train", *, dtype=None) -> KernelSystem:
        k = as_float_tensor(k_train_train, name, dtype=dtype)
        if k.ndim == 2 and k.shape[0] == k.shape[1]:
            return KernelSystem(k, int(k.shape[0]), None, False)
        if k.ndim == 4 and k.shape[0] == k.shape[1] and k.shape[2] == k.shape[3]:
            n, o = int(k.shape[0]), int(k.shape[2])
            return KernelSystem(k.permute(0, 2, 1, 3).reshape(n * o, n * o), n, o, False)
        raise ValueError(
            f"{name} must be a square (n, n) kernel or a full (n, n, O, O) kernel; got shape "
            f"{tuple(k.shape)}."
        )

    @property
    def size(self) -> int:
        """``N``, the side of the flattened system."""
        return int(self.k.shape[0])

    def targets(self, y, name: str = "y_train") -> tuple[KernelSystem, torch.Tensor]:
        """Targets as ``(N, m)`` columns; returns the system with ``squeeze`` set."""
        y = as_float_tensor(y, name, dtype=self.k.dtype, device=self.k.device)
        if self.n_out is None:
            if y.ndim == 1 and y.shape[0] == self.n:
                return KernelSystem(self.k, self.n, None, True), y[:, None]
            if y.ndim == 2 and y.shape[0] == self.n:
                return self, y
            raise ValueError(
                f"{name} must be (n,) or (n, m) with n = {self.n} (the kernel's size); got "
                f"shape {tuple(y.shape)}."
            )
        if y.ndim == 2 and y.shape == (self.n, self.n_out):
            return self, y.reshape(-1, 1)
        raise ValueError(
            f"with a full (n, n, O, O) kernel, {name} must be (n, O) = ({self.n}, {self.n_out});"
            f" got shape {tuple(y.shape)}."
        )

    def outputs(self, y, n_rows: int, n_cols: int, name: str) -> torch.Tensor:
        """Initial outputs (a number, or shaped like the targets) as ``(rows, n_cols)`` columns.

        Args:
            y: The values; a number broadcasts.
            n_rows: Number of examples (``n`` for training outputs, ``n_test`` for test).
            n_cols: Columns of the flattened targets (``m``, or 1 for the full layout).
            name: The argument's name.
        """
        rows = n_rows if self.n_out is None else n_rows * self.n_out
        y = as_float_tensor(y, name, dtype=self.k.dtype, device=self.k.device)
        if y.ndim == 0:
            return y.expand(rows, n_cols)
        if self.n_out is None:
            if self.squeeze and y.shape == (n_rows,):
                return y[:, None]
            if not self.squeeze and y.shape == (n_rows, n_cols):
                return y
            want = f"({n_rows},)" if self.squeeze else f"({n_rows}, {n_cols})"
        else:
            if y.shape == (n_rows, self.n_out):
                return y.reshape(-1, 1)
            want = f"({n_rows}, {self.n_out})"
        raise ValueError(f"{name} must be a number or have shape {want}; got {tuple(y.shape)}.")

    def cross(self, k_test_train, name: str = "k_test_train") -> torch.Tensor:
        """A test-train kernel as ``(R, N)`` rows (``R = n_test`` or ``n_test * O``)."""
        kt = as_float_tensor(k_test_train, name, dtype=self.k.dtype, device=self.k.device)
        if self.n_out is None:
            if kt.ndim == 2 and kt.shape[1] == self.n:
                return kt
            raise ValueError(
                f"{name} must be (n_test, {self.n}) to match k_train_train; got shape "
                f"{tuple(kt.shape)}."
            )
        o = self.n_out
        if kt.ndim == 4 and kt.shape[1] == self.n and kt.shape[2:] == (o, o):
            nt = int(kt.shape[0])
            return kt.permute(0, 2, 1, 3).reshape(nt * o, self.n * o)
        raise ValueError(
            f"{name} must be a full (n_test, {self.n}, {o}, {o}) kernel to match k_train_train;"
            f" got shape {tuple(kt.shape)}."
        )

    def test_rows(self, kt_flat: torch.Tensor) -> int:
        """Number of test examples behind ``R`` flattened rows."""
        return kt_flat.shape[0] if self.n_out is None else kt_flat.shape[0] // self.n_out

    def unflatten(self, v: torch.Tensor) -> torch.Tensor:
        """``(..., rows, m)`` columns back to the targets' layout."""
        if self.n_out is not None:
            return v.reshape(*v.shape[:-2], -1, self.n_out)
        return v[..., 0] if self.squeeze else v
