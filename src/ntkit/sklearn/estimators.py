"""``NTKRegressor`` and ``NTKClassifier``: infinitely wide networks as scikit-learn estimators.

Both compute the network's infinite-width kernel (NTK, or the NNGP with ``kernel="nngp"``)
and predict what gradient descent on the squared loss makes of it:

- ``t=None``: the converged model, kernel (ridge) regression
  ``f(x) = K(x, X) (K + ridge I)^+ Y`` (:func:`ntkit.predict.kernel_regression`);
- ``t`` finite: gradient flow for time ``t`` at learning rate ``learning_rate`` on
  ``(1/2) sum_i w_i ||f(x_i) - y_i||^2`` with weight decay ``ridge`` toward the
  initialization, from zero initial outputs (the infinite ensemble's mean; Lee et al. 2019),
  by :func:`ntkit.predict.gradient_descent_mse`.

``kernel="ntk"`` trains every layer; ``kernel="nngp"`` trains only the readout (whose
``t=None`` limit is the NNGP posterior mean, i.e. Bayesian inference with the infinitely
wide network as prior and Gaussian noise of variance ``ridge``).
"""

from __future__ import annotations

import hashlib
import math

import numpy as np
import scipy.special
import torch
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.utils.metaestimators import available_if
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import _check_sample_weight, check_is_fitted, validate_data

from ntkit.predict import conjugate_gradient, gradient_descent_mse
from ntkit.predict._checks import symmetric_eigh
from ntkit.predict.regression import solve_psd
from ntkit.predict.solvers import FunctionOperator, kernel_operator
from ntkit.settings import default_max_memory
from ntkit.sklearn._compute import KINDS, kernel_block, kernel_diagonal
from ntkit.sklearn._specs import build_spec, check_readout, rows_to_batch

__all__ = ["NTKClassifier", "NTKRegressor"]

SOLVERS = ("auto", "direct", "cg")

#: Gauss-Hermite nodes (probabilists') for the class probabilities of ``predict_proba``.
_GH_NODES, _GH_WEIGHTS = np.polynomial.hermite_e.hermegauss(64)
_GH_WEIGHTS = _GH_WEIGHTS / math.sqrt(2.0 * math.pi)


def _x_key(x: np.ndarray) -> tuple:
    """A cheap identity of an input array: its shape and a hash of its bytes (O(n d))."""
    return x.shape, hashlib.blake2b(np.ascontiguousarray(x).tobytes(), digest_size=16).digest()


