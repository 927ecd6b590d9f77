"""Iterative solves from matrix-free kernel products, for kernels too large to factor.

:func:`conjugate_gradient` solves ``(K + r I) X = B`` with preconditioned conjugate
gradients, touching ``K`` only through block products ``K @ V``. Operators:

- :class:`DenseOperator`: a kernel matrix that fits in memory (one GEMM per product);
- :class:`BlockKernelOperator` / :func:`kernel_operator`: a kernel recomputed block of rows
  by block of rows at every product from a kernel function (``net.kernel`` of an ntkit
  description, or any ``fn(x1, x2)``), never stored: memory ``O(block_size * n)``;
- :class:`FunctionOperator`: any function ``V -> K V``;
  :func:`empirical_ntk_operator` wraps :func:`ntkit.ntk_vp`, the empirical NTK of a model
  without forming its Jacobian or kernel.

Why a hand-written CG next to ``scipy.sparse.linalg.cg`` (``method="scipy"`` uses scipy):
scipy solves one right-hand side at a time on the CPU, so ``m`` targets cost ``m`` kernel
passes per iteration and GPU products round-trip through host memory. The ``"torch"``
method runs the ``m`` independent CG recurrences together (each column keeps its own step
sizes, as ``m`` separate scipy runs would): one block product ``K @ P`` per iteration for
all columns, on the kernel's device. Tests check that both methods agree.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import NamedTuple

import torch

from ntkit.predict._checks import as_float_tensor, resolve_ridge

__all__ = [
    "BlockKernelOperator",
    "CGResult",
    "DenseOperator",
    "FunctionOperator",
    "KernelOperator",
    "conjugate_gradient",
    "empirical_ntk_operator",
    "jacobi_preconditioner",
    "kernel_operator",
    "nystrom_preconditioner",
]

#: Default size of one block of kernel rows built by :class:`BlockKernelOperator` (bytes).
BLOCK_BYTES = 16 * 2**20


class KernelOperator:
    """A linear operator known through block products; subclasses define :meth:`matmul`.

    Attributes:
        shape: ``(n_rows, n_cols)``.
        dtype: Dtype of the products.
        device: Device of the products.
    """

    shape: tuple[int, int]
    dtype: torch.dtype
    device: torch.device

    def matmul(self, v: torch.Tensor) -> torch.Tensor:
        """``K @ v`` for ``v`` of shape ``(n_cols, m)``; returns ``(n_rows, m)``."""
        raise NotImplementedError

    def diagonal(self) -> torch.Tensor:
        """``(n,)`` diagonal of a square operator (needed by the Jacobi preconditioner)."""
        raise NotImplementedError(
            f"{type(self).__name__} does not know its diagonal; use another preconditioner."
        )

    def __matmul__(self, v: torch.Tensor) -> torch.Tensor:
        if v.ndim == 1:
            return self.matmul(v[:, None])[:, 0]
        return self.matmul(v)


class DenseOperator(KernelOperator):
    """A kernel matrix held in memory.

    Args:
        k: ``(n_rows, n_cols)`` matrix.
    """

    def __init__(self, k: torch.Tensor):
        k = as_float_tensor(k, "k")
        if k.ndim != 2:
            raise ValueError(f"k must be a matrix (n_rows, n_cols); got {tuple(k.shape)}.")
        self.k = k
        self.shape = (int(k.shape[0]), int(k.shape[1]))
        self.dtype, self.device = k.dtype, k.device

    def matmul(self, v: torch.Tensor) -> torch.Tensor:
        return self.k @ v

    def diagonal(self) -> torch.Tensor:
        return torch.diagonal(self.k)


class FunctionOperator(KernelOperator):
    """An operator given by a product function.

    Args:
        fn: ``fn(v)`` with ``v`` of shape ``(n, m)``, returning ``K @ v`` ``(n, m)``.
        n: Side of the (square) operator.
        dtype: Dtype ``fn`` works in.
        device: Device ``fn`` works on.
        diagonal: Optional ``(n,)`` diagonal (enables Jacobi preconditioning).
    """

    def __init__(self, fn: Callable, n: int, *, dtype=torch.float64, device="cpu", diagonal=None):
        if not callable(fn):
            raise TypeError(f"fn must be callable; got {type(fn).__name__}.")
        self.fn = fn
        self.shape = (int(n), int(n))
        self.dtype, self.device = dtype, torch.device(device)
        self._diag = diagonal

    def matmul(self, v: torch.Tensor) -> torch.Tensor:
        out = self.fn(v)
        if out.shape != v.shape:
            raise ValueError(
                f"the product function returned shape {tuple(out.shape)} for input "
                f"{tuple(v.shape)}; expected the same shape."
            )
        return out

    def diagonal(self) -> torch.Tensor:
        if self._diag is None:
            return super().diagonal()
        return self._diag


class BlockKernelOperator(KernelOperator):
    """``K(x1, x2)`` recomputed block of rows by block of rows at every product.

    Args:
        kernel_fn: ``kernel_fn(a, b)`` -> ``(len(a), len(b))`` tensor.
        x1: ``(n1, *in_shape)`` row inputs.
        x2: ``(n2, *in_shape)`` column inputs; ``None`` means ``x1`` (a square operator).
        block_size: Rows per block; by default blocks of about 16 MiB (small blocks reuse
            allocator memory; large ones page-fault on every product).
        dtype: Dtype of the kernel blocks (float64 by default).
    """

    def __init__(self, kernel_fn: Callable, x1, x2=None, *, block_size=None, dtype=None):
        self.kernel_fn = kernel_fn
        self.x1 = x1
        self.x2 = x1 if x2 is None else x2
        self.square = x2 is None
        self.shape = (int(x1.shape[0]), int(self.x2.shape[0]))
        self.dtype = torch.float64 if dtype is None else dtype
        self.device = x1.device
        per_row = self.shape[1] * torch.finfo(self.dtype).bits // 8
        if block_size is None:
            block_size = max(1, BLOCK_BYTES // per_row)
        if int(block_size) != block_size or block_size < 1:
            raise ValueError(f"block_size must be a positive integer; got {block_size}.")
        self.block_size = int(min(block_size, self.shape[0]))

    def _block(self, start: int, stop: int) -> torch.Tensor:
        kb = self.kernel_fn(self.x1[start:stop], self.x2)
        want = (stop - start, self.shape[1])
        if tuple(kb.shape) != want:
            raise ValueError(f"kernel_fn returned shape {tuple(kb.shape)}; expected {want}.")
        return kb.to(self.dtype)

    def matmul(self, v: torch.Tensor) -> torch.Tensor:
        out = torch.empty(self.shape[0], v.shape[1], dtype=v.dtype, device=v.device)
        for start in range(0, self.shape[0], self.block_size):
            stop = min(start + self.block_size, self.shape[0])
            out[start:stop] = (self._block(start, stop) @ v.to(self.dtype)).to(v.dtype)
        return out

    def diagonal(self) -> torch.Tensor:
        if not self.square:
            return super().diagonal()
        parts = []
        for start in range(0, self.shape[0], self.block_size):
            stop = min(start + self.block_size, self.shape[0])
            xb = self.x1[start:stop]
            parts.append(torch.diagonal(self.kernel_fn(xb, xb)).to(self.dtype))
        return torch.cat(parts)

    def to_dense(self) -> torch.Tensor:
        """The whole ``(n1, n2)`` matrix, built block by block (peak: result + one block)."""
        out = torch.empty(self.shape, dtype=self.dtype, device=self.device)
        for start in range(0, self.shape[0], self.block_size):
            stop = min(start + self.block_size, self.shape[0])
            out[start:stop] = self._block(start, stop)
        return out


def kernel_operator(
    net,
    x1=None,
    x2=None,
    *,
    get: str = "ntk",
    block_size: int | None = None,
    dtype: torch.dtype | None = None,
    max_memory: int | None = None,
) -> KernelOperator:
    """A matrix-free operator for the infinite-width kernel of an ntkit description.

    Example:
        >>> op = kernel_operator(net, x_train)            # K(X, X), never stored
        >>> res = conjugate_gradient(op, y_train, ridge=1e-3)          # doctest: +SKIP
        >>> pred = kernel_operator(net, x_test, x_train) @ res.solution

    Args:
        net: An :class:`ntkit.layers.Layer` ending in a readout, or ``fn(x1, x2)`` returning
            an ``ntkit.Kernel`` or a ``(n1, n2)`` tensor, or a finished
            :class:`ntkit.tiling.StoredKernel` (read block by block; no ``x1``/``x2``).
        x1: ``(n1, *in_shape)`` inputs (rows).
        x2: ``(n2, *in_shape)`` inputs (columns); ``None`` for the square ``K(x1, x1)``.
        get: ``"ntk"`` or ``"nngp"``, when the function returns an ``ntkit.Kernel``.
        block_size: Rows per block (default: blocks of about 16 MiB).
        dtype: Kernel dtype (float64 by default).
        max_memory: Memory budget passed to ``net.kernel`` for each block.

    Returns:
        A :class:`BlockKernelOperator` of shape ``(n1, n2)`` (for a stored kernel, a
        ``StoreOperator`` reading whole tiles).
    """
    if get not in ("ntk", "nngp"):
        raise ValueError(f"get must be 'ntk' or 'nngp'; got {get!r}.")
    if hasattr(net, "as_operator"):  # a stored kernel holds its inputs already
        if x1 is not None or x2 is not None:
            raise ValueError("a stored kernel already holds its inputs; pass no x1 or x2.")
        name = get if get in net.names else None
        return net.as_operator(name, block_size)
    if x1 is None:
        raise TypeError("kernel_operator needs x1 (the inputs) for a layer or a function.")
    dtype = torch.float64 if dtype is None else dtype
    x1 = as_float_tensor(x1, "x1", dtype=dtype)
    x2 = None if x2 is None else as_float_tensor(x2, "x2", dtype=dtype, device=x1.device)
    if hasattr(net, "kernel") and callable(net.kernel):
        # row blocks recomputed at every product: no bar per block
        opts = {"get": get if get == "nngp" else ("nngp", "ntk"), "dtype": dtype, "progress": False}
        if max_memory is not None:
            opts["max_memory"] = max_memory

        def fn(a, b):
            return getattr(net.kernel(a, b, **opts), get)

    elif callable(net):

        def fn(a, b):
            out = net(a, b)
            return out if isinstance(out, torch.Tensor) else getattr(out, get)

    else:
        raise TypeError(f"net must be an ntkit layer or a kernel function; got {type(net)}.")
    return BlockKernelOperator(fn, x1, x2, block_size=block_size, dtype=dtype)


def empirical_ntk_operator(
    model, x, *, params=None, max_memory: int | None = None
) -> FunctionOperator:
    """The full empirical NTK ``Theta(x, x)`` of a model as a matrix-free operator.

    Products go through :func:`ntkit.ntk_vp` (one vector-Jacobian and one Jacobian-vector
    product per block of vectors); neither the Jacobian nor the kernel is formed. Rows are
    ordered ``i * O + a`` (example ``i``, output ``a``), the layout of the full
    ``(n, n, O, O)`` kernels in :mod:`ntkit.predict`: solve with targets ``y.reshape(-1)``
    and reshape the solution to ``(n, O)``.

    Args:
        model: A ``torch.nn.Module`` or ``f(params, x)``.
        x: ``(n, *in_shape)`` inputs.
        params: Parameters to differentiate in (as in :func:`ntkit.empirical_ntk`).
        max_memory: Memory budget of each product.

    Returns:
        A square :class:`FunctionOperator` of side ``n * O`` (no diagonal: use the Nyström
        preconditioner or none).
    """
    from ntkit.empirical import ntk_vp

    if not isinstance(model, torch.nn.Module):
        raise TypeError(
            f"empirical_ntk_operator needs a torch.nn.Module; got {type(model).__name__}."
        )
    with torch.no_grad():
        n_out = int(model(x[:1]).reshape(1, -1).shape[1])
    n = int(x.shape[0])
    dtype = next(model.parameters()).dtype

    def product(v: torch.Tensor) -> torch.Tensor:
        out = ntk_vp(model, x, None, v.reshape(n, n_out, -1), params=params, max_memory=max_memory)
        return out.reshape(n * n_out, -1)

    return FunctionOperator(product, n * n_out, dtype=dtype, device=x.device)


def _as_operator(operator) -> KernelOperator:
    if isinstance(operator, KernelOperator):
        return operator
    if hasattr(operator, "as_operator"):  # a stored kernel (ntkit.tiling.StoredKernel)
        return operator.as_operator()
    if isinstance(operator, torch.Tensor) or hasattr(operator, "__array__"):
        return DenseOperator(operator)
    raise TypeError(
        "operator must be a KernelOperator (DenseOperator, BlockKernelOperator, "
        f"FunctionOperator) or a (n, n) tensor; got {type(operator).__name__}."
    )


def jacobi_preconditioner(operator, *, ridge: float = 0.0) -> Callable:
    """``v -> v / (diag(K) + r)``: cheap, helps when the diagonal varies a lot.

    Args:
        operator: A square operator that knows its diagonal.
        ridge: The ridge ``r`` of the system.

    Returns:
        A function ``(n, m) -> (n, m)``.
    """
    d = _as_operator(operator).diagonal().to(torch.float64) + ridge
    if bool((d <= 0).any()):
        raise ValueError("Jacobi preconditioning needs a positive diagonal (add a ridge).")
    return lambda v: v / d.to(v.dtype)[:, None]


def nystrom_preconditioner(
    operator, *, rank: int = 100, ridge: float = 0.0, seed: int = 0
) -> Callable:
    """Randomized Nyström preconditioner (Frangella, Tropp & Udell 2023, SIMAX 44(2)).

    A rank-``l`` Nyström approximation ``U diag(lam) U^T`` of ``K`` from one block product
    ``K @ Omega`` with a random orthonormal ``Omega`` ``(n, l)`` gives
    ``P^{-1} = (lam_l + mu) U (diag(lam) + mu)^{-1} U^T + (I - U U^T)``, with ``mu`` the
    ridge (or ``lam_l`` when the ridge is 0). CG then converges at a rate set by the
    spectrum beyond the top ``l`` eigenvalues.

    Args:
        operator: Square PSD operator.
        rank: Sketch size ``l`` (at most ``n``).
        ridge: The ridge ``r`` of the system.
        seed: Seed of the random sketch.

    Returns:
        A function ``(n, m) -> (n, m)`` applying ``P^{-1}`` in float64.
    """
    op = _as_operator(operator)
    n = op.shape[0]
    rank = int(min(rank, n))
    if rank < 1:
        raise ValueError(f"rank must be >= 1; got {rank}.")
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    omega = torch.randn(n, rank, generator=gen, dtype=torch.float64).to(op.device)
    omega, _ = torch.linalg.qr(omega)
    y = op.matmul(omega.to(op.dtype)).to(torch.float64)
    nu = math.sqrt(n) * torch.finfo(torch.float64).eps * float(torch.linalg.norm(y))
    y = y + nu * omega
    small = omega.mT @ y
    small = (small + small.mT) / 2
    chol, info = torch.linalg.cholesky_ex(small)
    shift = nu
    while int(info) != 0:  # the sketch saw a numerically indefinite block; shift more
        shift = max(10 * shift, 1e-12 * float(small.diagonal().abs().max()) or 1e-300)
        eye = torch.eye(rank, dtype=torch.float64, device=op.device)
        chol, info = torch.linalg.cholesky_ex(small + shift * eye)
    b = torch.linalg.solve_triangular(chol, y.mT, upper=False).mT  # shape: (n, rank)
    u, s, _ = torch.linalg.svd(b, full_matrices=False)
    lam = (s**2 - nu).clamp_min(0)
    mu = float(ridge)
    if mu <= 0:
        mu = float(lam[-1]) if float(lam[-1]) > 0 else 1e-12 * float(lam[0])
    scale = (lam[-1] + mu) / (lam + mu)  # shape: (rank,)

    def apply(v: torch.Tensor) -> torch.Tensor:
        v64 = v.to(torch.float64)
        uv = u.mT @ v64
        return (v64 + u @ ((scale[:, None] - 1) * uv)).to(v.dtype)

    return apply


class CGResult(NamedTuple):
    """Outcome of :func:`conjugate_gradient`.

    Attributes:
        solution: ``(n, m)`` (``(n,)`` for a 1-D right-hand side).
        residual: ``(m,)`` relative residuals ``||b - (K + r I) x|| / ||b||``, recomputed
            from the final solution (not the recurrence).
        iterations: Iterations run (the largest over the columns).
        converged: Whether every column's CG recurrence reached ``tol`` without breakdown
            (the recomputed ``residual`` can differ from the recurrence's by rounding).
    """

    solution: torch.Tensor
    residual: torch.Tensor
    iterations: int
    converged: bool


def _preconditioner(spec, op, ridge, rank, seed) -> Callable | None:
    if spec is None:
        return None
    if callable(spec):
        return spec
    if spec == "jacobi":
        return jacobi_preconditioner(op, ridge=ridge)
    if spec == "nystrom":
        return nystrom_preconditioner(op, rank=rank, ridge=ridge, seed=seed)
    raise ValueError(
        f"preconditioner must be None, 'jacobi', 'nystrom' or a callable; got {spec!r}."
    )


def _cg_torch(apply_a, precond, b, x0, tol, max_iter):
    x = x0.clone()
    r = b - apply_a(x) if bool(x0.any()) else b.clone()
    z = r if precond is None else precond(r)
    p = z.clone()
    rz = (r * z).sum(0)
    bnorm = torch.linalg.norm(b, dim=0)
    bnorm = torch.where(bnorm > 0, bnorm, torch.ones_like(bnorm))
    active = torch.linalg.norm(r, dim=0) / bnorm > tol
    broken = torch.zeros_like(active)
    it = 0
    top = 0.0  # largest Rayleigh quotient seen (a lower bound on lambda_max)
    while bool(active.any()) and it < max_iter:
        cols = active.nonzero()[:, 0]
        ap = apply_a(p[:, cols])
        pap = (p[:, cols] * ap).sum(0)
        # Rayleigh quotients p^T A p / |p|^2: below -1e-10 x the largest seen, the curvature
        # is negative beyond rounding (an indefinite operator, not a singular PSD one)
        rayleigh = pap / (p[:, cols] * p[:, cols]).sum(0).clamp_min(1e-300)
        top = max(top, float(rayleigh.max()))
        if float(rayleigh.min()) < -1e-10 * max(top, 0.0) or (top <= 0 and bool((pap < 0).any())):
            raise ValueError(
                "the operator (K + ridge I) is not positive semi-definite: conjugate gradients "
                f"found a direction of negative curvature (Rayleigh quotient "
                f"{float(rayleigh.min()):.3g}, largest seen {top:.3g}). CG needs a symmetric "
                "PSD kernel; check K, or add a ridge larger than its most negative eigenvalue."
            )
        ok = pap > 0  # a non-positive curvature means breakdown (singular or indefinite)
        alpha = torch.where(ok, rz[cols] / torch.where(ok, pap, 1.0), 0.0)
        x[:, cols] += alpha * p[:, cols]
        r[:, cols] -= alpha * ap
        z_c = r[:, cols] if precond is None else precond(r[:, cols])
        rz_new = (r[:, cols] * z_c).sum(0)
        beta = torch.where(rz[cols] != 0, rz_new / torch.where(rz[cols] != 0, rz[cols], 1.0), 0.0)
        p[:, cols] = z_c + beta * p[:, cols]
        rz[cols] = rz_new
        broken[cols] = ~ok
        active[cols] = (torch.linalg.norm(r[:, cols], dim=0) / bnorm[cols] > tol) & ok
        it += 1
    return x, it, not bool(active.any()) and not bool(broken.any())


def _cg_scipy(apply_a, precond, b, x0, tol, max_iter):
    import numpy as np
    from scipy.sparse.linalg import LinearOperator, cg

    n = b.shape[0]

    def wrap(fn):
        def mv(v):
            vt = torch.as_tensor(np.asarray(v), dtype=b.dtype, device=b.device).reshape(n, -1)
            return fn(vt).cpu().numpy().reshape(v.shape)

        return LinearOperator((n, n), matvec=mv, dtype=np.float64)

    a_op = wrap(apply_a)
    m_op = None if precond is None else wrap(precond)
    cols, its, ok = [], 0, True
    for j in range(b.shape[1]):
        count = [0]

        def callback(_xk, count=count):
            count[0] += 1

        sol, info = cg(
            a_op,
            b[:, j].cpu().numpy(),
            x0=x0[:, j].cpu().numpy(),
            rtol=tol,
            atol=0.0,
            maxiter=max_iter,
            M=m_op,
            callback=callback,
        )
        cols.append(torch.as_tensor(sol, dtype=b.dtype, device=b.device))
        its = max(its, count[0])
        ok = ok and info == 0
    return torch.stack(cols, 1), its, ok


def conjugate_gradient(
    operator,
    b,
    *,
    ridge: float = 0.0,
    ridge_relative: float | None = None,
    preconditioner: str | Callable | None = "nystrom",
    rank: int = 100,
    tol: float = 1e-8,
    max_iter: int | None = None,
    x0=None,
    method: str = "torch",
    seed: int = 0,
    warn: bool = True,
) -> CGResult:
    """Solve ``(K + r I) X = B`` by preconditioned conjugate gradients.

    Runs in float64 (products of a float32 operator are cast up). The cost is one block
    product per iteration plus, for ``"nystrom"``, one ``rank``-column product to build the
    preconditioner. Without ridge a singular ``K`` is fine when ``B`` lies in its range
    (CG then returns a solution; the minimum-norm one only with ``preconditioner=None``
    and ``x0 = 0``, whose iterates stay in the range of ``K``: a preconditioner moves them
    out of it); otherwise the residual stalls and ``converged`` is False. An operator that
    is not positive semi-definite is detected (a search direction of negative curvature)
    and refused. Kernel regression with a ridge ``r``, the
    ``t = inf`` limit of training on ``(1/2) sum`` (or ``(1/2) mean``, same minimizer) of
    squared errors with weight decay ``r``, is ``K(x, X) @ solution``.

    Args:
        operator: Square PSD operator: a :class:`KernelOperator` or an ``(n, n)`` tensor.
        b: ``(n,)`` or ``(n, m)`` right-hand sides.
        ridge: Absolute ridge ``r >= 0``.
        ridge_relative: ``r = ridge_relative * mean(diag K)`` instead (needs the diagonal).
        preconditioner: ``"nystrom"`` (default), ``"jacobi"``, ``None`` or a callable
            ``(n, m) -> (n, m)`` approximating ``(K + r I)^{-1}``.
        rank: Sketch size of the Nyström preconditioner.
        tol: Stop when ``||residual|| / ||b|| <= tol`` for every column.
        max_iter: Iteration cap (default ``min(n, 2000)``).
        x0: Initial guess, shaped like ``b``.
        method: ``"torch"`` (all columns at once, any device) or ``"scipy"``
            (``scipy.sparse.linalg.cg`` per column, CPU).
        seed: Seed of the Nyström sketch.
        warn: Warn when not converged.

    Returns:
        :class:`CGResult` ``(solution, residual, iterations, converged)``.

    Raises:
        ValueError: non-square operator, mismatched ``b``/``x0``, NaN/Inf, bad options, an
            indefinite operator (negative curvature found).
    """
    op = _as_operator(operator)
    n = op.shape[0]
    if op.shape[0] != op.shape[1]:
        raise ValueError(f"operator must be square; got shape {op.shape}.")
    b = as_float_tensor(b, "b", dtype=torch.float64, device=op.device)
    squeeze = b.ndim == 1
    b2 = b[:, None] if squeeze else b
    if b2.ndim != 2 or b2.shape[0] != n:
        raise ValueError(f"b must be ({n},) or ({n}, m); got {tuple(b.shape)}.")
    if ridge_relative is not None:
        r = resolve_ridge(ridge, ridge_relative, op.diagonal()[:, None].expand(n, n))
    else:
        r = resolve_ridge(ridge, None, b2)
    if x0 is None:
        x0_ = torch.zeros_like(b2)
    else:
        x0_ = as_float_tensor(x0, "x0", dtype=torch.float64, device=op.device).reshape(b2.shape)
    if method not in ("torch", "scipy"):
        raise ValueError(f"method must be 'torch' or 'scipy'; got {method!r}.")
    if not tol > 0:
        raise ValueError(f"tol must be > 0; got {tol}.")
    max_iter = min(n, 2000) if max_iter is None else int(max_iter)

    def apply_a(v):
        out = op.matmul(v.to(op.dtype)).to(torch.float64)
        return out + r * v if r else out

    precond = _preconditioner(preconditioner, op, r, rank, seed)
    solver = _cg_torch if method == "torch" else _cg_scipy
    x, its, converged = solver(apply_a, precond, b2, x0_, tol, max_iter)
    bnorm = torch.linalg.norm(b2, dim=0)
    resid = torch.linalg.norm(b2 - apply_a(x), dim=0) / torch.where(bnorm > 0, bnorm, 1.0)
    if not bool(torch.isfinite(x).all()):
        raise ValueError("conjugate gradients produced non-finite values; is K PSD?")
    if warn and not converged:
        warnings.warn(
            f"conjugate gradients stopped after {its} iterations with relative residual "
            f"{float(resid.max()):.3g} > tol={tol}; raise max_iter, add a ridge or a "
            "stronger preconditioner.",
            UserWarning,
            stacklevel=2,
        )
    return CGResult(x[:, 0] if squeeze else x, resid, its, converged)
