"""Turn a ``torch.nn.Module`` (or ``f(params, x)``) into a pure function of its parameters."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call

__all__ = ["FunctionalModel", "functionalize", "transform_safe"]


@contextlib.contextmanager
def transform_safe() -> Iterator[None]:
    """Run modules so that ``torch.func`` transforms see ops they can differentiate.

    ``nn.MultiheadAttention`` (and the transformer layers) take a fused inference "fast
    path" in eval mode, and ``scaled_dot_product_attention`` picks fused kernels; neither
    supports forward-mode AD or has ``vmap`` rules. Inside this context the fast path is off
    and attention uses its reference ("math") backend; both are restored after.
    """
    with contextlib.ExitStack() as stack:
        mha = getattr(torch.backends, "mha", None)
        if mha is not None:
            before = mha.get_fastpath_enabled()
            mha.set_fastpath_enabled(False)
            stack.callback(mha.set_fastpath_enabled, before)
        try:
            from torch.nn.attention import SDPBackend, sdpa_kernel
        except ImportError:  # pragma: no cover - older torch
            pass
        else:
            stack.enter_context(sdpa_kernel(SDPBackend.MATH))
        yield


@dataclass(frozen=True)
class FunctionalModel:
    """A model as ``fn(params, x)`` with the parameters it is differentiated in.

    Attributes:
        fn: ``fn(params, x)`` maps a batch ``(n, *in_shape)`` to outputs ``(n, *out_shape)``.
        params: The parameters the kernel differentiates in (name -> tensor).
        module: The module it came from, if any.
    """

    fn: Callable[[dict[str, torch.Tensor], torch.Tensor], torch.Tensor]
    params: dict[str, torch.Tensor]
    module: nn.Module | None = None


def active_dropout(model: nn.Module) -> str | None:
    """Name of the first dropout module of ``model`` that is in training mode with ``p > 0``."""
    for name, sub in model.named_modules():
        if isinstance(sub, nn.modules.dropout._DropoutNd) and sub.training and sub.p > 0:
            return f"{name or type(model).__name__!r} ({type(sub).__name__}, p={sub.p})"
    return None


def _check_batch_coupling(model: nn.Module) -> None:
    """Refuse models whose per-sample outputs are not deterministic functions of the sample."""
    dropout = active_dropout(model)
    if dropout is not None:
        raise ValueError(
            f"module {dropout} is in training mode, where it draws a new random mask on "
            "every call, so the outputs are not a deterministic function of the parameters "
            "and the NTK is not defined. Call model.eval() to switch dropout off."
        )
    for name, sub in model.named_modules():
        if not isinstance(sub, nn.modules.batchnorm._BatchNorm):
            continue
        label = f"module {name or type(model).__name__!r} ({type(sub).__name__})"
        if sub.training:
            raise ValueError(
                f"{label} is in training mode, where it normalizes with batch statistics, so "
                "each output depends on the whole batch and the per-sample NTK is not "
                "defined. Call model.eval() to use its running statistics (or replace it by "
                "a per-sample normalization such as GroupNorm/LayerNorm)."
            )
        if sub.running_mean is None or sub.running_var is None:
            raise ValueError(
                f"{label} has track_running_stats=False, so even in eval mode it normalizes "
                "with batch statistics and couples the samples of a batch. Build it with "
                "track_running_stats=True (and call model.eval()), or use a per-sample "
                "normalization such as GroupNorm/LayerNorm."
            )


def split_parameters(
    model: nn.Module, params: Mapping[str, torch.Tensor] | Iterable[str] | None
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Check ``model`` and split its state into differentiated and fixed tensors.

    Args:
        model: The module (refused if batch-coupled or stochastic, see the errors below).
        params: Names (or a dict keyed by names) of the parameters to differentiate in;
            ``None`` means every parameter with ``requires_grad``.

    Returns:
        ``(selected, fixed)``: detached parameters to differentiate in, and every other
        parameter and buffer (constants), both keyed by qualified name.

    Raises:
        ValueError: train-mode BatchNorm or dropout, unknown names, no parameters.
    """
    _check_batch_coupling(model)
    named = dict(model.named_parameters())
    if params is None:
        chosen = [n for n, p in named.items() if p.requires_grad]
    else:
        chosen = list(params.keys() if isinstance(params, Mapping) else params)
        unknown = [n for n in chosen if n not in named]
        if unknown:
            raise ValueError(
                f"params names {unknown} are not parameters of the model; known: {sorted(named)}."
            )
    if not chosen:
        raise ValueError("the model has no parameters to differentiate in.")
    fixed = {n: p.detach() for n, p in named.items() if n not in chosen}
    fixed.update({n: b.detach() for n, b in model.named_buffers()})
    return {n: named[n].detach() for n in chosen}, fixed


def functionalize(
    model: nn.Module | Callable,
    params: Mapping[str, torch.Tensor] | Iterable[str] | None = None,
) -> FunctionalModel:
    """Pure-function view of ``model`` for ``torch.func`` transforms.

    Args:
        model: A ``torch.nn.Module`` (its parameters, buffers and eval-mode BatchNorm are
            used; tied weights count once) or a function ``f(params, x)``.
        params: For a module: ``None`` (all parameters that require grad) or names of the
            parameters to differentiate in (the others stay fixed). For a function: the
            parameter dict (required).

    Returns:
        A :class:`FunctionalModel`.

    Raises:
        ValueError: train-mode BatchNorm, unknown parameter names, or no parameters.
        TypeError: ``model`` is neither a module nor a callable.
    """
    if isinstance(model, nn.Module):
        selected, fixed = split_parameters(model, params)

        def fn(p, x):
            return functional_call(model, (p, fixed), (x,))

        return FunctionalModel(fn=fn, params=selected, module=model)
    if callable(model):
        if not isinstance(params, Mapping) or not params:
            raise ValueError("for a function f(params, x), pass params= as a non-empty dict.")
        return FunctionalModel(fn=model, params={n: p.detach() for n, p in params.items()})
    raise TypeError(f"model must be a torch.nn.Module or f(params, x); got {type(model).__name__}.")
