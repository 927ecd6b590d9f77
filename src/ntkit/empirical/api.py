"""Public entry points for empirical kernels and Monte Carlo estimates of analytic ones."""

from __future__ import annotations

import torch
from torch import nn

from ntkit._validation import as_batch, check_same_features
from ntkit.empirical.functional import functionalize
from ntkit.empirical.jacobian import jacobian_ntk
from ntkit.kernel import Kernel

__all__ = ["empirical_ntk", "monte_carlo_kernel"]

MODES = ("full", "trace")


def _model_dtype(model) -> torch.dtype | None:
    if isinstance(model, nn.Module):
        for p in model.parameters():
            return p.dtype
    return None


def empirical_ntk(model, x1, x2=None, *, mode: str = "full", params=None) -> torch.Tensor:
    """Empirical (finite-width) NTK ``Theta(x, x') = J(x) J(x')^T`` of a model.

    Args:
        model: A ``torch.nn.Module`` or a function ``f(params, x)``.
        x1: Inputs ``(n1, *in_shape)``.
        x2: Inputs ``(n2, *in_shape)``; ``None`` means ``x1``.
        mode: ``"full"``: ``(n1, n2, O, O)``; ``"trace"``: ``(n1, n2)``, ``sum_a Theta_aa``.
        params: Subset of parameter names to differentiate in (module), or the parameter
            dict (function).

    Returns:
        The kernel, in the model's dtype, on the inputs' device.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}; got {mode!r}.")
    fm = functionalize(model, params)
    dtype = _model_dtype(model) or next(iter(fm.params.values())).dtype
    x1 = as_batch(x1, "x1", dtype=dtype)
    if x2 is not None:
        x2 = as_batch(x2, "x2", dtype=dtype)
        check_same_features(x1, x2)
    return jacobian_ntk(fm, x1, x2, mode)


def monte_carlo_kernel(
    net,
    x1,
    x2=None,
    *,
    n_samples: int = 16,
    seed: int = 0,
    get=("nngp", "ntk"),
    dtype: torch.dtype = torch.float64,
) -> Kernel:
    """Monte Carlo estimate of a description's NNGP and NTK from random finite networks.

    Averages, over ``n_samples`` networks ``net.module(in_shape, seed=seed + s)``, the
    output covariance ``f(x1) f(x2)^T / O`` (NNGP) and the traced empirical NTK
    ``sum_a Theta_aa / O`` (NTK), i.e. per-output kernels comparable with ``net.kernel``.
    The NNGP estimate's sampling error falls like ``(n_samples * O)^-1/2``; both estimates'
    finite-width bias falls like ``width^-1/2`` (Novak et al. 2020 use the same estimator).

    Args:
        net: An :class:`ntkit.layers.Layer` description ending in vector outputs ``(n, O)``.
        x1: ``(n1, *in_shape)``.
        x2: ``(n2, *in_shape)`` or ``None`` for ``x1``.
        n_samples: Number of random networks.
        seed: Seed of the first network; network ``s`` uses ``seed + s``.
        get: ``"nngp"``, ``"ntk"`` or both.
        dtype: Dtype of the networks and of the estimate.

    Returns:
        A :class:`ntkit.Kernel` with ``nngp``/``ntk`` of shape ``(n1, n2)``.
    """
    from ntkit.layers._driver import _parse_get

    want_ntk = _parse_get(get)
    if int(n_samples) != n_samples or n_samples < 1:
        raise ValueError(f"n_samples must be a positive integer; got {n_samples}.")
    x1 = as_batch(x1, "x1", dtype=dtype)
    x2_ = None if x2 is None else as_batch(x2, "x2", dtype=dtype)
    if x2_ is not None:
        check_same_features(x1, x2_)
    in_shape = tuple(x1.shape[1:])
    out_shape = net.out_shape(in_shape)
    if not isinstance(out_shape, tuple) or len(out_shape) != 1:
        raise ValueError(
            f"monte_carlo_kernel needs a network with vector outputs (n, O); this one "
            f"outputs per-sample shape {out_shape}. End it with Flatten/pooling and Dense."
        )
    n_out = out_shape[0]
    nngp = ntk = cov1 = cov2 = None
    for s in range(int(n_samples)):
        model = net.module(in_shape, seed=seed + s, dtype=dtype, device=x1.device)
        with torch.no_grad():
            f1 = model(x1)
            f2 = f1 if x2_ is None else model(x2_)
        terms = {
            "nngp": f1 @ f2.T / n_out,
            "cov1": (f1 * f1).sum(1) / n_out,
            "cov2": None if x2_ is None else (f2 * f2).sum(1) / n_out,
        }
        if want_ntk:
            terms["ntk"] = empirical_ntk(model, x1, x2_, mode="trace") / n_out
        nngp = terms["nngp"] if nngp is None else nngp + terms["nngp"]
        cov1 = terms["cov1"] if cov1 is None else cov1 + terms["cov1"]
        if terms["cov2"] is not None:
            cov2 = terms["cov2"] if cov2 is None else cov2 + terms["cov2"]
        if want_ntk:
            ntk = terms["ntk"] if ntk is None else ntk + terms["ntk"]
    n = float(n_samples)
    return Kernel(
        nngp=nngp / n,
        ntk=None if ntk is None else ntk / n,
        cov1=cov1 / n,
        cov2=None if cov2 is None else cov2 / n,
        shape=out_shape,
        is_gaussian=True,
        x1_is_x2=x2_ is None,
    )