class _NTKBase(BaseEstimator):
    """Shared parameters, validation, kernel computation and solves of the two estimators."""

    def __init__(
        self,
        spec=None,
        *,
        kernel: str = "ntk",
        depth: int = 2,
        width: int = 512,
        w_std: float = 1.0,
        b_std: float | None = 0.1,
        activation="relu",
        parameterization: str = "ntk",
        in_shape: tuple[int, ...] | None = None,
        ridge: float = 0.0,
        t: float | None = None,
        learning_rate: float = 1.0,
        solver: str = "auto",
        max_memory: int | None = None,
        progress: bool | None = None,
    ):
        self.spec = spec
        self.kernel = kernel
        self.depth = depth
        self.width = width
        self.w_std = w_std
        self.b_std = b_std
        self.activation = activation
        self.parameterization = parameterization
        self.in_shape = in_shape
        self.ridge = ridge
        self.t = t
        self.learning_rate = learning_rate
        self.solver = solver
        self.max_memory = max_memory
        self.progress = progress

    # --- parameters ---------------------------------------------------------------------
    def _hyperparameters(self) -> dict:
        return {
            "depth": self.depth,
            "width": self.width,
            "w_std": self.w_std,
            "b_std": self.b_std,
            "activation": self.activation,
            "parameterization": self.parameterization,
        }

    def _check_params(self) -> None:
        name = type(self).__name__
        if self.kernel not in KINDS:
            raise ValueError(f"{name}: kernel must be one of {KINDS}; got {self.kernel!r}.")
        if self.solver not in SOLVERS:
            raise ValueError(f"{name}: solver must be one of {SOLVERS}; got {self.solver!r}.")
        for label, value, lo_ok in (
            ("ridge", self.ridge, True),
            ("learning_rate", self.learning_rate, False),
        ):
            if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
                raise TypeError(f"{name}: {label} must be a float; got {type(value).__name__}.")
            if not math.isfinite(value) or value < 0 or (value == 0 and not lo_ok):
                bound = ">= 0" if lo_ok else "> 0"
                raise ValueError(f"{name}: {label} must be finite and {bound}; got {value}.")
        if self.t is not None:
            if isinstance(self.t, bool) or not isinstance(self.t, (int, float, np.number)):
                raise TypeError(f"{name}: t must be a float or None; got {type(self.t).__name__}.")
            if math.isnan(self.t) or self.t < 0:
                raise ValueError(f"{name}: t must be >= 0 (or None/inf: converged); got {self.t}.")
        if self.solver == "cg" and self._finite_t:
            raise ValueError(
                f"{name}: solver='cg' solves the converged model (t=None); a finite t needs "
                "the eigendecomposition of solver='direct'/'auto'."
            )

    @property
    def _finite_t(self) -> bool:
        return self.t is not None and math.isfinite(self.t)

    # --- fitting ------------------------------------------------------------------------
    def _fit_targets(self, X, Y: np.ndarray, sample_weight) -> None:
        """Compute the training kernel and solve; ``Y`` is ``(n, m)`` float64."""
        self._check_params()
        net = build_spec(self.spec, self._hyperparameters(), owner=type(self).__name__)
        x = rows_to_batch(X, self.in_shape)
        check_readout(net, tuple(x.shape[1:]), owner=type(self).__name__)
        w = _check_sample_weight(sample_weight, X, dtype=np.float64, ensure_non_negative=True)
        s = torch.from_numpy(np.sqrt(w))  # K~ = S K S, Y~ = S Y with S = diag(sqrt(w))
        y = torch.from_numpy(np.array(Y, dtype=np.float64, order="C", copy=True))
        self.net_ = net
        self._x = x
        self._s = s
        self._y = y
        self._train_key = _x_key(X)
        self._cache: dict = {}  # mutated in place by predict (no new attributes)
        self._k_train = None
        ridge = float(self.ridge)
        if self._use_cg(x.shape[0]):
            op = kernel_operator(net, x, get=self.kernel, max_memory=self.max_memory)
            weighted = FunctionOperator(lambda v: s[:, None] * (op @ (s[:, None] * v)), x.shape[0])
            res = conjugate_gradient(weighted, s[:, None] * y, ridge=ridge)
            self._alpha = s[:, None] * res.solution
            self.n_iter_ = int(res.iterations)
            return
        k = kernel_block(
            net, x, None, kind=self.kernel, max_memory=self.max_memory, progress=self.progress
        )
        self._k_train = k
        kw = s[:, None] * k * s[None, :]
        if self._finite_t:
            self._flow = gradient_descent_mse(
                kw, s[:, None] * y, learning_rate=float(self.learning_rate), ridge=ridge
            )
        else:
            self._alpha = s[:, None] * solve_psd(kw, s[:, None] * y, ridge=ridge)

    def _use_cg(self, n: int) -> bool:
        """Whether to solve by conjugate gradients.

        ``solver="cg"``, or ``"auto"`` when the direct solve's ``3 n^2`` float64 entries
        (kernel, factor, a weighted copy) exceed the memory budget and ``t`` is ``None``.
        """
        if self.solver != "auto":
            return self.solver == "cg"
        budget = default_max_memory() if self.max_memory is None else int(self.max_memory)
        return not self._finite_t and 3 * 8 * n * n > budget

    # --- predicting ---------------------------------------------------------------------
    def _check_x(self, X) -> np.ndarray:
        check_is_fitted(self)
        return validate_data(self, X, reset=False, accept_sparse=False, dtype=np.float64)

    def _k_test(self, X: np.ndarray) -> torch.Tensor:
        """``K(X, X_train)``; reused for the training inputs and for a repeated ``X``."""
        key = _x_key(X)
        if key == self._train_key and self._k_train is not None:
            return self._k_train
        if self._cache.get("key") != key:
            x = rows_to_batch(X, self.in_shape)
            k = kernel_block(
                self.net_,
                x,
                self._x,
                kind=self.kernel,
                max_memory=self.max_memory,
                progress=self.progress,
            )
            self._cache.update(key=key, k=k)  # one test kernel kept; "eigh" stays
        return self._cache["k"]

    def _outputs(self, X) -> np.ndarray:
        """``(n_test, m)`` network outputs at ``X``."""
        X = self._check_x(X)
        kt = self._k_test(X)
        if self._finite_t:
            out = self._flow(float(self.t), k_test_train=kt * self._s[None, :]).test
        else:
            out = kt @ self._alpha
        return out.numpy()

    def _posterior_variance(self, X: np.ndarray) -> np.ndarray:
        """GP posterior variance ``k(x, x) - k_x^T S (S K S + ridge I)^+ S k_x``, ``(n_test,)``.

        Gaussian noise of variance ``ridge / w_i`` on sample ``i``: the posterior whose mean
        is the weighted kernel ridge regression of :meth:`predict`.
        """
        if self._k_train is None:
            raise ValueError(
                "predict_proba needs the stored training kernel (posterior variances); fit "
                "with solver='direct'."
            )
        if "eigh" not in self._cache:
            s = self._s
            evals, evecs = symmetric_eigh(s[:, None] * self._k_train * s[None, :])
            lam = evals + float(self.ridge)
            inv = torch.where(lam > 0, 1.0 / torch.where(lam > 0, lam, 1.0), 0.0)
            self._cache["eigh"] = (evecs, inv)
        evecs, inv = self._cache["eigh"]
        x = rows_to_batch(X, self.in_shape)
        diag = kernel_diagonal(self.net_, x, kind=self.kernel, max_memory=self.max_memory)
        proj = (self._k_test(X) * self._s[None, :]) @ evecs  # shape: (n_test, n)
        var = diag - (proj * proj) @ inv
        return var.clamp_min(0.0).numpy()


