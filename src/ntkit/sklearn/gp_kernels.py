"""``NTKKernel`` and ``NNGPKernel``: any ntkit spec as a scikit-learn Gaussian-process kernel.

The kernel's float hyperparameters (``w_std`` and ``b_std`` by default, any other float
parameter of a spec factory on request) are scikit-learn ``Hyperparameter`` objects, fitted
by ``GaussianProcessRegressor`` through the log marginal likelihood; gradients are with
respect to their logarithms, as scikit-learn expects.
"""

from __future__ import annotations

import inspect
import math

import numpy as np
import torch
from sklearn.gaussian_process.kernels import Hyperparameter, Kernel
from sklearn.utils import check_array

from ntkit.layers.base import Layer
from ntkit.sklearn._compute import kernel_block, kernel_diagonal, show_progress
from ntkit.sklearn._specs import (
    MLP_DEFAULTS,
    build_spec,
    check_readout,
    factory_parameters,
    rows_to_batch,
)

__all__ = ["NNGPKernel", "NTKKernel"]

#: Bounds of ``w_std`` and ``b_std`` when ``param_bounds`` does not say otherwise.
DEFAULT_BOUNDS = {"w_std": (1e-2, 1e2), "b_std": (1e-3, 1e2)}

GRADIENTS = ("auto", "autograd", "finite_difference")

#: Step in log space of the central finite differences: ``eps^(1/3)`` balances the
#: truncation error ``O(h^2)`` against rounding ``O(eps / h)`` (about 1e-10 relative).
FD_STEP = float(np.finfo(np.float64).eps) ** (1.0 / 3.0)

_OWN = ("spec", "param_bounds", "in_shape", "gradient", "max_memory", "progress")
_RESERVED = frozenset(
    {*_OWN, "theta", "bounds", "hyperparameters", "n_dims", "diag", "requires_vector_input"}
)


