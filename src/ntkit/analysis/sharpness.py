"""Sharpness: the top eigenvalues of a loss Hessian from Hessian-vector products.

The Hessian ``H = d^2 L / d theta^2`` of ``L = loss_fn(model(inputs), targets)`` is never
formed: Lanczos (torch-native with full reorthogonalisation, or scipy's ARPACK ``eigsh`` over
a ``LinearOperator``) needs only products ``H v``, each a double backward pass. Lanczos returns
the largest *algebraic* eigenvalues, so it is correct for indefinite Hessians, where plain
power iteration converges to the eigenvalue of largest magnitude, which can be negative.

Data are processed in chunks inside a memory budget. The chunked loss must add up to the
full one: ``reduction="mean"`` (default) weights chunk ``c`` by ``n_c / n`` (right for a
``loss_fn`` that averages over the chunk, as torch's losses do by default),
``reduction="sum"`` adds chunk losses. With a single chunk the gradient graph is built once
and every product is one backward pass through it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import torch

from ntkit._validation import check_finite
from ntkit.empirical.functional import functionalize
from ntkit.settings import format_bytes, resolve_max_memory

__all__ = ["TraceEstimate", "hessian_trace", "hessian_vector_product", "sharpness"]

METHODS = ("lanczos", "scipy", "dense")
REDUCTIONS = ("mean", "sum")

#: Double backward keeps about this many copies of the first backward's saved activations.
_HVP_ACTIVATION_FACTOR = 3


class TraceEstimate(NamedTuple):
    """Hutchinson estimate of ``tr(H)`` and its standard error over the probe vectors."""

    value: float
    stderr: float


class _HVP:
    """``v -> H v`` for a flat parameter vector ``v`` of length ``P``."""

    def __init__(self, model, loss_fn, inputs, targets, *, params, reduction, chunk):
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {REDUCTIONS}; got {reduction!r}.")
        if not callable(loss_fn):
            raise TypeError(
                f"loss_fn must be callable (outputs, targets) -> scalar; got "
                f"{type(loss_fn).__name__}."
            )
        self.fm = functionalize(model, params)
        self.names = list(self.fm.params)
        self.shapes = [p.shape for p in self.fm.params.values()]
        self.sizes = [p.numel() for p in self.fm.params.values()]
        first = next(iter(self.fm.params.values()))
        self.dtype, self.device = first.dtype, first.device
        self.n_params = sum(self.sizes)
        self.inputs, self.targets = _check_data(inputs, targets, self.dtype, self.device)
        self.loss_fn, self.reduction = loss_fn, reduction
        n = self.inputs.shape[0]
        self.chunk = n if chunk is None else chunk
        self.bounds = [(s, min(s + self.chunk, n)) for s in range(0, n, self.chunk)]
        self._graph = None  # (params, grads) of the single chunk, built once

    def _params(self):
        return {k: v.detach().requires_grad_(True) for k, v in self.fm.params.items()}

    def _chunk_grads(self, lo, hi):
        p = self._params()
        with torch.enable_grad():
            out = self.fm.fn(p, self.inputs[lo:hi])
            loss = self.loss_fn(out, self.targets[lo:hi])
            if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
                raise ValueError(
                    "loss_fn must return a scalar tensor; got "
                    f"{type(loss).__name__} {tuple(getattr(loss, 'shape', ()))}."
                )
            check_finite(loss.detach().reshape(1), "loss")
            if not loss.requires_grad:
                raise ValueError(
                    "the loss does not depend on the parameters (no gradient); check that "
                    "loss_fn uses the model's outputs."
                )
            grads = torch.autograd.grad(
                loss, list(p.values()), create_graph=True, allow_unused=True
            )
        if all(g is None for g in grads):
            raise ValueError("the loss does not depend on the parameters (no gradient).")
        weight = (hi - lo) / self.inputs.shape[0] if self.reduction == "mean" else 1.0
        return p, grads, weight, loss.detach()

    def loss_and_grad(self) -> tuple[float, torch.Tensor]:
        """The full loss and its flat gradient ``(P,)``."""
        total, flat = 0.0, torch.zeros(self.n_params, dtype=self.dtype, device=self.device)
        for lo, hi in self.bounds:
            _, grads, w, loss = self._chunk_grads(lo, hi)
            total += w * float(loss)
            flat += w * self._flatten([None if g is None else g.detach() for g in grads])
        return total, flat

    def _flatten(self, tensors) -> torch.Tensor:
        parts = [
            torch.zeros(s, dtype=self.dtype, device=self.device) if t is None else t.reshape(-1)
            for t, s in zip(tensors, self.sizes, strict=True)
        ]
        return torch.cat(parts)

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        vs = list(torch.split(v.to(self.dtype), self.sizes))
        vs = [t.reshape(s) for t, s in zip(vs, self.shapes, strict=True)]
        out = torch.zeros(self.n_params, dtype=self.dtype, device=self.device)
        single = len(self.bounds) == 1
        for lo, hi in self.bounds:
            if single and self._graph is not None:
                p, grads, w = self._graph
            else:
                p, grads, w, _ = self._chunk_grads(lo, hi)
                if single:
                    self._graph = (p, grads, w)
            used = [(g, t) for g, t in zip(grads, vs, strict=True) if g is not None]
            with torch.enable_grad():
                dot = sum((g * t).sum() for g, t in used)
                if not dot.requires_grad:  # gradient does not depend on the parameters
                    continue
                hv = torch.autograd.grad(
                    dot, list(p.values()), retain_graph=single, allow_unused=True
                )
            out += w * self._flatten([None if h is None else h.detach() for h in hv])
        check_finite(out, "Hessian-vector product")
        return out


def _check_data(inputs, targets, dtype, device):
    if isinstance(inputs, np.ndarray):
        inputs = torch.from_numpy(np.ascontiguousarray(inputs))
    if isinstance(targets, np.ndarray):
        targets = torch.from_numpy(np.ascontiguousarray(targets))
    for t, name in ((inputs, "inputs"), (targets, "targets")):
        if not isinstance(t, torch.Tensor):
            raise TypeError(
                f"{name} must be a torch.Tensor or numpy.ndarray; got {type(t).__name__}."
            )
    if inputs.ndim < 1 or inputs.shape[0] == 0:
        raise ValueError(f"inputs must be a non-empty batch (n, ...); got {tuple(inputs.shape)}.")
    if targets.shape[:1] != inputs.shape[:1]:
        raise ValueError(
            f"targets must have one entry per input ({inputs.shape[0]}); got shape "
            f"{tuple(targets.shape)}."
        )
    if inputs.is_floating_point():
        inputs = inputs.to(dtype)
        check_finite(inputs, "inputs")
    if targets.is_floating_point():
        targets = targets.to(dtype)
        check_finite(targets, "targets")
    return inputs.to(device), targets.to(device)


def _per_sample_bytes(hvp: _HVP) -> int:
    """Bytes the autograd graph saves per sample (difference of a 2- and a 1-sample pass)."""
    n = hvp.inputs.shape[0]
    if n < 2:
        return 0
    counts = []
    for m in (1, 2):
        total = [0]

        def pack(t, total=total):
            total[0] += t.numel() * t.element_size()
            return t

        with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            p = hvp._params()
            loss = hvp.loss_fn(hvp.fm.fn(p, hvp.inputs[:m]), hvp.targets[:m])
        del loss, p
        counts.append(total[0])
    return max(counts[1] - counts[0], 0)


def _plan_chunk(hvp: _HVP, basis_vectors: int, max_memory, batch_size) -> int | None:
    """Samples per chunk: ``batch_size`` if given, else the most that fit ``max_memory``."""
    n = hvp.inputs.shape[0]
    if batch_size is not None:
        if not (isinstance(batch_size, int) and batch_size >= 1):
            raise ValueError(f"batch_size must be an integer >= 1; got {batch_size!r}.")
        return min(batch_size, n)
    budget = resolve_max_memory(max_memory, hvp.device)
    itemsize = torch.finfo(hvp.dtype).bits // 8
    # Lanczos basis + parameter copies, gradients with their graph, the product and temporaries
    fixed = (basis_vectors + 6) * hvp.n_params * itemsize
    per_sample = _HVP_ACTIVATION_FACTOR * _per_sample_bytes(hvp)
    if fixed + per_sample > budget:
        raise ValueError(
            f"sharpness needs about {format_bytes(fixed + per_sample)} for one sample "
            f"({basis_vectors} Lanczos vectors of {hvp.n_params} parameters: "
            f"{format_bytes(fixed)}), more than max_memory={format_bytes(budget)}; lower "
            "max_iter or raise max_memory."
        )
    if per_sample == 0:
        return n
    return max(1, min(n, (budget - fixed) // per_sample))


def hessian_vector_product(
    model,
    loss_fn,
    inputs,
    targets,
    v,
    *,
    params=None,
    reduction: str = "mean",
    batch_size: int | None = None,
) -> torch.Tensor:
    """``H v`` for the Hessian of the loss in the model's parameters.

    Args:
        model: A ``torch.nn.Module`` (or ``f(params, x)`` with ``params`` a dict).
        loss_fn: ``loss_fn(outputs, targets) -> scalar``.
        inputs: ``(n, *in_shape)``.
        targets: ``(n, ...)``.
        v: Flat vector ``(P,)`` over the selected parameters in ``named_parameters`` order.
        params: Parameter names to differentiate in (default: all that require grad).
        reduction: ``"mean"`` or ``"sum"`` (how chunk losses add up, see the module docs).
        batch_size: Samples per chunk (default: all at once).

    Returns:
        ``H v``, shape ``(P,)``, in the model's dtype.
    """
    hvp = _HVP(
        model, loss_fn, inputs, targets, params=params, reduction=reduction, chunk=batch_size
    )
    v = torch.as_tensor(v)
    if v.shape != (hvp.n_params,):
        raise ValueError(f"v must have shape ({hvp.n_params},); got {tuple(v.shape)}.")
    return hvp(v.to(hvp.device))


def sharpness(
    model,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    inputs,
    targets,
    *,
    k: int = 1,
    params=None,
    method: str = "lanczos",
    reduction: str = "mean",
    max_iter: int = 100,
    tol: float = 1e-6,
    batch_size: int | None = None,
    max_memory: int | None = None,
    seed: int = 0,
) -> torch.Tensor:
    """The ``k`` largest (algebraic) eigenvalues of the loss Hessian, descending.

    Args:
        model: A ``torch.nn.Module`` (eval-mode BatchNorm/dropout) or ``f(params, x)`` with
            ``params`` a dict.
        loss_fn: ``loss_fn(outputs, targets) -> scalar`` (e.g. ``torch.nn.MSELoss()``).
        inputs: ``(n, *in_shape)``.
        targets: ``(n, ...)``.
        k: Number of eigenvalues, ``1 <= k <= P`` (``P`` parameters).
        params: Names of the parameters to differentiate in (default: all requiring grad).
        method: ``"lanczos"`` (torch-native, runs on the parameters' device), ``"scipy"``
            (ARPACK ``eigsh(which="LA")`` over a ``LinearOperator``, on the host) or
            ``"dense"`` (``P`` products build the whole Hessian; small models only).
        reduction: ``"mean"`` or ``"sum"``: how chunk losses add up to the full loss.
        max_iter: Largest Krylov dimension (Lanczos) / iteration cap (ARPACK).
        tol: Relative accuracy of the eigenvalues; an unconverged result raises.
        batch_size: Samples per chunk (default: planned from ``max_memory``).
        max_memory: Memory budget in bytes (default: half the available memory).
        seed: Seed of the starting vector (private generator).

    Returns:
        Eigenvalues ``(k,)`` in the model's dtype, descending.

    Raises:
        ValueError: ``k`` out of range, a loss that does not depend on the parameters, bad
            shapes, non-finite values, no convergence within ``max_iter``, or a budget that
            cannot hold one sample.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}; got {method!r}.")
    if not (isinstance(max_iter, int) and max_iter >= 1):
        raise ValueError(f"max_iter must be an integer >= 1; got {max_iter!r}.")
    if not (isinstance(tol, (int, float)) and 0 < tol < 1):
        raise ValueError(f"tol must be in (0, 1); got {tol!r}.")
    hvp = _HVP(model, loss_fn, inputs, targets, params=params, reduction=reduction, chunk=1)
    n_params = hvp.n_params
    if not (isinstance(k, int) and 1 <= k <= n_params):
        raise ValueError(
            f"k must be an integer in [1, P] with P = {n_params} parameters; got {k!r}."
        )
    if method != "dense" and k >= n_params - 1:
        method = "dense"  # Krylov methods need k < P - 1; the whole Hessian is small here
    basis = min(max_iter, n_params) + 1 if method == "lanczos" else 4
    chunk = _plan_chunk(hvp, basis, max_memory, batch_size)
    hvp = _HVP(model, loss_fn, inputs, targets, params=params, reduction=reduction, chunk=chunk)
    if method == "dense":
        evals = _dense_eigenvalues(hvp)
    elif method == "scipy":
        evals = _scipy_eigenvalues(hvp, k, max_iter, tol, seed)
    else:
        evals = _lanczos(hvp, k, max_iter, tol, seed)
    return evals[:k].to(hvp.dtype)