class NTKRegressor(RegressorMixin, _NTKBase):
    """Infinitely wide network regression: kernel regression or gradient flow with its NTK/NNGP.

    Example:
        >>> import numpy as np
        >>> from ntkit.sklearn import NTKRegressor
        >>> X = np.random.default_rng(0).normal(size=(50, 3)); y = np.sin(X).sum(1)
        >>> NTKRegressor(depth=2, w_std=1.5, ridge=1e-3).fit(X, y).predict(X[:2]).shape
        (2,)

    Args:
        spec: ``None`` (the default MLP built from ``depth``, ``width``, ``w_std``, ``b_std``,
            ``activation``, ``parameterization``; see :func:`ntkit.sklearn.mlp`), an
            :class:`ntkit.layers.Layer`, or a factory ``f(**hyperparameters) -> Layer``
            called with those of the six hyperparameters it accepts. It must end in a
            readout (per-sample output ``(O,)``); ``O`` does not matter (``K ⊗ I``).
        kernel: ``"ntk"`` (every layer trained) or ``"nngp"`` (only the readout).
        depth: Hidden layers of the default MLP.
        width: Hidden width (affects the kernel only under ``parameterization="standard"``).
        w_std: Weight standard deviation of every ``Dense`` of the default MLP.
        b_std: Bias standard deviation (``None``: no biases).
        activation: Activation name (``"relu"``, ``"erf"``, ``"gelu"``, ...) or layer.
        parameterization: ``"ntk"`` or ``"standard"``.
        in_shape: Per-sample shape each row of ``X`` is reshaped to (e.g. ``(1, 8, 8)``
            for a convolutional spec, channels first); ``None`` keeps ``(n_features,)``.
        ridge: Absolute ridge / weight decay ``>= 0`` (``0``: ridgeless, pseudo-inverse).
        t: Training time of gradient flow (``eta t`` is the integrated learning rate);
            ``None`` or ``inf``: converged.
        learning_rate: ``eta > 0`` of the gradient flow (only ``eta t`` matters).
        solver: ``"direct"``: the kernel is computed once and factored (Cholesky with a
            ridge, a stable pseudo-inverse without); ``"cg"``: matrix-free preconditioned
            conjugate gradients (the training kernel is recomputed in row blocks and never
            stored; ``t=None`` only); ``"auto"``: direct unless its ``3 n^2`` float64
            entries exceed ``max_memory`` (default: half the available memory) and
            ``t=None``, then CG.
        max_memory: Memory budget in bytes for each kernel computation (tiles inside it).
        progress: Progress bar over kernel tiles; ``None`` (default): only for kernels of at
            least 2^24 entries (seconds of work), so grid searches stay quiet.

    Attributes:
        net_: The :class:`ntkit.layers.Layer` the kernel was computed from.
        n_features_in_: Number of features seen in ``fit``.
        n_iter_: Conjugate-gradient iterations (``solver="cg"`` only).
    """

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        tags.input_tags.sparse = False
        return tags

    def fit(self, X, y, sample_weight=None):
        """Compute the training kernel and solve.

        Args:
            X: ``(n, n_features)`` inputs (dense; NaN/Inf refused).
            y: ``(n,)`` or ``(n, m)`` targets.
            sample_weight: ``(n,)`` non-negative weights of the squared loss
                ``(1/2) sum_i w_i ||f(x_i) - y_i||^2`` (``0`` drops a sample).

        Returns:
            self.
        """
        X, y = validate_data(
            self, X, y, accept_sparse=False, dtype=np.float64, multi_output=True, y_numeric=True
        )
        self._single = y.ndim == 1
        self._fit_targets(X, y.reshape(len(y), -1), sample_weight)
        return self

    def predict(self, X) -> np.ndarray:
        """Predictions ``(n_test,)`` (or ``(n_test, m)`` for 2-D targets), float64."""
        out = self._outputs(X)
        return out[:, 0] if self._single else out


