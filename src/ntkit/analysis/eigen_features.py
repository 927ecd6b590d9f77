"""Eigen-features of kernel predictors (Tsilivis & Kempe 2022, arXiv 2210.05577).

The ridgeless kernel regression predictor ``f(x) = k(x, X) K^+ Y`` splits along the training
kernel's eigenvectors ``K = sum_i lambda_i v_i v_i^T`` (descending ``lambda_i``) into

    f(x) = sum_i f_i(x),   f_i(x) = k(x, X) v_i (v_i^T Y) / lambda_i,

one *eigen-feature* per eigenvector (eigenvalues at or below ``n * eps * lambda_max`` are the
numerical null space and carry no feature, as in :func:`ntkit.predict.kernel_regression`).
Each ``f_i`` is itself a kernel predictor with dual weights ``w_i = v_i (v_i^T Y) / lambda_i``,
so it can be evaluated on new inputs and attacked through autograd
(:class:`KernelPredictor`, :mod:`ntkit.attacks`): the paper finds that the features at the
top of the spectrum are the robust ones.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ntkit.predict._checks import as_float_tensor, symmetric_eigh

__all__ = [
    "KernelPredictor",
    "eigen_feature_weights",
    "eigen_features",
    "feature_accuracy",
    "feature_robust_accuracy",
]


def _targets(y, n: int) -> tuple[torch.Tensor, bool]:
    if not isinstance(y, torch.Tensor) or y.is_complex() or y.dtype == torch.bool:
        raise TypeError(
            f"y_train must be a real torch.Tensor of shape ({n},) or ({n}, m); got "
            f"{getattr(y, 'dtype', type(y).__name__)}."
        )
    if y.ndim not in (1, 2) or y.shape[0] != n:
        raise ValueError(f"y_train must be ({n},) or ({n}, m); got {tuple(y.shape)}.")
    y = as_float_tensor(y, "y_train", dtype=torch.float64)
    return (y[:, None], True) if y.ndim == 1 else (y, False)


def eigen_feature_weights(k_train_train, y_train, *, top: int | None = None) -> torch.Tensor:
    """Dual weights ``w_i = v_i (v_i^T Y) / lambda_i`` of the eigen-features, largest first.

    Args:
        k_train_train: ``(n, n)`` symmetric PSD training kernel.
        y_train: ``(n,)`` or ``(n, m)`` targets.
        top: Keep the ``top`` largest-eigenvalue features (default: all non-null ones).

    Returns:
        ``(n_features, n, m)`` float64 weights (``m = 1`` for 1-D targets); the predictor of
        feature ``i`` is ``k(x, X) @ w[i]``, and ``w.sum(0)`` is ``K^+ Y``.

    Raises:
        ValueError: non-square kernel, targets of the wrong length, ``top < 1``.
        TypeError: targets that are not a real tensor.
    """
    k = as_float_tensor(k_train_train, "k_train_train", dtype=torch.float64)
    if k.ndim != 2 or k.shape[0] != k.shape[1]:
        raise ValueError(f"k_train_train must be square (n, n); got {tuple(k.shape)}.")
    y, _ = _targets(y_train, k.shape[0])
    if top is not None and not (isinstance(top, int) and top >= 1):
        raise ValueError(f"top must be an int >= 1 or None; got {top!r}.")
    evals, evecs = symmetric_eigh(k)  # ascending; null space set to 0
    order = torch.argsort(evals, descending=True)
    evals, evecs = evals[order], evecs[:, order]
    keep = int((evals > 0).sum()) if top is None else min(top, int((evals > 0).sum()))
    evals, evecs = evals[:keep], evecs[:, :keep]
    coef = (evecs.T @ y) / evals[:, None]  # (n_features, m)
    return evecs.T[:, :, None] * coef[:, None, :]


def eigen_features(k_train_train, y_train, k_test_train, *, top: int | None = None) -> torch.Tensor:
    """Contributions ``f_i(x)`` of each eigen-feature to the kernel regression predictor.

    ``eigen_features(...).sum(0)`` equals ``kernel_regression(k_train_train, y_train,
    k_test_train)`` (ridgeless) when ``top`` is ``None``.

    Args:
        k_train_train: ``(n, n)`` training kernel.
        y_train: ``(n,)`` or ``(n, m)`` targets.
        k_test_train: ``(n_test, n)`` kernel between test and training inputs.
        top: Keep only the ``top`` largest-eigenvalue features.

    Returns:
        ``(n_features, n_test)`` for 1-D targets, else ``(n_features, n_test, m)``; features
        sorted by decreasing eigenvalue.
    """
    w = eigen_feature_weights(k_train_train, y_train, top=top)
    kt = as_float_tensor(k_test_train, "k_test_train", dtype=torch.float64)
    if kt.ndim != 2 or kt.shape[1] != w.shape[1]:
        raise ValueError(f"k_test_train must be (n_test, {w.shape[1]}); got {tuple(kt.shape)}.")
    out = torch.einsum("tn,fnm->ftm", kt, w)
    return out[..., 0] if y_train.ndim == 1 else out


def feature_accuracy(contributions: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Accuracy of each feature used alone as a classifier.

    Args:
        contributions: ``(n_features, n_test)`` for two classes (prediction ``f_i > 0`` means
            class 1) or ``(n_features, n_test, C)`` (prediction ``argmax``).
        labels: ``(n_test,)`` integer labels (``{0, 1}`` for two classes).

    Returns:
        ``(n_features,)`` float64 accuracies.
    """
    if labels.is_floating_point() or labels.ndim != 1:
        raise TypeError(f"labels must be integer class labels (n,); got {labels.dtype}.")
    if contributions.ndim == 2:
        pred = (contributions > 0).long()
    elif contributions.ndim == 3:
        pred = contributions.argmax(-1)
    else:
        raise ValueError(f"contributions must be 2-D or 3-D; got {tuple(contributions.shape)}.")
    if pred.shape[1] != labels.shape[0]:
        raise ValueError("contributions and labels disagree in the number of test points.")
    return (pred == labels[None, :]).double().mean(1)