def _dense_eigenvalues(hvp: _HVP) -> torch.Tensor:
    eye = torch.eye(hvp.n_params, dtype=hvp.dtype, device=hvp.device)
    h = torch.stack([hvp(eye[i]) for i in range(hvp.n_params)]).double()
    return torch.linalg.eigvalsh(0.5 * (h + h.T)).flip(0)


def _scipy_eigenvalues(hvp: _HVP, k: int, max_iter: int, tol: float, seed: int) -> torch.Tensor:
    from scipy.sparse.linalg import ArpackNoConvergence, LinearOperator, eigsh

    def matvec(v):
        x = torch.from_numpy(np.asarray(v, dtype=np.float64).reshape(-1)).to(hvp.device)
        return hvp(x).double().cpu().numpy()

    op = LinearOperator((hvp.n_params, hvp.n_params), matvec=matvec, dtype=np.float64)
    v0 = np.random.default_rng(seed).standard_normal(hvp.n_params)
    try:
        vals = eigsh(
            op, k=k, which="LA", v0=v0, tol=tol, maxiter=max_iter, return_eigenvectors=False
        )
    except ArpackNoConvergence as err:
        raise ValueError(
            f"ARPACK did not converge to {k} eigenvalues within max_iter={max_iter} "
            f"(converged: {len(err.eigenvalues)}); raise max_iter or tol."
        ) from None
    return torch.from_numpy(np.sort(vals)[::-1].copy())