class NTKClassifier(ClassifierMixin, _NTKBase):
    """Infinitely wide network classification with one-hot squared-loss targets.

    As in the NTK literature (Lee et al. 2019; Arora et al. 2019), the network is trained on
    the squared loss to one-hot targets, centered to zero mean: ``1 - 1/C`` for the true
    class and ``-1/C`` for the others (``0.9``/``-0.1`` with 10 classes); each class is one
    output and the prediction is the class of the largest output. Parameters are those of
    :class:`NTKRegressor`.

    ``predict_proba`` exists for the converged model (``t=None``, where the outputs are a
    Gaussian-process posterior): the probability that each class has the largest output
    under the GP posterior with the kernel as prior and Gaussian noise of variance
    ``ridge / w_i`` (``kernel="nngp"``: the Bayesian posterior of the infinitely wide
    network; ``kernel="ntk"``: the NTK-GP posterior, the distribution of He et al. 2020's
    deep ensembles). Outputs of different classes are independent with equal variance
    ``s^2(x)`` (kernels are ``K ⊗ I``), so ``P(c) = E_z[prod_{c' != c} Phi(z + (mu_c -
    mu_c') / s)]``, computed by 64-point Gauss-Hermite quadrature. At a finite ``t`` the
    outputs are not a posterior and ``predict_proba`` is not available.

    Attributes:
        classes_: The class labels.
        net_: The :class:`ntkit.layers.Layer` the kernel was computed from.
        n_features_in_: Number of features seen in ``fit``.
    """

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = False
        return tags

    def fit(self, X, y, sample_weight=None):
        """Compute the training kernel and solve for the one-hot targets.

        Args:
            X: ``(n, n_features)`` inputs.
            y: ``(n,)`` class labels.
            sample_weight: ``(n,)`` non-negative sample weights of the squared loss.

        Returns:
            self.
        """
        X, y = validate_data(self, X, y, accept_sparse=False, dtype=np.float64)
        check_classification_targets(y)
        self.classes_, idx = np.unique(y, return_inverse=True)
        c = len(self.classes_)
        if c < 2:
            raise ValueError(
                f"NTKClassifier needs samples of at least 2 classes; got 1 class "
                f"({self.classes_[0]!r})."
            )
        targets = np.full((len(y), c), -1.0 / c)
        targets[np.arange(len(y)), idx] += 1.0
        self._fit_targets(X, targets, sample_weight)
        return self

    def decision_function(self, X) -> np.ndarray:
        """The outputs: ``(n_test, C)``, or ``f_1 - f_0`` ``(n_test,)`` for two classes."""
        out = self._outputs(X)
        return out[:, 1] - out[:, 0] if out.shape[1] == 2 else out

    def predict(self, X) -> np.ndarray:
        """The class with the largest output, ``(n_test,)``."""
        out = self._outputs(X)
        return self.classes_[np.argmax(out, axis=1)]

    def _has_proba(self) -> bool:
        return self.t is None or not math.isfinite(self.t)

    @available_if(_has_proba)
    def predict_proba(self, X) -> np.ndarray:
        """Posterior probability that each class has the largest output, ``(n_test, C)``."""
        X = self._check_x(X)
        mu = self._outputs(X)
        sd = np.sqrt(self._posterior_variance(X))
        return _argmax_probabilities(mu, sd)

    @available_if(_has_proba)
    def predict_log_proba(self, X) -> np.ndarray:
        """Logarithm of :meth:`predict_proba`."""
        with np.errstate(divide="ignore"):
            return np.log(self.predict_proba(X))


