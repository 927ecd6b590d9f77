"""Projected (sketched) tangent features and the projected empirical NTK.

``phi(x) = S J(x)`` with ``J(x)`` the per-sample Jacobian of the model's outputs in its
parameters and ``S`` a sparse ``dim x P`` random projection (a count sketch: one random sign
per column, in a random row) with ``E[S^T S] = I``, so that
``E[phi(x) . phi(x')] = J(x) . J(x')``: an unbiased estimate of the empirical NTK whose
relative error falls like ``dim^-1/2`` (Johnson-Lindenstrauss; the random projections of
per-sample gradients in data attribution, Park et al. 2023 "TRAK"). ``S`` is never formed,
and ``J`` is never materialised for the parameters that structured rules cover: each
parameter's factor from :class:`~ntkit.empirical.structured.StructuredFeaturizer` (layer
inputs and output cotangents) is sketched with TensorSketch
(:mod:`ntkit.empirical.projection`); other parameters' per-sample Jacobians are
count-sketched directly. Inputs and output directions are chunked to fit ``max_memory``.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import numpy as np
import torch

from ntkit._validation import as_batch
from ntkit.empirical.assemble import chunk_slices, halve_to_fit
from ntkit.empirical.functional import functionalize, transform_safe
from ntkit.empirical.modes import ModeSpec, mode_spec
from ntkit.empirical.profile import ModelProfile, profile
from ntkit.empirical.projection import Projector, factor_temp_entries, hash_entries
from ntkit.empirical.structured import StructuredFeaturizer, feature_bytes
from ntkit.settings import format_bytes, resolve_max_memory

__all__ = [
    "FEATURE_MODES",
    "ProjectionPlan",
    "check_dim",
    "ntk_features",
    "plan_projection",
    "projected_features",
    "projected_kernel",
]

FEATURE_MODES = ("full", "trace", "sum_logits", "logit")


@dataclass(frozen=True)
class ProjectionPlan:
    """Chunks of a projected featurization.

    Attributes:
        rows: Samples per chunk.
        dirs: Output directions per chunk.
        peak: Estimated peak bytes (with whatever the caller holds).
    """

    rows: int
    dirs: int
    peak: float


def check_dim(dim, total_params: int) -> int:
    """Validate the number of projected features against the parameter count ``P``."""
    if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)):
        raise TypeError(f"dim must be a positive integer; got {dim!r}.")
    dim = int(dim)
    if dim < 1:
        raise ValueError(f"dim must be a positive integer (number of features); got {dim}.")
    if dim > total_params:
        raise ValueError(
            f"dim={dim} is larger than the number of differentiated parameters P="
            f"{total_params}: the exact kernel is cheaper and has no error. Use "
            "empirical_ntk(..., implementation='auto'), or dim < P."
        )
    return dim


def _how(spec: ModeSpec) -> str:
    return "trace" if spec.how == "trace" else "full"


def _shapes(prof: ModelProfile) -> list[tuple]:
    gen = [("dense", prof.param_numel[nm]) for nm in prof.generic]
    return list(prof.fused_shapes.values()) + gen


def plan_projection(
    prof: ModelProfile,
    spec: ModeSpec,
    n: int,
    dim: int,
    itemsize: int,
    budget: float,
    held_bytes: float = 0.0,
) -> ProjectionPlan:
    """Largest chunks of samples and output directions whose projection fits ``budget``.

    Counts the stored hashes and signs, the features of all ``n`` samples, ``held_bytes`` (e.g. a
    kernel being assembled), and per sample of a chunk: the structured factors
    (cotangents and layer inputs), one factor's projection temporaries and the chunk's
    features.

    Raises:
        ValueError: one sample and one output direction do not fit; the message gives the
            estimate and what to change.
    """
    how = _how(spec)
    k = spec.n_directions
    shapes = _shapes(prof)
    hashes = sum(hash_entries(s, k, how) for s in shapes) * (8 + itemsize)
    out_bytes = n * (k if how == "full" else 1) * dim * itemsize
    fixed = held_bytes + out_bytes + hashes

    def need(c: int, kc: int) -> float:
        f_fixed, f_dir = feature_bytes(prof, kc, itemsize)
        temp = max((factor_temp_entries(s, dim, kc, how) for s in shapes), default=0)
        phi = 2 * (kc if how == "full" else 1) * dim
        return fixed + c * (f_fixed + kc * f_dir + (temp + phi) * itemsize)

    c, kc, peak = halve_to_fit(need, n, k, budget)
    if peak > budget:
        raise ValueError(
            f"max_memory={format_bytes(budget)} cannot hold projected features with "
            f"dim={dim}: the features (and result) alone need {format_bytes(fixed)} and the "
            f"smallest chunk (one sample, one output direction) needs {format_bytes(peak)} in "
            "all. Raise max_memory, lower dim, use mode='trace' or 'sum_logits', or pass "
            "fewer inputs per call."
        )
    return ProjectionPlan(c, kc, peak)


@contextlib.contextmanager
def _progress_bar(total: int, enabled: bool, what: str):
    """A rich progress bar over ``total`` steps (silent for one step or when disabled)."""
    if not enabled or total <= 1:
        yield lambda: None
        return
    from rich.progress import Progress

    with Progress(transient=True) as bar:
        task = bar.add_task(what, total=total)
        yield lambda: bar.advance(task)


def projected_features(
    prof: ModelProfile,
    x: torch.Tensor,
    spec: ModeSpec,
    dim: int,
    seed: int,
    plan: ProjectionPlan,
    progress: bool = False,
) -> torch.Tensor:
    """Projected tangent features of ``x`` (inputs already checked and placed).

    Args:
        prof: Profile of the model (with structured rules).
        x: ``(n, *in_shape)`` on the model's device.
        spec: The mode (``diag`` is treated as ``full``).
        dim: Number of features.
        seed: Seed of the projection.
        plan: Chunks from :func:`plan_projection`.
        progress: Show a progress bar over the chunks.

    Returns:
        ``(n, dim)`` for trace-like modes, ``(n, K, dim)`` for ``full``; model dtype.
    """
    fm = prof.fm
    p0 = next(iter(fm.params.values()))
    dtype, device = p0.dtype, p0.device
    how, k = _how(spec), spec.n_directions
    proj = Projector(dim, seed, how, k, dtype, device)
    featurize = StructuredFeaturizer(prof, fuse=True)
    directions = spec.directions(dtype, device)
    n = x.shape[0]
    shape = (n, dim) if how == "trace" else (n, k, dim)
    out = torch.zeros(shape, dtype=dtype, device=device)
    rows, dirs = chunk_slices(n, plan.rows), chunk_slices(k, plan.dirs)
    with _progress_bar(len(rows) * len(dirs), progress, "projected NTK features") as step:
        for r in rows:
            for d in dirs:
                phi = proj(featurize(x[r], directions[d]), d.start)
                if how == "trace":
                    out[r] += phi
                else:
                    out[r, d] = phi
                del phi
                step()
    return out


def projected_kernel(
    prof: ModelProfile,
    x1: torch.Tensor,
    x2: torch.Tensor | None,
    spec: ModeSpec,
    dim: int,
    seed: int,
    budget: float,
    progress: bool = False,
) -> torch.Tensor:
    """The projected estimate of the kernel, in ``spec``'s internal layout.

    ``phi(x1) phi(x2)^T`` (trace-like), ``(n1, K, n2, K)`` (full) or the per-sample
    ``(n, K, K)`` blocks (diagonal); with ``x2=None`` the result is exactly symmetric.
    """
    dtype = next(iter(prof.fm.params.values())).dtype
    itemsize = torch.finfo(dtype).bits // 8
    n1 = x1.shape[0]
    n2 = n1 if x2 is None else x2.shape[0]
    k = spec.n_directions
    result = math.prod(spec.result_shape(n1, n2)) * itemsize
    other = 0 if x2 is None else n2 * (1 if spec.how == "trace" else k) * dim * itemsize
    plan1 = plan_projection(prof, spec, n1, dim, itemsize, budget, result + other)
    f1 = projected_features(prof, x1, spec, dim, seed, plan1, progress)
    if x2 is None:
        f2 = f1
    else:
        held = result + f1.numel() * itemsize
        plan2 = plan_projection(prof, spec, n2, dim, itemsize, budget, held)
        f2 = projected_features(prof, x2, spec, dim, seed, plan2, progress)
    if spec.how == "diag":
        if x2 is None:
            return torch.bmm(f1, f1.transpose(1, 2))
        return torch.bmm(f1, f2.transpose(1, 2))
    a = f1.reshape(n1 * (k if spec.how == "full" else 1), dim)
    b = a if x2 is None else f2.reshape(n2 * (k if spec.how == "full" else 1), dim)
    kern = a @ b.T
    if x2 is None:
        kern = (kern + kern.T) / 2
    return kern.view(spec.result_shape(n1, n2))


def _check_inputs(x, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``x`` on the model's device: floating inputs in the model's dtype, ids unchanged."""
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    if not isinstance(x, torch.Tensor):
        raise TypeError(
            f"x must be a torch.Tensor or numpy.ndarray of shape (n, ...); got {type(x).__name__}."
        )
    if x.device != device:
        raise ValueError(
            f"x is on {x.device} but the model's parameters are on {device}; move the inputs "
            f"to the model's device (x.to({str(device)!r}))."
        )
    if not x.is_floating_point() and not x.is_complex():
        if x.ndim < 1 or x.shape[0] == 0:
            raise ValueError(f"x must be a non-empty batch (n, ...); got {tuple(x.shape)}.")
        return x
    return as_batch(x, "x", dtype=dtype, device=device, min_rank=1)  # checks finiteness


