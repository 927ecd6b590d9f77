"""Closed-form gradient-descent dynamics of kernel models on the squared loss.

The solution of Lee et al. 2019, eqs. 9-11.

A model whose tangent kernel stays fixed (the infinitely wide network, or a finite network's
linearization ``f0(x) + J(x) (theta - theta0)``) trained by gradient descent on the squared
loss moves in function space along a linear ODE, solved once by one eigendecomposition of
the training kernel ``K = V diag(lambda) V^T``. With ``G_t = V diag(g_t(lambda + r)) V^T``,

    f_t(x) = f_0(x) + K(x, X) G_t (Y - f_0(X))      (training points: ``x = X``)

where for gradient flow ``g_t(mu) = (1 - exp(-eta mu t)) / mu`` and for discrete gradient
descent with step count ``t``, ``g_t(mu) = (1 - (1 - eta mu)^t) / mu``. Without ridge this is
``f_t(X) = Y + exp(-eta K t) (f_0(X) - Y)`` (Jacot et al. 2018; Lee et al. 2019, eqs. 9-11).

Loss conventions (``reduction``):

- ``"sum"``: ``L = (1/2) sum_{i,a} (f_a(x_i) - y_ia)^2`` (Lee et al. 2019).
- ``"mean"``: ``L = (1/2) mean_{i,a} (f_a(x_i) - y_ia)^2``, the mean over all ``|Y| = n * m``
  target entries; identical dynamics with ``eta`` replaced by ``eta / |Y|``.

``ridge = r`` is weight decay toward the initial parameters of the linearized model,
``L + (r/2) ||theta - theta_0||^2`` (scaled by ``1/|Y|`` too under ``"mean"``); at ``t = inf``
predictions equal kernel ridge regression with ``K + r I``.
"""

from __future__ import annotations

import math
import warnings
from typing import NamedTuple

import torch

from ntkit.predict._checks import (
    KernelSystem,
    as_times,
    check_learning_rate,
    check_reduction,
    resolve_ridge,
    symmetric_eigh,
)

__all__ = ["MSEPredictor", "Prediction", "gradient_descent_mse", "max_learning_rate"]


class Prediction(NamedTuple):
    """Outputs of a trained kernel model.

    Attributes:
        train: Training outputs, ``(T, n, m)`` for ``T`` times or ``(n, m)`` for a scalar
            time (``(n,)``-shaped targets give ``(T, n)`` / ``(n,)``; full ``(n, n, O, O)``
            kernels give ``(T, n, O)`` / ``(n, O)``).
        test: Test outputs shaped likewise with ``n_test`` rows, or ``None`` when no
            ``k_test_train`` was given.
    """

    train: torch.Tensor
    test: torch.Tensor | None


def _matmul_times(a: torch.Tensor, coef: torch.Tensor) -> torch.Tensor:
    """``a @ coef[t]`` for every ``t`` with one GEMM: ``(R, N) x (T, N, m) -> (T, R, m)``."""
    t, n, m = coef.shape
    out = a @ coef.permute(1, 0, 2).reshape(n, t * m)
    return out.reshape(a.shape[0], t, m).permute(1, 0, 2)