def _argmax_probabilities(mu: np.ndarray, sd: np.ndarray) -> np.ndarray:
    """``P(argmax_c f_c = c)`` for independent ``f_c ~ N(mu_c, sd^2)`` (per row).

    Args:
        mu: ``(n, C)`` means.
        sd: ``(n,)`` common standard deviations (0 gives the indicator of the largest mean,
            ties shared equally).

    Returns:
        ``(n, C)`` probabilities, rows summing to 1.
    """
    n, c = mu.shape
    out = np.empty((n, c))
    zero = sd <= 0
    if zero.any():
        m = mu[zero]
        top = m == m.max(axis=1, keepdims=True)
        out[zero] = top / top.sum(axis=1, keepdims=True)
    idx = np.arange(c)
    for start in range(0, n, 256):  # bounded temporaries: 256 x C x C x 64 entries
        rows = np.arange(start, min(n, start + 256))
        rows = rows[~zero[rows]]
        if not len(rows):
            continue
        m, s = mu[rows], sd[rows][:, None, None]
        gap = (m[:, :, None] - m[:, None, :]) / s  # shape: (r, C, C'), (mu_c - mu_c') / sd
        # log prod_{c' != c} Phi(z + gap) at every node; the c' = c factor is removed below.
        logp = scipy.special.log_ndtr(gap[..., None] + _GH_NODES)  # shape: (r, C, C', K)
        logp[:, idx, idx, :] = 0.0
        p = np.exp(logp.sum(axis=2)) @ _GH_WEIGHTS  # shape: (r, C)
        out[rows] = p / p.sum(axis=1, keepdims=True)
    return out