def ntk_features(
    model,
    x,
    *,
    dim: int,
    mode: str = "trace",
    logit: int | None = None,
    seed: int = 0,
    params=None,
    max_memory: int | str | None = None,
    progress: bool = True,
) -> torch.Tensor:
    """Random-projection tangent features: ``phi(x1) @ phi(x2).T`` estimates the NTK.

    ``phi(x) = S J(x)`` for a sparse random projection ``S`` (a count sketch) that depends
    only on ``seed`` and the parameters' names and shapes, so features of new inputs
    computed later (any chunking, any process, any device) are compatible with stored ones.
    The estimate is unbiased, with a relative error of about ``dim^-1/2`` (a few times
    more for a layer whose per-sample gradient has rank one, such as a dense layer on a
    single vector). Per-sample gradients of the parameters that structured rules cover
    (``Linear``, ``Conv1d/2d``, ``Embedding``, normalization affines) are never formed.

    Args:
        model: A ``torch.nn.Module`` or ``f(params, x)`` (with ``params=`` a dict).
        x: Inputs ``(n, *in_shape)`` on the model's device (floating, or integer ids).
        dim: Number of features ``k`` (``1 <= dim <= P``).
        mode: ``"trace"`` -> ``(n, dim)`` estimating ``sum_a Theta_aa``; ``"full"`` ->
            ``(n, O, dim)`` with ``phi[i, a] . phi[j, b]`` estimating ``Theta_ab``;
            ``"sum_logits"`` -> ``(n, dim)``, the pseudo-NTK; ``"logit"`` -> ``(n, dim)``
            for ``Theta_ii`` with ``logit=i``.
        logit: Output index for ``mode="logit"``.
        seed: Seed of the projection.
        params: Parameters to differentiate in (as in :func:`ntkit.empirical_ntk`).
        max_memory: Memory budget in bytes or a string such as ``"2GiB"`` (default: half
            the available memory); inputs and output directions are chunked to fit, or a
            ``ValueError`` gives the estimate.
        progress: Show a progress bar when the work is split into several chunks.

    Returns:
        Features in the model's dtype on the model's device.

    Raises:
        ValueError: ``dim < 1`` or ``dim > P``, a mode without features, inputs on another
            device than the model, bad inputs, or a budget that cannot hold one sample.
        TypeError: ``dim`` is not an integer, or ``x`` not a tensor/array.
    """
    if mode not in FEATURE_MODES:
        raise ValueError(
            f"mode must be one of {FEATURE_MODES} for features; got {mode!r} (the diagonal "
            "comes from empirical_ntk(..., mode='diagonal', implementation='projected'))."
        )
    fm = functionalize(model, params)
    p0 = next(iter(fm.params.values()))
    if not p0.is_floating_point():
        raise TypeError(f"parameters must be floating point; got {p0.dtype}.")
    x = _check_inputs(x, p0.dtype, p0.device)
    with transform_safe():
        prof = profile(fm, x[:2], use_rules=True)
        spec = mode_spec(mode, logit, prof.out_numel)
        dim = check_dim(dim, prof.total_params)
        budget = resolve_max_memory(max_memory, p0.device)
        itemsize = torch.finfo(p0.dtype).bits // 8
        plan = plan_projection(prof, spec, x.shape[0], dim, itemsize, budget)
        return projected_features(prof, x, spec, dim, seed, plan, progress)