def _lanczos(hvp: _HVP, k: int, max_iter: int, tol: float, seed: int) -> torch.Tensor:
    """Lanczos with full reorthogonalisation; stops when the top-``k`` Ritz values converge.

    Convergence: the residual of Ritz pair ``i`` is ``|beta_m s_{m,i}|``; all top-``k``
    residuals must be ``<= tol * max|theta|``. An invariant subspace (``beta ~ 0``) is exact.
    """
    from scipy.linalg import eigh_tridiagonal

    n_params = hvp.n_params
    m_max = min(max_iter, n_params)
    gen = torch.Generator(device=hvp.device).manual_seed(int(seed))
    q = torch.randn(n_params, generator=gen, dtype=hvp.dtype, device=hvp.device)
    basis = torch.empty(m_max + 1, n_params, dtype=hvp.dtype, device=hvp.device)
    basis[0] = q / q.norm()
    alphas, betas = [], []
    residual, scale = np.array([np.inf]), 1.0
    for j in range(m_max):
        w = hvp(basis[j])
        alpha = float(basis[j] @ w)
        w -= alpha * basis[j]
        if j > 0:
            w -= betas[-1] * basis[j - 1]
        for _ in range(2):  # full reorthogonalisation, twice is enough (Kahan-Parlett)
            w -= basis[: j + 1].T @ (basis[: j + 1] @ w)
        beta = float(w.norm())
        alphas.append(alpha)
        theta, s = eigh_tridiagonal(np.array(alphas), np.array(betas))
        scale = max(float(np.abs(theta).max()), np.finfo(np.float64).tiny)
        invariant = beta <= 1e3 * np.finfo(np.float64).eps * scale * math.sqrt(j + 1)
        if invariant and j + 1 < k:
            # the start vector's Krylov space is exhausted before k eigenvalues appear
            raise ValueError(
                f"Lanczos found an invariant subspace of dimension {j + 1} < k={k}; the "
                "Hessian has fewer distinct eigenvalues than requested in this Krylov space; "
                "use method='dense' or a smaller k."
            )
        if j + 1 >= k:
            top = np.argsort(theta)[::-1][:k]
            residual = np.abs(beta * s[-1, top])
            if invariant or bool(np.all(residual <= tol * scale)):
                return torch.from_numpy(theta[top].copy())
        if j + 1 == m_max:
            break
        betas.append(beta)
        basis[j + 1] = w / beta
    raise ValueError(
        f"Lanczos did not converge to {k} eigenvalues within max_iter={max_iter} "
        f"(largest relative residual {float(residual.max()) / scale:.2e} > tol={tol}); "
        "raise max_iter or tol."
    )