class SpectralFlow:
    """The eigendecomposition of a training kernel and the time filters ``g_t``.

    Shared by :class:`MSEPredictor` and the infinite-ensemble predictor.

    Attributes:
        evals: ``(N,)`` eigenvalues, ascending, numerical null space set to exactly 0.
        evecs: ``(N, N)`` eigenvectors (columns).
        eta: Effective learning rate (``learning_rate``, divided by ``|Y|`` under "mean").
        ridge: Absolute ridge ``r``.
        discrete: Whether ``t`` counts discrete gradient-descent steps.
    """

    def __init__(self, k: torch.Tensor, eta: float, ridge: float, discrete: bool):
        self.evals, self.evecs = symmetric_eigh(k)
        self.eta = float(eta)
        self.ridge = float(ridge)
        self.discrete = bool(discrete)
        self.null = self.evals == 0
        top = float(self.evals[-1]) + self.ridge
        if self.discrete and self.eta * top >= 2.0:
            warnings.warn(
                f"discrete gradient descent diverges: learning rate x (lambda_max + ridge) = "
                f"{self.eta * top:.4g} >= 2 (use max_learning_rate to pick a stable one).",
                UserWarning,
                stacklevel=3,
            )

    def gain(self, t: torch.Tensor) -> torch.Tensor:
        """``g_t(lambda_i + r)`` for times ``t`` ``(T,)``: ``(T, N)``; 0 on the null space."""
        mu = self.evals + self.ridge
        mu_safe = torch.where(self.null, torch.ones_like(mu), mu)
        tt = t[:, None]
        inf = torch.isinf(tt)
        t_fin = torch.where(inf, torch.zeros_like(tt), tt)
        if self.discrete:
            a = self.eta * mu_safe
            small = a < 1
            one_minus_pow = torch.where(
                small,
                -torch.expm1(t_fin * torch.log1p(-torch.where(small, a, torch.zeros_like(a)))),
                1 - torch.pow(1 - a, t_fin),
            )
            g = one_minus_pow / mu_safe
            g_inf = torch.where(a < 2, 1 / mu_safe, torch.full_like(a, math.inf))
        else:
            z = self.eta * mu_safe * t_fin
            phi = torch.where(z > 0, -torch.expm1(-z) / torch.where(z > 0, z, 1.0), 1.0)
            g = self.eta * t_fin * phi
            g_inf = 1 / mu_safe
        g = torch.where(inf, g_inf.expand_as(g), g)
        g = torch.where(self.null, torch.zeros_like(g), g)
        if not bool(torch.isfinite(g).all()):
            raise ValueError(
                "discrete gradient descent diverged (learning rate x (lambda_max + ridge) >= 2):"
                " outputs at these step counts are not finite. Lower the learning rate below "
                "max_learning_rate(k_train_train)."
            )
        return g


class MSEPredictor:
    """Outputs of gradient descent on the squared loss at any time (see the module docs).

    Built by :func:`gradient_descent_mse`; holds one eigendecomposition of the training
    kernel, shared by every call. The loss convention (``(1/2) sum`` or ``(1/2) mean`` of
    squared errors) is the one given to :func:`gradient_descent_mse` (``reduction``).

    Call it as ``predictor(t, fx_train_0=0.0, fx_test_0=0.0, k_test_train=None)``:

    Args:
        t: A time or a 1-D tensor/list of ``T`` times, ``>= 0``; ``inf`` gives the converged
            model. Gradient flow: continuous time (in units where ``eta t`` is the integrated
            learning rate). Discrete GD: integer step counts.
        fx_train_0: Initial outputs on the training inputs, shaped like ``y_train`` (or a
            number, broadcast; ``0`` is the infinite ensemble's mean).
        fx_test_0: Initial outputs on the test inputs, ``(n_test, m)`` (or a number).
        k_test_train: ``(n_test, n)`` (or full ``(n_test, n, O, O)``) kernel between test and
            training inputs; ``None`` skips test predictions.

    Returns:
        A :class:`Prediction` ``(train, test)``.
    """

    def __init__(self, system: KernelSystem, y: torch.Tensor, flow: SpectralFlow):
        self._sys = system
        self._y = y
        self._flow = flow

    @property
    def eigenvalues(self) -> torch.Tensor:
        """``(N,)`` eigenvalues of the training kernel (ascending, null space exactly 0)."""
        return self._flow.evals

    def __call__(self, t, fx_train_0=0.0, fx_test_0=0.0, k_test_train=None) -> Prediction:
        sys, flow, y = self._sys, self._flow, self._y
        times, scalar = as_times(t, discrete=flow.discrete, dtype=y.dtype, device=y.device)
        f0 = sys.outputs(fx_train_0, sys.n, y.shape[1], "fx_train_0")
        d0 = flow.evecs.mT @ (y - f0)  # shape: (N, m)
        coef = flow.gain(times)[:, :, None] * d0[None]  # shape: (T, N, m)
        train = f0 + _matmul_times(flow.evecs, flow.evals[None, :, None] * coef)
        return build_prediction(
            sys,
            y,
            train,
            scalar,
            k_test_train,
            fx_test_0,
            lambda kt: _matmul_times(kt @ flow.evecs, coef),
        )


