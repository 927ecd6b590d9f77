"""NTK-vector products: ``Theta @ v = J(x1) (J(x2)^T v)`` without forming ``J`` or ``Theta``.

One vector-Jacobian product on ``x2`` gives the parameter-space vector ``J(x2)^T v``; one
Jacobian-vector product on ``x1`` maps it back to outputs. The ``ntvp`` kernel
implementation applies this to the columns ``e_j (x) C_b`` of the kernel, vectorised over
columns with ``torch.func.vmap`` (Novak, Sohl-Dickstein & Schoenholz 2022, "NTK-vector
products"): memory is one parameter vector and one batch of activations per column.
"""

from __future__ import annotations

import math

import torch
from torch.func import jvp, vjp, vmap

from ntkit.empirical.assemble import halve_to_fit
from ntkit.empirical.functional import FunctionalModel
from ntkit.empirical.jacobian import per_sample_jacobians
from ntkit.empirical.modes import ModeSpec
from ntkit.settings import format_bytes

__all__ = ["ntvp_kernel", "ntvp_plan", "vector_product"]


def _flat_fn(fm: FunctionalModel, x: torch.Tensor):
    n = x.shape[0]
    return lambda p: fm.fn(p, x).reshape(n, -1)


def vector_product(
    fm: FunctionalModel,
    x1: torch.Tensor,
    x2: torch.Tensor,
    v: torch.Tensor,
    chunk: int,
) -> torch.Tensor:
    """``Theta(x1, x2) @ v`` for ``v: (n2, O)``, chunked over samples.

    Returns:
        ``(n1, O)``.
    """
    params = fm.params
    w = None
    for s in range(0, x2.shape[0], chunk):
        _, pull = vjp(_flat_fn(fm, x2[s : s + chunk]), params)
        (g,) = pull(v[s : s + chunk])
        w = g if w is None else {k: w[k] + g[k] for k in w}
    outs = []
    for s in range(0, x1.shape[0], chunk):
        _, t = jvp(_flat_fn(fm, x1[s : s + chunk]), (params,), (w,))
        outs.append(t)
    return torch.cat(outs, 0)


def ntvp_plan(
    spec: ModeSpec,
    n1: int,
    n2: int,
    total_params: int,
    act_bytes: float,
    itemsize: int,
    budget: float,
) -> tuple[int, int, float]:
    """Columns per batch and ``x1`` rows per batch that fit in ``budget``.

    Per column: one parameter vector (``total_params`` entries) and the tangent
    activations of the ``x1`` rows (about ``3 * act_bytes`` per row).

    Returns:
        ``(columns, rows, peak_bytes)``.

    Raises:
        ValueError: one column and one row do not fit.
    """
    k = spec.n_directions
    result = math.prod(spec.result_shape(n1, n2)) * itemsize
    rows = n1 if spec.how != "diag" else 1
    n_cols = (n1 if spec.how == "diag" else n2) * k

    def need(cols: int, r: int) -> float:
        return result + cols * (total_params * itemsize + 3 * r * act_bytes + r * k * itemsize)

    cols, rows, peak = halve_to_fit(need, n_cols, rows, budget)
    if peak > budget:
        raise ValueError(
            f"max_memory={format_bytes(budget)} cannot hold the NTK-vector-product kernel: "
            f"it needs at least {format_bytes(peak)}. Raise max_memory, use mode='trace' "
            "or mode='sum_logits', or fewer inputs per call."
        )
    return cols, rows, peak


def ntvp_kernel(
    fm: FunctionalModel,
    x1: torch.Tensor,
    x2: torch.Tensor | None,
    spec: ModeSpec,
    cols: int,
    rows: int,
    params: list[str] | None = None,
) -> torch.Tensor:
    """The kernel in ``spec``'s internal layout from NTK-vector products.

    Args:
        fm: The functional model.
        x1: ``(n1, *in_shape)``.
        x2: ``(n2, *in_shape)`` or ``None``.
        spec: The mode.
        cols: Kernel columns per vectorised batch.
        rows: ``x1`` rows per Jacobian-vector product.
        params: Restrict the tangent to these parameters (one parameter's share), or
            ``None`` for all.

    Returns:
        The kernel (internal layout, see :class:`ModeSpec`).
    """
    xb = x1 if x2 is None else x2
    dtype = next(iter(fm.params.values())).dtype
    c = spec.directions(dtype, x1.device)
    k, o = c.shape
    n1, n2 = x1.shape[0], xb.shape[0]
    out = torch.zeros(spec.result_shape(n1, n2), dtype=dtype, device=x1.device)
    keep = None if params is None else set(params)

    def restrict(t: dict) -> dict:
        if keep is None:
            return t
        return {n: (v if n in keep else torch.zeros_like(v)) for n, v in t.items()}

    if spec.how == "diag":
        return _ntvp_diag(fm, x1, xb, c, out, cols, restrict)
    # columns (j, b): tangents J(x2_j)^T C_b (per-sample vjp), then jvp on x1 rows
    per = max(1, cols // k)
    for s in range(0, n2, per):
        js = slice(s, min(s + per, n2))
        tangents = per_sample_jacobians(fm, xb[js], c)  # name -> (c2, K, P_name)
        tangents = restrict({n: t.reshape(-1, *fm.params[n].shape) for n, t in tangents.items()})
        for r in range(0, n1, rows):
            f1 = _flat_fn(fm, x1[r : r + rows])

            def push(t, f1=f1):
                return jvp(f1, (fm.params,), (t,))[1]

            col = vmap(push)(tangents) @ c.T  # (c2 * K, rows, K): Theta[i, a, j, b]
            col = col.reshape(js.stop - js.start, k, -1, k)  # (j, b, i, a)
            rr = slice(r, r + rows)
            if spec.how == "full":
                out[rr, :, js, :] = col.permute(2, 3, 0, 1)
            else:
                out[rr, js] = col.diagonal(dim1=1, dim2=3).sum(-1).T
    if x2 is None:  # exactly symmetric
        side = n1 * (k if spec.how == "full" else 1)
        flat = out.view(side, side)
        flat.copy_((flat + flat.T) / 2)
    return out


def _ntvp_diag(fm, x1, xb, c, out, cols, restrict):
    k = c.shape[0]
    per = max(1, cols // k)
    for s in range(0, x1.shape[0], per):
        a, b = x1[s : s + per], xb[s : s + per]

        def single(ai, bi):
            _, pull = vjp(lambda p: fm.fn(p, bi.unsqueeze(0)).reshape(-1), fm.params)
            (t,) = vmap(pull)(c)
            t = restrict(t)

            def push(ti):
                return jvp(lambda p: fm.fn(p, ai.unsqueeze(0)).reshape(-1), (fm.params,), (ti,))[1]

            return c @ vmap(push)(t).T  # (K, K): [a, b]

        out[s : s + per] = vmap(single)(a, b)
    return out