class _NetworkKernel(Kernel):
    """Shared implementation; subclasses set :attr:`kind` (``"ntk"`` or ``"nngp"``)."""

    kind = "ntk"

    def __init__(
        self,
        spec=None,
        *,
        param_bounds: dict | None = None,
        in_shape: tuple[int, ...] | None = None,
        gradient: str = "auto",
        max_memory: int | None = None,
        progress: bool | None = None,
        **hyperparameters,
    ):
        self.spec = spec
        self.param_bounds = param_bounds
        self.in_shape = in_shape
        self.gradient = gradient
        self.max_memory = max_memory
        self.progress = progress
        defaults, open_ended = self._declared(spec)
        unknown = sorted(set(hyperparameters) - set(defaults))
        if unknown and not open_ended:
            raise ValueError(
                f"{type(self).__name__}: unknown hyperparameter(s) {unknown} for this spec; "
                f"it takes {sorted(defaults)}."
            )
        values = {**defaults, **hyperparameters}
        missing = sorted(k for k, v in values.items() if v is inspect.Parameter.empty)
        if missing:
            raise ValueError(
                f"{type(self).__name__}: the spec factory needs values for {missing}; pass "
                "them as keyword arguments."
            )
        clash = sorted(set(values) & _RESERVED)
        if clash:
            raise ValueError(
                f"{type(self).__name__}: spec parameters may not be named {clash} (reserved "
                "by the kernel); rename them in the factory."
            )
        self._names = tuple(values)
        for name, value in values.items():
            setattr(self, name, value)

    @staticmethod
    def _declared(spec) -> tuple[dict, bool]:
        """The spec's hyperparameters with their defaults, and whether it takes ``**kw``."""
        if spec is None:
            return dict(MLP_DEFAULTS), False
        if isinstance(spec, Layer) or not callable(spec):
            return {}, False
        return factory_parameters(spec)

    # --- scikit-learn's parameter protocol ----------------------------------------------
    def get_params(self, deep: bool = True) -> dict:
        """The constructor's arguments: the five options and every spec hyperparameter."""
        params = {name: getattr(self, name) for name in _OWN}
        params.update({name: getattr(self, name) for name in self._names})
        return params

    def _values(self) -> dict:
        return {name: getattr(self, name) for name in self._names}

    def _resolved_bounds(self) -> dict:
        values = self._values()
        bounds = {k: b for k, b in DEFAULT_BOUNDS.items() if _positive_float(values.get(k, None))}
        if self.param_bounds is not None:
            if not isinstance(self.param_bounds, dict):
                raise TypeError(
                    f"param_bounds must be a dict name -> (low, high) or 'fixed'; got "
                    f"{type(self.param_bounds).__name__}."
                )
            bounds.update(self.param_bounds)
        for name, b in bounds.items():
            if name not in values:
                raise ValueError(
                    f"param_bounds names {name!r}, which is not a hyperparameter of this "
                    f"spec ({sorted(values)})."
                )
            if not _positive_float(values[name]):
                raise ValueError(
                    f"hyperparameter {name!r} must be a positive float to be fitted in log "
                    f"space; got {values[name]!r}."
                )
            if not (isinstance(b, str) and b == "fixed"):
                lo, hi = (float(v) for v in b)
                if not 0 < lo < hi:
                    raise ValueError(f"bounds of {name!r} must satisfy 0 < low < high; got {b}.")
        return bounds

    @property
    def hyperparameters(self) -> list[Hyperparameter]:
        """The float hyperparameters (free or ``"fixed"``), in the spec's order."""
        bounds = self._resolved_bounds()
        return [
            Hyperparameter(name, "numeric", bounds[name]) for name in self._names if name in bounds
        ]

    # --- the kernel ---------------------------------------------------------------------
    def _net(self, values: dict | None = None) -> Layer:
        return build_spec(
            self.spec, self._values() if values is None else values, owner=type(self).__name__
        )

    def _batch(self, X, name: str) -> torch.Tensor:
        X = check_array(X, dtype=np.float64, accept_sparse=False, ensure_all_finite=True)
        return rows_to_batch(X, self.in_shape, name=name)

    def __call__(self, X, Y=None, eval_gradient: bool = False):
        """Kernel matrix ``k(X, Y)`` and, optionally, its gradient in log hyperparameters.

        Args:
            X: ``(n, n_features)`` inputs (rows reshaped to ``in_shape`` if given).
            Y: ``(m, n_features)`` inputs, or ``None`` for ``k(X, X)``.
            eval_gradient: Also return ``dK/dlog(theta)``; only with ``Y=None``.

        Returns:
            ``K`` ``(n, m)`` float64, and with ``eval_gradient`` the ``(n, n, n_free)``
            gradient with respect to the logarithms of the free hyperparameters.
        """
        x = self._batch(X, "X")
        y = None if Y is None else self._batch(Y, "Y")
        if eval_gradient and y is not None:
            raise ValueError("Gradient can only be evaluated when Y is None.")
        net = self._net()
        check_readout(net, tuple(x.shape[1:]), owner=type(self).__name__)
        if eval_gradient:
            free = [h.name for h in self.hyperparameters if not h.fixed]
            k, grad = self._gradient(x, free)
            if k is not None:  # the forward-mode pass's primal is the kernel itself
                return k, grad
            return self._kernel(net, x, None), grad
        return self._kernel(net, x, y)

    def _kernel(self, net, x, y) -> np.ndarray:
        return kernel_block(
            net, x, y, kind=self.kind, max_memory=self.max_memory, progress=self.progress
        ).numpy()

    def diag(self, X) -> np.ndarray:
        """``k(x_i, x_i)`` ``(n,)`` in ``O(n)`` work, equal to ``np.diag(self(X))``."""
        x = self._batch(X, "X")
        net = self._net()
        check_readout(net, tuple(x.shape[1:]), owner=type(self).__name__)
        return kernel_diagonal(net, x, kind=self.kind, max_memory=self.max_memory).numpy()

    def is_stationary(self) -> bool:
        """Network kernels are not stationary."""
        return False

    @property
    def requires_vector_input(self) -> bool:
        """Rows of numbers (reshaped by ``in_shape``)."""
        return True

    # --- gradients ----------------------------------------------------------------------
    def _gradient(self, x: torch.Tensor, names: list[str]) -> tuple[np.ndarray | None, np.ndarray]:
        """``(K or None, dK/dlog(theta) (n, n, len(names)))``.

        Forward-mode AD returns the kernel too (the primal of its dual pass); differences
        return ``None`` for it.
        """
        n = x.shape[0]
        if self.gradient not in GRADIENTS:
            raise ValueError(f"gradient must be one of {GRADIENTS}; got {self.gradient!r}.")
        if not names:
            return None, np.empty((n, n, 0))
        if self.gradient != "finite_difference":
            fused = self._fused(x, names)
            if fused is not None:
                return fused
            try:
                for name in names:  # cheap probe on two samples before the full pass
                    self._check_forward_ad(x[:2], name)
                passes = [self._forward_ad(x, name) for name in names]
                return passes[0][0], np.stack([t for _, t in passes], axis=-1)
            except _NoForwardADError as err:
                if self.gradient == "autograd":
                    raise NotImplementedError(str(err)) from err
        return None, np.stack([self._finite_difference(x, name) for name in names], axis=-1)

    def _bar(self, x: torch.Tensor) -> bool:
        """Whether a kernel of ``x`` with itself shows a progress bar (as ``kernel_block``)."""
        # never for the two-sample probes
        return show_progress(self.progress, x.shape[0], x.shape[0]) and x.shape[0] > 2

    def _fused(self, x: torch.Tensor, names: list[str]) -> tuple[np.ndarray, np.ndarray] | None:
        """``(K, dK/dlog(theta))`` in one in-place pass for fully connected ReLU-family specs.

        ``None`` when the spec has other layers (see :mod:`ntkit.sklearn._tangents`), or when
        the derivatives disagree with central differences on a two-sample probe (a factory
        that drops a hyperparameter's tangent on its way into the layers).
        """
        import torch.autograd.forward_ad as fwad

        from ntkit.sklearn._tangents import kernel_and_tangents

        values = self._values()
        with fwad.dual_level():
            nets = []
            for name in names:
                v = float(values[name])
                dual = fwad.make_dual(
                    torch.tensor(v, dtype=torch.float64), torch.tensor(v, dtype=torch.float64)
                )
                nets.append(self._net({**values, name: dual}))

            def run(xs, progress=False):
                return kernel_and_tangents(
                    self._net(),
                    nets,
                    xs,
                    kind=self.kind,
                    max_memory=self.max_memory,
                    progress=progress,
                )

            probe = run(x[:2])
            if probe is None:
                return None
            for i, name in enumerate(names):
                fd = self._finite_difference(x[:2], name)
                ad = probe[1][..., i].numpy()
                if not np.allclose(ad, fd, rtol=1e-5, atol=1e-7 * float(np.abs(fd).max())):
                    return None
            result = run(x, self._bar(x))
        if result is None:
            return None
        return result[0].numpy(), result[1].numpy()

    def _forward_ad(self, x: torch.Tensor, name: str) -> tuple[np.ndarray, np.ndarray]:
        """``(K, dK/dlog(theta))`` by forward-mode automatic differentiation (one pass)."""
        import torch.autograd.forward_ad as fwad

        value = float(getattr(self, name))
        with fwad.dual_level():
            primal = torch.tensor(value, dtype=torch.float64)
            # tangent theta: the directional derivative along log(theta)
            dual = fwad.make_dual(primal, torch.tensor(value, dtype=torch.float64))
            try:
                net = self._net({**self._values(), name: dual})
                # net.kernel itself (not the tile assembler): the differentiable entry point
                get = ("nngp", "ntk") if self.kind == "ntk" else "nngp"
                k = getattr(
                    net.kernel(
                        x,
                        get=get,
                        dtype=torch.float64,
                        max_memory=self.max_memory,
                        progress=self._bar(x),
                    ),
                    self.kind,
                )
            except (NotImplementedError, RuntimeError, TypeError, ValueError) as err:
                raise _NoForwardADError(
                    f"the spec's kernel has no forward-mode derivative with respect to "
                    f"{name!r}: {err}"
                ) from err
            primal, tangent = fwad.unpack_dual(k)
        if tangent is None:
            raise _NoForwardADError(
                f"the spec's layers do not carry a tensor-valued {name!r} through the kernel "
                "(differentiable kernels unavailable), so autograd sees no dependence."
            )
        out = tangent.numpy().copy()
        if not np.isfinite(out).all():
            raise _NoForwardADError(
                f"forward-mode derivative with respect to {name!r} is not finite."
            )
        return primal.numpy().copy(), out

    def _check_forward_ad(self, x: torch.Tensor, name: str) -> None:
        """Forward-mode AD on a small probe, cross-checked against central differences.

        Guards against a layer that drops the tangent of a parameter on the way (a
        derivative that would be finite but wrong).

        Raises:
            _NoForwardADError: unsupported, non-finite, or disagreeing with differences.
        """
        ad = self._forward_ad(x, name)[1]
        fd = self._finite_difference(x, name)
        scale = float(np.abs(fd).max())
        if not np.allclose(ad, fd, rtol=1e-5, atol=1e-7 * scale):
            raise _NoForwardADError(
                f"forward-mode derivative with respect to {name!r} disagrees with central "
                f"differences on a probe (max difference {np.abs(ad - fd).max():.2e}); a layer "
                "of this spec does not carry the parameter's tangent."
            )

    def _finite_difference(self, x: torch.Tensor, name: str) -> np.ndarray:
        """``dK/dlog(theta)`` by central differences in ``log(theta)`` (step ``FD_STEP``)."""
        value = float(getattr(self, name))
        out = []
        for sign in (1.0, -1.0):
            net = self._net({**self._values(), name: value * math.exp(sign * FD_STEP)})
            out.append(
                kernel_block(
                    net, x, None, kind=self.kind, max_memory=self.max_memory, progress=self._bar(x)
                )
            )
        return ((out[0] - out[1]) / (2.0 * FD_STEP)).numpy()

    def __repr__(self) -> str:
        shown = ", ".join(
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v!r}"
            for k, v in self._values().items()
        )
        spec = "" if self.spec is None else f"spec={getattr(self.spec, '__name__', self.spec)}, "
        return f"{type(self).__name__}({spec}{shown})"