def build_prediction(
    sys, y, train, scalar: bool, k_test_train, fx_test_0, test_change
) -> Prediction:
    """Package train outputs and, given ``k_test_train``, the test outputs.

    Args:
        sys: The :class:`KernelSystem` of the training kernel.
        y: ``(N, m)`` flattened targets.
        train: ``(T, N, m)`` training outputs at the ``T`` times.
        scalar: Whether a single time was asked for (drop the time axis).
        k_test_train: Kernel between test and training inputs, or ``None``.
        fx_test_0: Initial test outputs (or 0).
        test_change: ``kt: (N_test, N) -> (T, N_test, m)``, the change of the test outputs.

    Returns:
        A :class:`Prediction` in the caller's output layout.

    Raises:
        ValueError: ``fx_test_0`` given without ``k_test_train``, or mismatched shapes.
    """
    test = None
    if k_test_train is not None:
        kt = sys.cross(k_test_train)
        ft0 = sys.outputs(fx_test_0, sys.test_rows(kt), y.shape[1], "fx_test_0")
        test = sys.unflatten(ft0 + test_change(kt))
    elif not (isinstance(fx_test_0, (int, float)) and fx_test_0 == 0):
        raise ValueError("fx_test_0 was given without k_test_train; pass both or neither.")
    train = sys.unflatten(train)
    if scalar:
        train = train[0]
        test = None if test is None else test[0]
    return Prediction(train, test)


def _effective_rate(learning_rate: float, reduction: str, n_targets: int) -> float:
    learning_rate = check_learning_rate(learning_rate)
    check_reduction(reduction)
    return learning_rate / (n_targets if reduction == "mean" else 1)


def gradient_descent_mse(
    k_train_train,
    y_train,
    *,
    learning_rate: float = 1.0,
    ridge: float = 0.0,
    ridge_relative: float | None = None,
    reduction: str = "sum",
    discrete: bool = False,
) -> MSEPredictor:
    """Predictor of gradient descent on the squared loss with a fixed kernel.

    Closed form of Lee et al. 2019, eqs. 9-11.

    One eigendecomposition of ``k_train_train`` (``O(N^3)``) is shared by all calls; each
    call costs ``O(N^2 (T m + n_test))``. Kernel math runs in the kernel's dtype (float64
    recommended) on its device.

    Loss convention: ``reduction="sum"`` trains ``L = (1/2) sum_{i,a} (f_ia - y_ia)^2``;
    ``"mean"`` trains ``L = (1/2) mean_{i,a} (f_ia - y_ia)^2`` (mean over all ``|Y|`` target
    entries, i.e. ``eta`` is divided by ``|Y|``).

    Null space: eigen-directions with ``lambda <= N * eps * lambda_max`` (e.g. duplicated
    training inputs) are never trained: the training residual keeps its initial value there
    and test outputs ignore it (exact when the test kernel is consistent with the training
    kernel). Results are finite for singular kernels; duplicated inputs with different
    targets converge to the average target.

    Example:
        >>> pred = gradient_descent_mse(k_xx, y, learning_rate=0.1)        # doctest: +SKIP
        >>> out = pred(torch.logspace(0, 4, 50), fx_train_0=f0, k_test_train=k_tx)
        >>> out.train.shape, out.test.shape      # (50, n, m), (50, n_test, m)

    Args:
        k_train_train: ``(n, n)`` kernel shared by all outputs, or the full ``(n, n, O, O)``
            kernel of an empirical NTK.
        y_train: ``(n,)`` or ``(n, m)`` targets (``(n, O)`` with a full kernel).
        learning_rate: ``eta > 0``.
        ridge: Weight decay ``r >= 0`` toward the initial parameters; at ``t = inf`` the
            model is kernel ridge regression with ``K + r I``.
        ridge_relative: ``r = ridge_relative * mean(diag K)`` instead of ``ridge``.
        reduction: ``"sum"`` or ``"mean"`` (see above).
        discrete: ``False``: gradient flow (continuous time). ``True``: gradient descent with
            step ``eta``; ``t`` counts steps. Warns when ``eta (lambda_max + r) >= 2``
            (divergence) and raises if a requested output is not finite.

    Returns:
        An :class:`MSEPredictor`: ``predictor(t, fx_train_0=0., fx_test_0=0.,
        k_test_train=None) -> Prediction(train, test)``.

    Raises:
        ValueError: non-square kernel, targets/outputs of mismatched shape, NaN/Inf,
            negative ridge or non-positive learning rate, unknown reduction.
    """
    return MSEPredictor(
        *spectral_setup(
            k_train_train, y_train, learning_rate, ridge, ridge_relative, reduction, discrete
        )
    )


