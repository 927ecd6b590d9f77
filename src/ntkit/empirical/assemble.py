"""Chunked assembly of a kernel from per-sample factors, inside a memory budget.

A *featurizer* maps ``(x_chunk: (c, *in_shape), directions: (k, O))`` to ``{key: factor}``
(:mod:`ntkit.empirical.factors`). The kernel is the sum over keys of the factors'
contractions. When everything fits, the features of ``x1`` (and ``x2``) are computed once
and contracted once; otherwise the inputs are split into row chunks and the output
directions into direction chunks, the features of ``x2`` chunks are recomputed per ``x1``
chunk, and with ``x2=None`` only the upper triangle of chunks is computed and mirrored.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ntkit.empirical.factors import contract, mirror_lower
from ntkit.empirical.modes import ModeSpec
from ntkit.settings import format_bytes

__all__ = ["ChunkPlan", "assemble", "plan_chunks"]


@dataclass(frozen=True)
class ChunkPlan:
    """A chunking of the samples and output directions.

    Attributes:
        rows: Samples per chunk.
        dirs: Output directions per chunk.
        peak: Estimated peak bytes.
        featurized: Sample-directions featurized in total (recomputation included).
    """

    rows: int
    dirs: int
    peak: float
    featurized: float


def _block_entries(how: str, c1: int, c2: int, k: int) -> int:
    if how == "full":
        return c1 * k * c2 * k
    if how == "trace":
        return c1 * c2
    return c1 * k * k


def halve_to_fit(
    need: Callable[[int, int], float], a: int, b: int, budget: float
) -> tuple[int, int, float]:
    """Halve chunk size ``a`` (rounding up), then ``b``, until ``need(a, b) <= budget``.

    Neither goes below 1, so the returned ``peak = need(a, b)`` may still exceed ``budget``
    (the caller raises).

    Returns:
        ``(a, b, peak)``.
    """
    while need(a, b) > budget and a > 1:
        a = (a + 1) // 2
    while need(a, b) > budget and b > 1:
        b = (b + 1) // 2
    return a, b, need(a, b)


def plan_chunks(
    spec: ModeSpec,
    n1: int,
    n2: int,
    sym: bool,
    fixed_bytes: float,
    per_dir_bytes: float,
    itemsize: int,
    budget: float,
    n_results: int = 1,
    what: str = "this kernel",
) -> ChunkPlan:
    """Largest chunks whose features, contraction temporaries and result fit in ``budget``.

    Args:
        spec: The mode.
        n1: Samples of ``x1``.
        n2: Samples of ``x2``.
        sym: ``x2`` is ``x1`` (features computed once per chunk).
        fixed_bytes: Per-sample feature bytes independent of the directions.
        per_dir_bytes: Per-sample feature bytes per output direction.
        itemsize: Bytes per entry.
        budget: ``max_memory`` in bytes.
        n_results: Result tensors kept (one per parameter with ``per_parameter``).
        what: Description used in the error message.

    Returns:
        A :class:`ChunkPlan`.

    Raises:
        ValueError: even one sample and one direction per chunk does not fit; the message
            gives the estimate and the options that fit.
    """
    k = spec.n_directions
    result = math.prod(spec.result_shape(n1, n2)) * itemsize * n_results
    if spec.how == "diag":
        n2 = n1

    def feat(c: int, kc: int) -> float:
        return c * (fixed_bytes + kc * per_dir_bytes)

    def need(c: int, kc: int) -> float:
        c2 = min(c, n2)
        c1 = min(c, n1)
        two = feat(c1, kc) + (0 if sym and c1 >= n1 and kc >= k else feat(c2, kc))
        return result + two + 3 * _block_entries(spec.how, c1, c2, kc) * itemsize

    c, kc, peak = halve_to_fit(need, max(n1, n2), k, budget)
    if peak > budget:
        raise ValueError(
            f"max_memory={format_bytes(budget)} cannot hold {what}: the result alone needs "
            f"{format_bytes(result)} and the smallest chunk (one sample, one output "
            f"direction) needs {format_bytes(peak)} in all. Raise max_memory, use "
            "mode='trace' or mode='sum_logits' (an (n1, n2) result), float32, or fewer "
            "inputs per call."
        )
    r1 = math.ceil(n1 / c)
    d = math.ceil(k / kc)
    if r1 == 1 and d == 1:
        featurized = n1 * k + (0 if sym else n2 * k)
    else:
        other = n2 * (kc if spec.how == "trace" else k)
        featurized = n1 * k + r1 * d * (other if spec.how != "diag" else c * kc)
    return ChunkPlan(c, kc, peak, featurized)


def chunk_slices(n: int, c: int) -> list[slice]:
    """``[0:c], [c:2c], ...`` covering ``range(n)``."""
    return [slice(s, min(s + c, n)) for s in range(0, n, c)]


def assemble(
    featurize: Callable[[torch.Tensor, torch.Tensor], dict],
    x1: torch.Tensor,
    x2: torch.Tensor | None,
    spec: ModeSpec,
    plan: ChunkPlan,
    per_parameter_names: list[str] | None = None,
) -> torch.Tensor | dict[str, torch.Tensor]:
    """Kernel from features, in the internal layout of ``spec`` (see ``ModeSpec``).

    Args:
        featurize: ``(x_chunk, directions) -> {key: factor}``.
        x1: ``(n1, *in_shape)``.
        x2: ``(n2, *in_shape)`` or ``None`` (symmetric: ``x2 = x1``).
        spec: The mode.
        plan: Chunk sizes from :func:`plan_chunks`.
        per_parameter_names: Return ``{name: kernel}`` for these names (keys of the
            features must then be names); ``None`` returns the sum.

    Returns:
        The kernel (or dict of kernels) in the internal layout.
    """
    how = spec.how
    sym = x2 is None
    xb = x1 if sym else x2
    n1, n2 = x1.shape[0], xb.shape[0]
    dtype = _float_dtype(featurize, x1)
    device = x1.device
    c_all = spec.directions(dtype, device)
    k = c_all.shape[0]
    rows1 = chunk_slices(n1, plan.rows)
    rows2 = rows1 if (sym or how == "diag") else chunk_slices(n2, plan.rows)
    dirs = chunk_slices(k, plan.dirs)
    shape = spec.result_shape(n1, n2)
    single = len(rows1) == 1 and len(rows2) == 1 and len(dirs) == 1
    names = per_parameter_names
    results: dict = {}

    def target(key) -> torch.Tensor:
        if key not in results:
            results[key] = torch.zeros(shape, dtype=dtype, device=device)
        return results[key]

    def add(key, r, a, s, b, block, mirror):
        key = key if names is not None else None
        if single:
            results[key] = block if key not in results else results[key].add_(block)
            return
        out = target(key)
        if how == "full":
            out[r, a, s, b] += block
            if mirror:
                out[s, b, r, a] += block.permute(2, 3, 0, 1)
        elif how == "trace":
            out[r, s] += block
            if mirror:
                out[s, r] += block.T
        else:
            out[r, a, b] += block

    for ri, r in enumerate(rows1):
        for ai, a in enumerate(dirs):
            f1 = featurize(x1[r], c_all[a])
            for si, s in enumerate(rows2):
                if (how == "diag" and si != ri) or (sym and si < ri):
                    continue
                for bi, b in enumerate(dirs):
                    if how == "trace" and bi != ai:
                        continue
                    same = si == ri and bi == ai and (sym or how == "diag" and x2 is None)
                    f2 = f1 if same else featurize(xb[s], c_all[b])
                    for key, fa in f1.items():
                        block = contract(fa, f2[key], how, sym=same and single and how != "diag")
                        add(key, r, a, s, b, block, mirror=sym and si > ri)
                    del f2
            del f1
    if sym and how != "diag":
        side = n1 * (k if how == "full" else 1)
        for t in results.values():
            if single:
                mirror_lower(t.view(side, side), unit=k if how == "full" else 1)
            else:
                flat = t.view(side, side)
                flat.copy_((flat + flat.T) / 2)
    if names is None:
        return results[None] if None in results else torch.zeros(shape, dtype=dtype, device=device)
    return {
        n: results[n] if n in results else torch.zeros(shape, dtype=dtype, device=device)
        for n in names
    }


def _float_dtype(featurize, x: torch.Tensor) -> torch.dtype:
    dt = getattr(featurize, "dtype", None)
    if dt is not None:
        return dt
    return x.dtype if x.is_floating_point() else torch.get_default_dtype()