class _NoForwardADError(Exception):
    """Forward-mode AD does not reach through this spec's kernel."""


def _positive_float(v) -> bool:
    return (
        isinstance(v, (float, int, np.floating, np.integer))
        and not isinstance(v, bool)
        and math.isfinite(v)
        and v > 0
    )


class NTKKernel(_NetworkKernel):
    """The infinite-width NTK of any ntkit spec as a scikit-learn GP kernel.

    Example:
        >>> from sklearn.gaussian_process import GaussianProcessRegressor
        >>> from sklearn.gaussian_process.kernels import WhiteKernel
        >>> from ntkit.sklearn import NTKKernel
        >>> gp = GaussianProcessRegressor(NTKKernel(depth=2) + WhiteKernel())  # doctest: +SKIP

    Args:
        spec: ``None`` (the default MLP, :func:`ntkit.sklearn.mlp`: hyperparameters
            ``depth``, ``width``, ``w_std``, ``b_std``, ``activation``, ``parameterization``),
            a factory ``f(**hyperparameters) -> Layer`` (its keyword parameters, with their
            defaults, become the kernel's parameters), or a fixed ``Layer``. The spec must
            end in a readout (per-sample output ``(O,)``).
        param_bounds: ``{name: (low, high) or "fixed"}`` for the float hyperparameters
            fitted in log space; ``w_std`` and ``b_std`` are free by default (bounds
            ``(1e-2, 1e2)`` and ``(1e-3, 1e2)``) when they are positive floats; any other
            positive float parameter of a factory becomes free by naming it here.
        in_shape: Per-sample shape each row is reshaped to (channels first); ``None``: rows.
        gradient: ``"auto"`` (forward-mode autograd where the spec's layers support it,
            otherwise central finite differences in log space), ``"autograd"`` (raise if
            unsupported) or ``"finite_difference"``.
        max_memory: Memory budget in bytes of each kernel computation (tiled inside it).
        progress: Progress bar over kernel tiles; ``None`` (default): only for kernels of at
            least 2^24 entries (an optimizer's many smaller evaluations stay quiet).
        **hyperparameters: Values of the spec's hyperparameters (e.g. ``w_std=1.5``).
    """

    kind = "ntk"


class NNGPKernel(_NetworkKernel):
    """The infinite-width NNGP covariance of any ntkit spec as a scikit-learn GP kernel.

    The prior of a ``GaussianProcessRegressor`` with this kernel is the distribution of the
    infinitely wide network's output at initialization (Bayesian inference with the network
    as prior). Arguments as :class:`NTKKernel`.
    """

    kind = "nngp"