class KernelPredictor(torch.nn.Module):
    """``x -> kernel_fn(x, X) @ weights``: a kernel predictor differentiable in its input.

    Args:
        kernel_fn: ``(x1, x2) -> (n1, n2)`` kernel, differentiable in ``x1`` (e.g.
            ``lambda a, b: net.kernel(a, b, get="ntk").ntk``).
        x_train: ``(n, *in_shape)`` training inputs ``X``.
        weights: ``(n,)`` or ``(n, m)`` dual weights (e.g. ``K^+ Y`` or an eigen-feature's
            ``w_i``).

    Calling it on ``(n_test, *in_shape)`` returns ``(n_test,)`` or ``(n_test, m)``.
    """

    def __init__(self, kernel_fn: Callable, x_train: torch.Tensor, weights: torch.Tensor):
        super().__init__()
        if not callable(kernel_fn):
            raise TypeError(f"kernel_fn must be callable; got {type(kernel_fn).__name__}.")
        if weights.shape[0] != x_train.shape[0]:
            raise ValueError(
                f"weights need one row per training input ({x_train.shape[0]}); got "
                f"{tuple(weights.shape)}."
            )
        self.kernel_fn = kernel_fn
        self.register_buffer("x_train", x_train.detach())
        self.register_buffer("weights", weights.detach())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Predictions at ``x``; raises if the kernel does not carry ``x``'s gradient."""
        k = self.kernel_fn(x, self.x_train)
        if not isinstance(k, torch.Tensor) or k.shape != (x.shape[0], self.x_train.shape[0]):
            raise ValueError(
                f"kernel_fn(x, X) must return a ({x.shape[0]}, {self.x_train.shape[0]}) "
                f"tensor; got {getattr(k, 'shape', type(k).__name__)}."
            )
        if x.requires_grad and not k.requires_grad:
            raise TypeError(
                "kernel_fn(x, X) is not differentiable in x (its output carries no gradient); "
                "attacks need a kernel computed by torch operations on x, e.g. net.kernel."
            )
        return k.to(self.weights.dtype) @ self.weights


def feature_robust_accuracy(
    kernel_fn: Callable,
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    x_test: torch.Tensor,
    labels_test: torch.Tensor,
    *,
    features,
    eps: float,
    attack: str = "fgsm",
    norm: str = "linf",
    steps: int = 10,
) -> torch.Tensor:
    """Accuracy of single eigen-features under an attack on each feature alone.

    Two classes (``y_train`` of shape ``(n,)``, +-1): feature ``i`` predicts class 1 where
    ``f_i(x) > 0`` and is attacked on the margin ``-y f_i(x)``. ``C`` classes (``y_train``
    ``(n, C)``, e.g. one-hot): it predicts ``argmax f_i(x)`` and is attacked on the
    cross-entropy of ``f_i(x)``. Gradients flow through ``kernel_fn`` by autograd.

    Args:
        kernel_fn: ``(x1, x2) -> (n1, n2)`` kernel, differentiable in ``x1``.
        x_train: ``(n, *in_shape)`` training inputs.
        y_train: ``(n,)`` +-1 targets or ``(n, C)`` targets.
        x_test: ``(n_test, *in_shape)`` inputs to attack.
        labels_test: ``(n_test,)`` integer labels (``{0, 1}`` for two classes).
        features: Indices of the features (0 = largest eigenvalue).
        eps: Attack radius.
        attack: ``"fgsm"`` or ``"pgd"`` (``steps`` steps, best iterate kept).
        norm: ``"linf"`` or ``"l2"``.
        steps: PGD steps.

    Returns:
        ``(len(features),)`` float64 robust accuracies.
    """
    from ntkit.attacks import fgsm, pgd

    if attack not in ("fgsm", "pgd"):
        raise ValueError(f"attack must be 'fgsm' or 'pgd'; got {attack!r}.")
    w = eigen_feature_weights(kernel_fn(x_train, x_train), y_train)
    binary = y_train.ndim == 1
    if binary:
        target = 2.0 * labels_test.to(torch.float64) - 1.0

        def loss(out, t):
            return -(t * out[:, 0])
    else:
        target, loss = labels_test, "cross_entropy"
    out = []
    for i in features:
        if not 0 <= int(i) < w.shape[0]:
            raise ValueError(f"feature index {i} outside [0, {w.shape[0]}).")
        f = KernelPredictor(kernel_fn, x_train, w[int(i)])
        if attack == "fgsm":
            adv = fgsm(f, x_test, target, eps=eps, norm=norm, loss=loss)
        else:
            adv = pgd(f, x_test, target, eps=eps, norm=norm, loss=loss, steps=steps)
        with torch.no_grad():
            pred = f(adv)
        pred = (pred[:, 0] > 0).long() if binary else pred.argmax(1)
        out.append(float((pred == labels_test).double().mean()))
    return torch.tensor(out, dtype=torch.float64)
