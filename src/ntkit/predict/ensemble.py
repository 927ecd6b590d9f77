"""The infinite ensemble of wide networks trained by gradient descent (Lee et al. 2019, sec. 2.3).

At infinite width the initial outputs are a GP with the NNGP kernel ``K`` and training on
the squared loss moves them linearly: ``f_t(x) = f_0(x) + Theta(x, X) G_t (Y - f_0(X))``
(:mod:`ntkit.predict.dynamics`). Averaging over initializations gives the Gaussian

    mean_t(x)    = Theta(x, X) G_t Y
    cov_t(x, x') = K(x, x') - A_t(x) K(X, x') - K(x, X) A_t(x')^T + A_t(x) K(X, X) A_t(x')^T

with ``A_t(x) = Theta(x, X) G_t``; without ridge ``G_t = Theta^{-1} (I - exp(-eta Theta t))``
(Lee et al. 2019, sec. 2.3). At ``t = inf`` the mean is NTK regression.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from ntkit.kernel import Kernel
from ntkit.predict._checks import as_times
from ntkit.predict.dynamics import _matmul_times, spectral_setup

__all__ = ["Ensemble", "EnsemblePredictor", "gradient_descent_mse_ensemble"]

KINDS = ("ntk", "nngp")
COV_MODES = ("full", "diag", "none")


class Ensemble(NamedTuple):
    """Mean and covariance of the ensemble's outputs at the requested times.

    Attributes:
        mean: ``(T, n_test, m)`` (``(n_test, m)`` for a scalar time; ``m`` dropped for 1-D
            targets).
        cov: ``(T, n_test, n_test)`` covariance shared by all outputs (``(n_test, n_test)``
            for a scalar time); ``(T, n_test)`` variances with ``cov="diag"``; ``None`` with
            ``cov="none"``.
    """

    mean: torch.Tensor
    cov: torch.Tensor | None


def _kernel_fn(net):
    if hasattr(net, "kernel") and callable(net.kernel):
        return net.kernel
    if callable(net):
        return net
    raise TypeError(
        "net must be an ntkit layer description (with .kernel) or a function "
        f"kernel_fn(x1, x2) -> ntkit.Kernel; got {type(net).__name__}."
    )


def _pick(k: Kernel, name: str, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(k, Kernel):
        raise TypeError(f"the kernel function must return an ntkit.Kernel; got {type(k)}.")
    for label, value in (("nngp", k.nngp), ("ntk", k.ntk if kind == "ntk" else k.nngp)):
        if value is None or value.ndim != 2:
            shape = None if value is None else tuple(value.shape)
            raise ValueError(
                f"{name}: the ensemble needs (n1, n2) {label} matrices (a network ending in a "
                f"readout, with the NTK computed); got {shape}."
            )
    return k.nngp, (k.ntk if kind == "ntk" else k.nngp)


class EnsemblePredictor:
    """Mean/covariance of the trained infinite ensemble (see the module docs).

    Built by :func:`gradient_descent_mse_ensemble`, whose ``reduction`` fixes the loss
    convention (``(1/2) sum`` or ``(1/2) mean`` of squared errors).

    Call it as ``predictor(t, x_test=None, *, cov="full")``:

    Args:
        t: A time or ``T`` times (see :func:`~ntkit.predict.gradient_descent_mse`; ``inf``
            for the converged ensemble).
        x_test: ``(n_test, *in_shape)`` test inputs; ``None`` predicts on the training
            inputs.
        cov: ``"full"`` (default) for the covariance matrix, ``"diag"`` for variances only
            (cheaper), ``"none"`` for the mean only (skips ``K(x_test, x_test)``).

    Returns:
        An :class:`Ensemble` ``(mean, cov)``.
    """

    def __init__(self, kernel_fn, x_train, y, sys, flow, k_nngp, kind, kernel_kwargs):
        self._kernel_fn = kernel_fn
        self._x_train = x_train
        self._y, self._sys, self._flow = y, sys, flow
        self._k_nngp = k_nngp
        self._kind = kind
        self._kw = kernel_kwargs

    def __call__(self, t, x_test=None, *, cov: str = "full") -> Ensemble:
        if cov not in COV_MODES:
            raise ValueError(f"cov must be one of {COV_MODES}; got {cov!r}.")
        flow, y, sys = self._flow, self._y, self._sys
        k_xx_nngp = self._k_nngp
        times, scalar = as_times(t, discrete=flow.discrete, dtype=y.dtype, device=y.device)
        gain = flow.gain(times)  # shape: (T, N)
        if x_test is None:
            k_nngp_sx, k_theta_sx = k_xx_nngp, sys.k
            k_ss = k_xx_nngp
        else:
            k_nngp_sx, k_theta_sx = _pick(
                self._kernel_fn(x_test, self._x_train, **self._kw),
                "kernel(x_test, x_train)",
                self._kind,
            )
            k_nngp_sx = k_nngp_sx.to(y.dtype)
            k_theta_sx = k_theta_sx.to(y.dtype)
            if k_theta_sx.shape[1] != sys.n:
                raise ValueError(
                    f"kernel(x_test, x_train) has shape {tuple(k_theta_sx.shape)}; expected "
                    f"(n_test, {sys.n})."
                )
            k_ss = None
            if cov != "none":
                k_ss = self._kernel_fn(x_test, None, **self._kw).nngp.to(y.dtype)
        b = k_theta_sx @ flow.evecs  # shape: (R, N)
        d0 = flow.evecs.mT @ y
        mean = _matmul_times(b, gain[:, :, None] * d0[None])
        mean = sys.unflatten(mean)
        c = None
        if cov != "none":
            # A_t = b diag(g_t) V^T;  A_t K(X, x) = b diag(g_t) (V^T K(X, x))
            vk = flow.evecs.mT @ k_nngp_sx.mT  # shape: (N, R)
            vkv = flow.evecs.mT @ k_xx_nngp @ flow.evecs  # shape: (N, N)
            bg = b[None] * gain[:, None, :]  # shape: (T, R, N)
            if cov == "full":
                cross = bg @ vk  # shape: (T, R, R)
                c = k_ss[None] - cross - cross.mT + bg @ vkv @ bg.mT
                c = (c + c.mT) / 2
            else:
                cross = (bg * vk.mT[None]).sum(-1)  # shape: (T, R)
                quad = ((bg @ vkv) * bg).sum(-1)
                c = (torch.diagonal(k_ss)[None] - 2 * cross + quad).clamp_min(0)
        if scalar:
            mean = mean[0]
            c = None if c is None else c[0]
        return Ensemble(mean, c)


def gradient_descent_mse_ensemble(
    net,
    x_train,
    y_train,
    *,
    learning_rate: float = 1.0,
    ridge: float = 0.0,
    ridge_relative: float | None = None,
    reduction: str = "sum",
    discrete: bool = False,
    kernel: str = "ntk",
    dtype: torch.dtype | None = None,
    max_memory: int | None = None,
) -> EnsemblePredictor:
    """Predictor of the infinite ensemble of networks trained on the squared loss.

    Computes ``net.kernel(x_train)`` (NNGP and NTK) and one eigendecomposition now; each
    call computes the test kernels it needs.

    Loss convention: ``reduction="sum"``: ``L = (1/2) sum_{i,a} (f_ia - y_ia)^2``;
    ``"mean"``: ``(1/2) mean`` over all ``n * m`` target entries (``eta`` divided by
    ``n * m``). ``ridge`` is weight decay toward initialization (see
    :func:`~ntkit.predict.gradient_descent_mse`).

    Example:
        >>> ens = gradient_descent_mse_ensemble(net, x_train, y_train)   # doctest: +SKIP
        >>> mean, cov = ens(torch.tensor([10.0, float("inf")]), x_test)
        >>> mean.shape, cov.shape            # (2, n_test, m), (2, n_test, n_test)

    Args:
        net: An :class:`ntkit.layers.Layer` ending in a readout (``(n1, n2)`` kernels), or a
            function ``kernel_fn(x1, x2) -> ntkit.Kernel``.
        x_train: ``(n, *in_shape)`` training inputs.
        y_train: ``(n,)`` or ``(n, m)`` targets.
        learning_rate: ``eta > 0``.
        ridge: Weight decay ``r >= 0``.
        ridge_relative: ``r = ridge_relative * mean(diag Theta)`` instead.
        reduction: ``"sum"`` or ``"mean"``.
        discrete: Discrete gradient descent (``t`` counts steps) instead of gradient flow.
        kernel: ``"ntk"``: every layer trained (tangent kernel ``Theta``); ``"nngp"``: only
            the readout trained (``Theta = K``), whose ``t = inf`` limit is the NNGP posterior.
        dtype: Kernel dtype (float64 by default); passed to ``net.kernel``.
        max_memory: Memory budget passed to ``net.kernel``.

    Returns:
        An :class:`EnsemblePredictor`: ``predictor(t, x_test=None, *, cov="full") ->
        Ensemble(mean, cov)``.

    Raises:
        ValueError: mismatched shapes, NaN/Inf, bad options.
        TypeError: ``net`` has no kernel function.
    """
    if kernel not in KINDS:
        raise ValueError(f"kernel must be one of {KINDS}; got {kernel!r}.")
    kernel_fn = _kernel_fn(net)
    kw = {}
    if hasattr(net, "kernel"):
        get = ("nngp", "ntk") if kernel == "ntk" else "nngp"
        kw = {"dtype": dtype, "max_memory": max_memory, "get": get}
    k_nngp, k_theta = _pick(kernel_fn(x_train, None, **kw), "kernel(x_train)", kernel)
    sys, y, flow = spectral_setup(
        k_theta,
        y_train,
        learning_rate,
        ridge,
        ridge_relative,
        reduction,
        discrete,
        "kernel(x_train)",
    )
    return EnsemblePredictor(kernel_fn, x_train, y, sys, flow, k_nngp.to(y.dtype), kernel, kw)