def hessian_trace(
    model,
    loss_fn,
    inputs,
    targets,
    *,
    samples: int = 100,
    params=None,
    reduction: str = "mean",
    batch_size: int | None = None,
    seed: int = 0,
) -> TraceEstimate:
    """Hutchinson's estimate ``tr(H) ~ mean_i z_i^T H z_i`` with Rademacher ``z_i``.

    Args:
        model: A ``torch.nn.Module`` or ``f(params, x)`` (see :func:`sharpness`).
        loss_fn: ``loss_fn(outputs, targets) -> scalar``.
        inputs: ``(n, *in_shape)``.
        targets: ``(n, ...)``.
        params: Names of the parameters to differentiate in.
        reduction: ``"mean"`` or ``"sum"`` (see :func:`sharpness`).
        batch_size: Samples per chunk (default: all at once).
        samples: Number of probe vectors (>= 2, for the standard error).
        seed: Seed of the probes (private generator).

    Returns:
        :class:`TraceEstimate` ``(value, stderr)``.
    """
    if not (isinstance(samples, int) and samples >= 2):
        raise ValueError(f"samples must be an integer >= 2; got {samples!r}.")
    hvp = _HVP(
        model, loss_fn, inputs, targets, params=params, reduction=reduction, chunk=batch_size
    )
    gen = torch.Generator(device=hvp.device).manual_seed(int(seed))
    vals = []
    for _ in range(samples):
        z = torch.randint(0, 2, (hvp.n_params,), generator=gen, device=hvp.device)
        z = (2 * z - 1).to(hvp.dtype)
        vals.append(float(z @ hvp(z)))
    arr = np.asarray(vals)
    return TraceEstimate(float(arr.mean()), float(arr.std(ddof=1) / math.sqrt(samples)))
