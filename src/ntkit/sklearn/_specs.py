"""Network descriptions for the scikit-learn wrappers: the default MLP, factories, inputs.

A *spec* handed to an estimator or a Gaussian-process kernel is one of:

- ``None``: the default fully connected network :func:`mlp`, built from the wrapper's
  ``depth``, ``width``, ``w_std``, ``b_std``, ``activation`` and ``parameterization``;
- an :class:`ntkit.layers.Layer`: a fixed description, used as it is;
- a *factory*: any callable ``factory(**hyperparameters) -> Layer``; the wrapper calls it with
  its hyperparameters, so scikit-learn can tune them (``GridSearchCV``, GP marginal likelihood).

Inputs arrive as 2-D ``(n, features)`` arrays, as scikit-learn requires; ``in_shape`` reshapes
each row to a per-sample shape (e.g. ``(1, 8, 8)`` for a convolutional spec on 8x8 images,
channels first) before the kernel is computed.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable

import numpy as np
import torch

from ntkit import layers as L
from ntkit.layers.base import Layer

__all__ = ["ACTIVATIONS", "build_spec", "mlp", "rows_to_batch"]

#: Activation names accepted by :func:`mlp` (``activation=`` also takes a Layer instance).
ACTIVATIONS: dict[str, Callable[[], Layer]] = {
    "relu": L.ReLU,
    "erf": L.Erf,
    "gelu": L.GELU,
    "leaky_relu": L.LeakyReLU,
    "abs": L.Abs,
    "sign": L.Sign,
    "sin": L.Sin,
    "identity": L.Identity,
}


def _activation(activation) -> Layer:
    if isinstance(activation, Layer):
        return activation
    if isinstance(activation, str) and activation in ACTIVATIONS:
        return ACTIVATIONS[activation]()
    raise ValueError(
        f"activation must be one of {sorted(ACTIVATIONS)} or an ntkit.layers activation "
        f"instance; got {activation!r}."
    )


def mlp(
    depth: int = 2,
    width: int = 512,
    w_std: float = 1.0,
    b_std: float | None = 0.1,
    activation="relu",
    parameterization: str = "ntk",
) -> Layer:
    """The default spec: ``depth`` hidden layers ``Dense(width) -> activation``, then ``Dense(1)``.

    Every ``Dense`` (the readout too) has the same ``w_std`` and ``b_std``. The readout's
    width does not matter: infinite-width kernels are per output (``K ⊗ I_O``). Under the
    NTK parameterization the kernel does not depend on ``width`` either; under
    ``parameterization="standard"`` it does.

    Args:
        depth: Number of hidden layers (0 gives a linear model ``Dense(1)``).
        width: Hidden width of the finite network this kernel is the limit of.
        w_std: Weight standard deviation of every ``Dense``.
        b_std: Bias standard deviation; ``None`` for no biases.
        activation: A name from :data:`ACTIVATIONS` or an activation layer instance.
        parameterization: ``"ntk"`` (default) or ``"standard"``.

    Returns:
        The :class:`ntkit.layers.Serial` description.
    """
    if isinstance(depth, bool) or not isinstance(depth, (int, np.integer)) or depth < 0:
        raise ValueError(f"depth must be a non-negative integer; got {depth!r}.")
    if isinstance(width, bool) or not isinstance(width, (int, np.integer)) or width < 1:
        raise ValueError(f"width must be a positive integer; got {width!r}.")
    act = _activation(activation)
    hidden = []
    for _ in range(int(depth)):
        hidden += [L.Dense(int(width), w_std, b_std, parameterization=parameterization), act]
    return L.serial(*hidden, L.Dense(1, w_std, b_std, parameterization=parameterization))


#: The hyperparameters of :func:`mlp` and their defaults.
MLP_DEFAULTS = {
    name: p.default for name, p in inspect.signature(mlp).parameters.items() if name != "self"
}


def factory_parameters(factory: Callable) -> tuple[dict, bool]:
    """Keyword parameters of ``factory`` with their defaults, and whether it takes ``**kw``.

    Raises:
        TypeError: ``factory`` has no inspectable signature.
    """
    try:
        sig = inspect.signature(factory)
    except (TypeError, ValueError) as err:
        raise TypeError(f"spec factory {factory!r} has no inspectable signature: {err}") from err
    params, var_kw = {}, False
    for name, p in sig.parameters.items():
        if p.kind == p.VAR_KEYWORD:
            var_kw = True
        elif p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
            params[name] = p.default
    return params, var_kw


def build_spec(spec, hyperparameters: dict, *, owner: str) -> Layer:
    """The :class:`~ntkit.layers.Layer` a wrapper stands for.

    Args:
        spec: ``None`` (the default :func:`mlp`), a ``Layer``, or a factory callable.
        hyperparameters: The wrapper's values of the default MLP's hyperparameters (for an
            estimator) or of the factory's keyword parameters (for a GP kernel).
        owner: The wrapper's class name, for error messages.

    Returns:
        The network description.

    Raises:
        ValueError: a hyperparameter was set that the spec cannot take (a fixed ``Layer``,
            or a factory without that parameter).
        TypeError: ``spec`` is neither a Layer nor callable, or the factory did not return
            a Layer.
    """
    if spec is None:
        return mlp(**hyperparameters)
    if isinstance(spec, Layer):
        changed = {k: v for k, v in hyperparameters.items() if not _is_default(k, v)}
        if changed:
            raise ValueError(
                f"{owner}: spec is a fixed ntkit Layer, so the default MLP's hyperparameters "
                f"{sorted(changed)} cannot apply to it; pass a factory "
                "(a callable returning a Layer) to tune them, or leave them at their defaults."
            )
        return spec
    if isinstance(spec, type) and issubclass(spec, Layer):
        raise TypeError(
            f"{owner}: spec must be a Layer instance or a factory; got the class "
            f"{spec.__name__}. Instantiate it, or pass a function building it."
        )
    if not callable(spec):
        raise TypeError(
            f"{owner}: spec must be None, an ntkit.layers.Layer, or a callable returning one; "
            f"got {type(spec).__name__}."
        )
    accepted, var_kw = factory_parameters(spec)
    kwargs = {k: v for k, v in hyperparameters.items() if var_kw or k in accepted}
    ignored = sorted(
        k for k, v in hyperparameters.items() if k not in kwargs and not _is_default(k, v)
    )
    if ignored:
        raise ValueError(
            f"{owner}: the spec factory {getattr(spec, '__name__', spec)!r} takes no "
            f"parameter(s) {ignored}, which were set; its parameters are {sorted(accepted)}."
        )
    net = spec(**kwargs)
    if not isinstance(net, Layer):
        raise TypeError(
            f"{owner}: the spec factory must return an ntkit.layers.Layer; "
            f"got {type(net).__name__}."
        )
    return net


def _is_default(name: str, value) -> bool:
    default = MLP_DEFAULTS.get(name, inspect.Parameter.empty)
    if default is inspect.Parameter.empty:
        return False
    try:
        return bool(value == default) if value is not None else default is None
    except (TypeError, ValueError):
        return False


def rows_to_batch(x: np.ndarray, in_shape, *, name: str = "X") -> torch.Tensor:
    """``(n, features)`` float64 rows -> ``(n, *in_shape)`` tensor (``in_shape=None``: as is).

    Raises:
        ValueError: ``features`` differs from ``prod(in_shape)``.
    """
    t = torch.from_numpy(np.array(x, dtype=np.float64, order="C", copy=True))
    if in_shape is None:
        return t
    shape = tuple(int(s) for s in in_shape)
    if math.prod(shape) != t.shape[1]:
        raise ValueError(
            f"{name} has {t.shape[1]} features per row, but in_shape={shape} needs "
            f"{math.prod(shape)}."
        )
    return t.reshape(t.shape[0], *shape)


def check_readout(net: Layer, in_shape: tuple[int, ...], *, owner: str) -> None:
    """Refuse a spec whose output is not one scalar per output channel.

    Raises:
        ValueError: the spec's per-sample output shape is not ``(O,)`` (e.g. a convolution
            without pooling/flattening and a readout).
    """
    out = net.out_shape(tuple(in_shape))
    if not isinstance(out, tuple) or len(out) != 1:
        raise ValueError(
            f"{owner} needs a spec ending in a readout with one scalar per output (per-sample "
            f"output shape (O,)); this spec maps per-sample inputs {tuple(in_shape)} to {out}. "
            "End it with GlobalAvgPool()/Flatten() and Dense(O)."
        )