def spectral_setup(
    k_train_train,
    y_train,
    learning_rate,
    ridge,
    ridge_relative,
    reduction,
    discrete,
    name: str = "k_train_train",
):
    """Checked system, targets and :class:`SpectralFlow` shared by the MSE predictors.

    Returns:
        ``(sys, y, flow)``: the :class:`KernelSystem`, ``(N, m)`` targets, the flow.
    """
    sys = KernelSystem.from_kernel(k_train_train, name)
    sys, y = sys.targets(y_train)
    r = resolve_ridge(ridge, ridge_relative, sys.k)
    eta = _effective_rate(learning_rate, reduction, y.numel())
    return sys, y, SpectralFlow(sys.k, eta, r, discrete)


def _lambda_max(k: torch.Tensor) -> float:
    """Largest eigenvalue of a symmetric PSD matrix (dense ``eigvalsh`` or Lanczos)."""
    n = k.shape[0]
    if n <= 2048:
        return float(torch.linalg.eigvalsh((k + k.mT) / 2)[-1])
    from scipy.sparse.linalg import LinearOperator, eigsh

    def mv(v):
        vt = torch.as_tensor(v, dtype=k.dtype, device=k.device).reshape(n, -1)
        return (k @ vt).cpu().numpy()

    op = LinearOperator((n, n), matvec=mv, matmat=mv, dtype=float)
    return float(eigsh(op, k=1, which="LA", return_eigenvectors=False, tol=1e-10)[0])


def max_learning_rate(
    k_train_train,
    *,
    n_outputs: int = 1,
    reduction: str = "sum",
    ridge: float = 0.0,
    momentum: float = 0.0,
) -> float:
    """Largest learning rate for which discrete gradient descent on the squared loss converges.

    Gradient descent with step ``eta`` is stable iff ``eta (lambda_max + r) < 2`` (heavy-ball
    momentum ``beta``: ``< 2 (1 + beta)``), so this returns ``2 (1 + beta) / (lambda_max + r)``,
    times ``|Y| = n * n_outputs`` under ``reduction="mean"``. Learning rates at or above it
    diverge; half of it is the fastest non-oscillating choice for the top mode.

    Args:
        k_train_train: ``(n, n)`` shared kernel or full ``(n, n, O, O)`` kernel.
        n_outputs: Outputs ``m`` per example (only with ``reduction="mean"`` and a shared
            kernel; a full kernel carries its own ``O``).
        reduction: ``"sum"``: ``(1/2) sum`` of squared errors; ``"mean"``: ``(1/2) mean``.
        ridge: Weight decay ``r`` (see :func:`gradient_descent_mse`).
        momentum: Heavy-ball momentum ``0 <= beta < 1``.

    Returns:
        The critical learning rate (a float).
    """
    sys = KernelSystem.from_kernel(k_train_train)
    check_reduction(reduction)
    if not 0 <= momentum < 1:
        raise ValueError(f"momentum must be in [0, 1); got {momentum}.")
    if int(n_outputs) != n_outputs or n_outputs < 1:
        raise ValueError(f"n_outputs must be a positive integer; got {n_outputs}.")
    r = resolve_ridge(ridge, None, sys.k)
    top = _lambda_max(sys.k) + r
    if top <= 0:
        raise ValueError("k_train_train is zero: every learning rate is stable.")
    n_targets = sys.size * (n_outputs if sys.n_out is None else 1)
    scale = n_targets if reduction == "mean" else 1
    return 2.0 * (1.0 + momentum) * scale / top
