"""Function-space gradient descent for losses without a closed form (e.g. cross-entropy).

With a fixed kernel ``K`` the outputs on the training inputs follow the ODE
``df/dt = -eta K grad_f L(f, Y)`` and any other input follows
``df(x)/dt = -eta K(x, X) grad_f L(f, Y)``. Writing ``f_t = f_0 - eta K g_t`` with
``g_t = int_0^t grad_f L(f_s) ds``, the ODE is integrated once for ``g`` (``N * m``
unknowns, :func:`scipy.integrate.solve_ivp`) and every output follows from it:
``f_t(x) = f_0(x) - eta K(x, X) g_t``.

Heavy-ball momentum ``beta`` integrates ``f'' + (1 - beta) f' = -eta K grad_f L(f)`` with
``f'(0) = 0`` (time in steps; the continuous limit of ``v <- beta v - eta grad``,
``theta <- theta + v`` when ``eta`` is small and ``beta`` close to 1).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from ntkit.predict._checks import KernelSystem, as_times, check_learning_rate, check_reduction
from ntkit.predict.dynamics import Prediction, build_prediction

__all__ = ["ODEPredictor", "gradient_descent"]

LOSSES = ("mse", "cross_entropy")


def _builtin_loss(name: str, reduction: str, n_examples: int) -> Callable:
    if name == "mse":

        def mse(f, y):
            total = 0.5 * ((f - y) ** 2).sum()
            return total / y.numel() if reduction == "mean" else total

        return mse

    def cross_entropy(f, y):
        total = -(y * torch.log_softmax(f, dim=-1)).sum()
        return total / n_examples if reduction == "mean" else total

    return cross_entropy


class ODEPredictor:
    """Outputs of function-space gradient descent at given times (see the module docs).

    Built by :func:`gradient_descent`. Call it as
    ``predictor(t, fx_train_0=0.0, fx_test_0=0.0, k_test_train=None)`` with finite times
    ``t >= 0`` (a number or a 1-D list/tensor); each call integrates the ODE once up to
    ``max(t)`` (on the CPU, in float64) and returns a :class:`Prediction`. The loss and its
    convention (``(1/2) sum`` / ``(1/2) mean`` for MSE, sum / mean over examples for
    cross-entropy) are those given to :func:`gradient_descent`.

    Attributes:
        last_solution: The ``scipy`` ``OdeResult`` of the latest call (``nfev``, ``status``...).
    """

    def __init__(self, system, y, loss, eta, momentum, method, rtol, atol):
        self._sys, self._y, self._loss = system, y, loss
        self._eta, self._momentum = eta, momentum
        self._method, self._rtol, self._atol = method, rtol, atol
        self.last_solution = None

    def _grad(self, f_flat: torch.Tensor) -> torch.Tensor:
        sys, y = self._sys, self._y
        f = sys.unflatten(f_flat).detach().requires_grad_(True)
        target = sys.unflatten(y)
        with torch.enable_grad():
            value = self._loss(f, target)
            if not isinstance(value, torch.Tensor) or value.numel() != 1:
                raise TypeError("loss(fx, y) must return a scalar tensor.")
            (grad,) = torch.autograd.grad(value, f)
        return grad.reshape(f_flat.shape)

    def __call__(self, t, fx_train_0=0.0, fx_test_0=0.0, k_test_train=None) -> Prediction:
        from scipy.integrate import solve_ivp

        sys, y, eta = self._sys, self._y, self._eta
        k = sys.k
        times, scalar = as_times(t, discrete=False, dtype=torch.float64, device="cpu")
        if not bool(torch.isfinite(times).all()):
            raise ValueError("gradient_descent integrates an ODE: times must be finite.")
        f0 = sys.outputs(fx_train_0, sys.n, y.shape[1], "fx_train_0")
        shape = y.shape
        size = y.numel()

        def rhs(_s, state):
            g = torch.as_tensor(state[:size], dtype=k.dtype, device=k.device).reshape(shape)
            grad = self._grad(f0 - eta * (k @ g)).reshape(-1).cpu().numpy()
            if self._momentum is None:
                return grad
            vel = state[size:]
            return np.concatenate([vel, grad - (1.0 - self._momentum) * vel])

        n_state = size if self._momentum is None else 2 * size
        t_eval = np.unique(times.numpy())
        t_end = float(t_eval[-1])
        if t_end == 0.0:
            states = np.zeros((n_state, 1))
        else:
            sol = solve_ivp(
                rhs,
                (0.0, t_end),
                np.zeros(n_state),
                method=self._method,
                t_eval=t_eval,
                rtol=self._rtol,
                atol=self._atol,
            )
            self.last_solution = sol
            if sol.status != 0:
                raise RuntimeError(f"ODE integration failed ({self._method}): {sol.message}")
            states = sol.y
        # shape: (T_unique, N, m) -> reordered to the requested times
        g_all = torch.as_tensor(states[:size].T, dtype=k.dtype, device=k.device)
        index = torch.as_tensor(np.searchsorted(t_eval, times.numpy()), device=k.device)
        g_all = g_all.reshape(-1, *shape)[index]
        train = f0 - eta * torch.einsum("ij,tjm->tim", k, g_all)
        return build_prediction(
            sys,
            y,
            train,
            scalar,
            k_test_train,
            fx_test_0,
            lambda kt: -eta * torch.einsum("ij,tjm->tim", kt, g_all),
        )


def gradient_descent(
    loss: str | Callable,
    k_train_train,
    y_train,
    *,
    learning_rate: float = 1.0,
    momentum: float | None = None,
    reduction: str | None = None,
    method: str = "RK45",
    rtol: float = 1e-8,
    atol: float = 1e-10,
) -> ODEPredictor:
    """Gradient descent on any differentiable loss with a fixed kernel, by ODE integration.

    Integrates ``df/dt = -eta K grad_f L`` with :func:`scipy.integrate.solve_ivp` (any of its
    methods; use ``"LSODA"`` or ``"BDF"`` for stiff problems, e.g. long times with a wide
    spectrum). Gradients come from autograd, on the kernel's device; the integrator state
    lives on the CPU in float64.

    Loss conventions:

    - ``"mse"``: ``reduction="sum"`` (default) ``L = (1/2) sum_{i,a} (f_ia - y_ia)^2``;
      ``"mean"``: ``(1/2) mean`` over all ``n * m`` entries (the same as
      :func:`gradient_descent_mse`).
    - ``"cross_entropy"``: ``L = -sum_i sum_a y_ia log softmax(f_i)_a`` (``"sum"``) or that
      divided by ``n`` (``"mean"``, as ``torch.nn.functional.cross_entropy``); ``y`` holds
      one-hot rows or class probabilities, shape ``(n, m)``.
    - a callable ``loss(fx, y) -> scalar tensor`` with ``fx``, ``y`` shaped like
      ``y_train``: its own convention (``reduction`` must be left ``None``).

    Args:
        loss: ``"mse"``, ``"cross_entropy"`` or a callable (see above).
        k_train_train: ``(n, n)`` shared kernel or full ``(n, n, O, O)`` kernel.
        y_train: ``(n, m)`` targets (``(n,)`` allowed for ``"mse"`` and callables).
        learning_rate: ``eta > 0``.
        momentum: ``None`` for gradient flow, or heavy-ball ``beta`` in ``[0, 1)``
            (see the module docs).
        reduction: ``"sum"`` or ``"mean"`` for the built-in losses (default ``"sum"``).
        method: ``solve_ivp`` method.
        rtol: Relative tolerance of the integrator.
        atol: Absolute tolerance of the integrator.

    Returns:
        An :class:`ODEPredictor`: ``predictor(t, fx_train_0=0., fx_test_0=0.,
        k_test_train=None) -> Prediction(train, test)``.

    Raises:
        ValueError: bad shapes, NaN/Inf, unknown loss or reduction, bad momentum.
        TypeError: ``loss`` is neither a known name nor a callable.
    """
    sys = KernelSystem.from_kernel(k_train_train)
    sys, y = sys.targets(y_train)
    learning_rate = check_learning_rate(learning_rate)
    if momentum is not None and not 0 <= momentum < 1:
        raise ValueError(f"momentum must be None or in [0, 1); got {momentum}.")
    if isinstance(loss, str):
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES} or a callable; got {loss!r}.")
        reduction = check_reduction("sum" if reduction is None else reduction)
        if loss == "cross_entropy" and (sys.squeeze or sys.n_out is None and y.shape[1] < 2):
            raise ValueError(
                f"cross_entropy needs (n, m) targets with m >= 2 classes; got {tuple(y.shape)}."
            )
        fn = _builtin_loss(loss, reduction, sys.n)
    elif callable(loss):
        if reduction is not None:
            raise ValueError(
                "reduction applies to the built-in losses only; a callable loss "
                "carries its own convention."
            )
        fn = loss
    else:
        raise TypeError(f"loss must be a string or a callable; got {type(loss).__name__}.")
    return ODEPredictor(sys, y, fn, float(learning_rate), momentum, method, rtol, atol)
