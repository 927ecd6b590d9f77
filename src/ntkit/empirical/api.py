"""Public entry points: empirical NTKs, NTK-vector products, Monte Carlo estimates."""

from __future__ import annotations

import numpy as np
import torch

from ntkit._validation import as_batch, check_finite
from ntkit.empirical.cost import CostContext, choose, estimate_in
from ntkit.empirical.functional import (
    FunctionalModel,
    active_dropout,
    functionalize,
    transform_safe,
)
from ntkit.empirical.implementations import REGISTRY
from ntkit.empirical.modes import mode_spec
from ntkit.empirical.profile import profile
from ntkit.empirical.vector_products import vector_product
from ntkit.kernel import Kernel
from ntkit.settings import format_bytes, resolve_max_memory

__all__ = ["empirical_ntk", "monte_carlo_kernel", "ntk_vp"]


def _model_place(fm: FunctionalModel) -> tuple[torch.dtype, torch.device]:
    p = next(iter(fm.params.values()))
    if not p.is_floating_point():
        raise TypeError(f"parameters must be floating point; got {p.dtype}.")
    return p.dtype, p.device


def _prepare(x, name: str, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Floating inputs go to the model's dtype; integer inputs (token ids) stay integer."""
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    if isinstance(x, torch.Tensor) and not x.is_floating_point() and not x.is_complex():
        if x.ndim < 1 or x.shape[0] == 0:
            raise ValueError(f"{name} must be a non-empty batch (n, ...); got {tuple(x.shape)}.")
        return x.to(device)
    return as_batch(x, name, dtype=dtype, device=device, min_rank=1)  # also checks finiteness


def _inputs(fm, x1, x2):
    dtype, device = _model_place(fm)
    out_device = x1.device if isinstance(x1, torch.Tensor) else torch.device("cpu")
    x1 = _prepare(x1, "x1", dtype, device)
    if x2 is not None:
        x2 = _prepare(x2, "x2", dtype, device)
        if x1.shape[1:] != x2.shape[1:]:
            raise ValueError(
                f"x1 and x2 must have the same per-sample shape; got x1 {tuple(x1.shape)} "
                f"and x2 {tuple(x2.shape)}."
            )
    return x1, x2, dtype, device, out_device


def check_forward(fm, x1, x2=None) -> None:
    """Run the model on a few samples before any work; refuse what has no per-sample NTK.

    Names the argument if its forward pass fails, and refuses a model whose output for one
    sample depends on the rest of the batch. The empirical NTK is defined per sample
    (``J(x_i)`` depends on ``x_i`` only); a model that normalizes across the batch
    (``x - x.mean(0)``, train-mode BatchNorm) or draws randomness (train-mode dropout) has
    no such kernel, and would silently get one.

    Raises:
        ValueError: the forward pass fails on ``x1`` or ``x2`` (naming it, its shape and
            dtype), or sample 0's output alone differs from its output within a batch.
    """
    shapes = {"x1": tuple(x1.shape), "x2": None if x2 is None else tuple(x2.shape)}

    def run(x, name):
        try:
            with torch.no_grad():
                return fm.fn(fm.params, x)
        except (RuntimeError, IndexError, TypeError, ValueError) as err:
            raise ValueError(
                f"the model's forward pass failed on {name} (shape {shapes[name]}, dtype "
                f"{x.dtype}): {type(err).__name__}: {err}"
            ) from err

    k = min(4, x1.shape[0])
    batch = x1[:k]
    if x2 is not None:
        run(x2[: min(4, x2.shape[0])], "x2")
        batch = torch.cat([batch, x2[:k]])
    if batch.shape[0] < 2 and batch.is_floating_point():
        batch = torch.cat([batch, 2.0 * batch + 1.0])  # a different companion sample
    together = run(batch, "x1")
    alone = run(x1[:1], "x1")
    if batch.shape[0] < 2 or not isinstance(together, torch.Tensor):
        return
    a, b = alone[0].double(), together[0].double()
    scale = float(b.abs().max()) if b.numel() else 0.0
    tol = 1e-4 * scale + 1e-6 if together.dtype != torch.float64 else 1e-9 * scale + 1e-12
    if a.shape != b.shape or float((a - b).abs().max()) > tol:
        raise ValueError(
            "the model's output for a sample depends on the other samples in the batch (or "
            "on randomness): sample 0 of x1 gives different outputs alone and in a batch "
            f"(largest difference {float((a - b).abs().max()):.3g}). The empirical NTK is "
            "defined per sample; remove batch statistics (x - x.mean(0), train-mode "
            "BatchNorm) and train-mode dropout, e.g. model.eval()."
        )


def empirical_ntk(
    model,
    x1,
    x2=None,
    *,
    mode: str = "full",
    logit: int | None = None,
    implementation: str = "auto",
    params=None,
    per_parameter: bool = False,
    max_memory: int | None = None,
    dim: int | None = None,
    seed: int = 0,
):
    """Empirical (finite-width) NTK ``Theta(x, x') = J(x) J(x')^T`` of a model.

    ``O`` is the number of outputs per sample (the output flattened after the batch axis).

    Args:
        model: A ``torch.nn.Module`` (parameters, buffers, eval-mode BatchNorm; tied weights
            count once) or a function ``f(params, x)``.
        x1: Inputs ``(n1, *in_shape)`` (floating, or integer token ids).
        x2: Inputs ``(n2, *in_shape)``; ``None`` means ``x1`` (and uses symmetry).
        mode: ``"full"`` -> ``(n1, n2, O, O)``; ``"trace"`` -> ``(n1, n2)``,
            ``sum_a Theta_aa``; ``"diagonal"`` -> ``(n1, O, O)``, only ``k(x_i, x_i)``
            (or ``k(x1_i, x2_i)`` when ``x2`` has ``n1`` rows); ``"sum_logits"`` ->
            ``(n1, n2)``, the pseudo-NTK ``(1/O) grad(sum_a f_a) . grad(sum_b f_b)``;
            ``"logit"`` -> ``(n1, n2)``, ``Theta_ii`` for ``logit=i``.
        logit: Output index for ``mode="logit"``.
        implementation: ``"jacobian"`` (Jacobian contraction), ``"ntvp"`` (NTK-vector
            products), ``"structured"`` (per-module rules, exact fallback for other
            parameters), ``"auto"`` (the exact one chosen by a cost model) or
            ``"projected"`` (an unbiased estimate from ``dim`` random-projection features,
            relative error about ``dim^-1/2``; see :func:`ntkit.ntk_features`).
        params: Names of the parameters to differentiate in (module; default: all that
            require grad), or the parameter dict (function).
        per_parameter: Return ``{name: kernel}`` instead of the sum over parameters.
        max_memory: Memory budget in bytes (default: half the available memory); inputs
            and outputs are chunked to fit, or a ``ValueError`` gives the estimate.
        dim: Number of projected features (``implementation="projected"`` only).
        seed: Seed of the projection (``implementation="projected"`` only).

    Returns:
        The kernel in the model's dtype (float32 or float64) on ``x1``'s device, or a dict
        of kernels keyed by parameter name.

    Raises:
        ValueError: bad mode, inputs, train-mode BatchNorm, or a memory budget that cannot
            hold the result.
        TypeError: ``model`` is neither a module nor a function, or inputs are not arrays.
    """
    if implementation not in (*REGISTRY, "auto"):
        raise ValueError(
            f"implementation must be one of {(*REGISTRY, 'auto')}; got {implementation!r}."
        )
    if dim is not None and implementation != "projected":
        raise ValueError(
            f"dim={dim!r} is only used with implementation='projected'; got "
            f"implementation={implementation!r}."
        )
    fm = functionalize(model, params)
    x1, x2, dtype, device, out_device = _inputs(fm, x1, x2)
    check_forward(fm, x1, x2)
    with transform_safe():
        return _empirical_ntk(
            fm,
            x1,
            x2,
            mode,
            logit,
            implementation,
            per_parameter,
            max_memory,
            out_device,
            dim,
            seed,
        )


def _empirical_ntk(
    fm, x1, x2, mode, logit, implementation, per_parameter, max_memory, out_device, dim, seed
):
    dtype, device = _model_place(fm)
    pair = x1[:2] if (x1.shape[0] >= 2 or x2 is None) else torch.cat([x1[:1], x2[:1]])
    prof = profile(fm, pair, use_rules=implementation in ("structured", "auto", "projected"))
    spec = mode_spec(mode, logit, prof.out_numel)
    n1 = x1.shape[0]
    n2 = n1 if x2 is None else x2.shape[0]
    if spec.how == "diag" and n2 != n1:
        raise ValueError(
            f"mode='diagonal' pairs x1[i] with x2[i]; x2 must be None or have {n1} rows, got {n2}."
        )
    budget = resolve_max_memory(max_memory, device)
    itemsize = torch.finfo(dtype).bits // 8
    sym = x2 is None
    ctx = CostContext(
        prof, spec, n1, n2, sym, itemsize, budget, device.type, per_parameter, dim=dim
    )
    impl = implementation
    if impl == "auto":
        ests = estimate_in(ctx)
        if not ests:  # the most frugal implementation's refusal, with its estimate
            REGISTRY["structured"].cost(ctx)
            raise ValueError(f"max_memory={format_bytes(budget)} cannot hold this kernel.")
        impl = choose(ests)
        est = ests[impl]
    else:
        est = REGISTRY[impl].cost(ctx)  # raises with the estimate when it cannot fit
    names = list(fm.params) if per_parameter else None
    out = REGISTRY[impl].compute(ctx, est, x1, x2, names, seed)
    if per_parameter:
        return {n: spec.finalize(t).to(out_device) for n, t in out.items()}
    return spec.finalize(out).to(out_device)


def ntk_vp(model, x1, x2, v, *, params=None, max_memory: int | None = None) -> torch.Tensor:
    """Matrix-free NTK-vector product ``Theta(x1, x2) @ v``.

    ``(Theta v)[i, a] = sum_{j, b} Theta(x1_i, x2_j)_{ab} v[j, b]``, computed as one
    vector-Jacobian product on ``x2`` and one Jacobian-vector product on ``x1``; neither
    the Jacobian nor the kernel is formed.

    Args:
        model: A ``torch.nn.Module`` or ``f(params, x)``.
        x1: ``(n1, *in_shape)``.
        x2: ``(n2, *in_shape)`` or ``None`` for ``x1``.
        v: ``(n2, O)``, or ``(n2, O, m)`` for ``m`` vectors at once.
        params: Parameters to differentiate in (as in :func:`empirical_ntk`).
        max_memory: Memory budget in bytes; samples are processed in chunks that fit.

    Returns:
        ``(n1, O)`` (or ``(n1, O, m)``) on ``x1``'s device, in the model's dtype.
    """
    fm = functionalize(model, params)
    x1, x2, dtype, device, out_device = _inputs(fm, x1, x2)
    xb = x1 if x2 is None else x2
    with transform_safe():
        prof = profile(fm, x1[:1], use_rules=False)
    o = prof.out_numel
    v = torch.as_tensor(v)
    if v.ndim not in (2, 3) or tuple(v.shape[:2]) != (xb.shape[0], o):
        raise ValueError(
            f"v must have shape (n2, O) = ({xb.shape[0]}, {o}) or (n2, O, m); got {tuple(v.shape)}."
        )
    v = v.to(dtype=dtype, device=device)
    check_finite(v, "v")
    with transform_safe():
        return _ntk_vp(fm, x1, xb, v, prof, max_memory, out_device)


def _ntk_vp(fm, x1, xb, v, prof, max_memory, out_device):
    dtype, device = _model_place(fm)
    o = prof.out_numel
    m = 1 if v.ndim == 2 else v.shape[2]
    budget = resolve_max_memory(max_memory, device)
    itemsize = torch.finfo(dtype).bits // 8
    per_sample = 3 * prof.act_bytes * m + 2 * o * m * itemsize
    fixed = 2 * prof.total_params * itemsize * m
    if fixed + per_sample > budget:
        raise ValueError(
            f"max_memory={format_bytes(budget)} cannot hold an NTK-vector product: it needs "
            f"at least {format_bytes(fixed + per_sample)} (parameters and one sample's "
            "activations). Raise max_memory or pass fewer vectors at once."
        )
    chunk = max(1, int((budget - fixed) // per_sample))
    if v.ndim == 2:
        out = vector_product(fm, x1, xb, v, chunk)
    else:
        out = torch.stack([vector_product(fm, x1, xb, v[..., i], chunk) for i in range(m)], -1)
    return out.to(out_device)


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
    ``sum_a Theta_aa / O`` (NTK, fast path: ``implementation="auto"``), i.e. per-output
    kernels comparable with ``net.kernel``. The NNGP estimate's sampling error falls like
    ``(n_samples * O)^-1/2``; both estimates' finite-width bias falls like ``width^-1/2``
    (Novak et al. 2020 use the same estimator).

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
    if x2_ is not None and x1.shape[1:] != x2_.shape[1:]:
        raise ValueError(
            f"x1 and x2 must have the same per-sample shape; got x1 {tuple(x1.shape)} and "
            f"x2 {tuple(x2_.shape)}."
        )
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
        if s == 0 and want_ntk and active_dropout(model) is not None:  # same architecture
            raise ValueError(
                "monte_carlo_kernel cannot estimate the NTK of a network with Dropout: the "
                "finite network redraws its masks on every call, so its empirical NTK is not "
                "defined. Use get='nngp' (the NNGP estimate includes the dropout noise)."
            )
        with torch.no_grad():
            f1 = model(x1)
            f2 = f1 if x2_ is None else model(x2_)
        terms = {
            "nngp": f1 @ f2.T / n_out,
            "cov1": (f1 * f1).sum(1) / n_out,
            "cov2": None if x2_ is None else (f2 * f2).sum(1) / n_out,
        }
        if want_ntk:
            terms["ntk"] = (
                empirical_ntk(model, x1, x2_, mode="trace", implementation="auto") / n_out
            )
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
