"""Tile functions: what one tile computes, for every kind of kernel function.

A tile function is a small picklable object called as
``tile_fn(x1_rows, x2_cols, diagonal=...) -> {name: block}``; it runs in the calling
process, in a thread or on a Dask worker. Two kinds:

- :class:`LayerTiles` for an ntkit layer description (``net`` or ``net.kernel``): each tile
  is a planned in-memory kernel computation of its own (the driver's planner, pure tile
  function and sink), so a tile of any size fits its memory budget;
- :class:`CallTiles` for any ``fn(x1, x2)`` returning a tensor ``(n1, n2, ...)`` (an
  empirical NTK in any mode, a user's kernel) or an :class:`ntkit.Kernel`.

:func:`describe` probes the function once and returns an :class:`OutputSpec`: the names
and per-pair shapes of the outputs and how to mirror a block across the diagonal.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ntkit.kernel import Kernel
from ntkit.layers._spatial import n_spatial as kernel_n_spatial
from ntkit.layers._spatial import transpose_pair
from ntkit.layers.base import Layer

#: Names of the per-sample variance outputs of kernel-valued functions.
COV_NAMES = ("cov1", "cov2")


@dataclass(frozen=True)
class OutputSpec:
    """What a kernel function returns per pair, and how to mirror it.

    Attributes:
        kind: ``"kernel"`` (an :class:`ntkit.Kernel`: ``nngp``/``ntk`` and the variances)
            or ``"tensor"`` (one array, named ``"kernel"``).
        names: Pair outputs, e.g. ``("nngp", "ntk")`` or ``("kernel",)``.
        trailing: Per-pair shape after the two batch axes, e.g. ``()`` or ``(O, O)``.
        cov_trailing: Per-sample shape of ``cov1``/``cov2`` (kernel kind), else ``None``.
        dtype: Dtype of the outputs.
        n_spatial: Axis pairs swapped when mirroring (interleaved ``(a, a')`` pairs).
        diagonal: Trailing axes are not pairs (same-location layout): mirror the batch axes
            only.
        flags: The result :class:`ntkit.Kernel`'s other fields (kernel kind).
    """

    kind: str
    names: tuple[str, ...]
    trailing: tuple[int, ...]
    cov_trailing: tuple[int, ...] | None
    dtype: torch.dtype
    n_spatial: int
    diagonal: bool
    flags: dict

    def mirror(self, block: torch.Tensor) -> torch.Tensor:
        """The block of ``(x2, x1)`` from that of ``(x1, x2)``."""
        return transpose_pair(block, self.n_spatial, self.diagonal)


def is_layer_kernel(fn) -> bool:
    """Whether ``fn`` is an ntkit layer description or its bound ``kernel`` method."""
    if isinstance(fn, Layer):
        return True
    owner = getattr(fn, "__self__", None)
    return isinstance(owner, Layer) and getattr(fn, "__name__", "") == "kernel"


def _as_names(get, allowed: tuple[str, ...], who: str) -> tuple[str, ...]:
    names = (get,) if isinstance(get, str) else tuple(get)
    unknown = [g for g in names if g not in allowed]
    if unknown or not names:
        raise ValueError(f"get must be one or more of {allowed} for {who}; got {get!r}.")
    if "ntk" in names:  # the NTK needs the NNGP: both come back, as from net.kernel
        return ("nngp", "ntk")
    return tuple(n for n in allowed if n in names)  # canonical order


class LayerTiles:
    """Tiles of an ntkit layer description's NNGP/NTK, each planned to its memory budget.

    Args:
        net: The layer description.
        names: ``("nngp",)`` or ``("nngp", "ntk")``.
        dtype: Arithmetic dtype.
        budget: Memory budget of one tile in bytes (``None``: the default budget).
    """

    def __init__(self, net: Layer, names: tuple[str, ...], dtype: torch.dtype, budget):
        self.net = net
        self.names = names
        self.dtype = dtype
        self.budget = budget

    def __call__(
        self, rows: torch.Tensor, cols: torch.Tensor, *, diagonal: bool, into: dict | None = None
    ) -> dict | None:
        """The tile's outputs; or, with ``into`` (views of the result), write them there."""
        from ntkit.layers._driver import run_problem
        from ntkit.layers._planner import prepare

        get = self.names if "ntk" in self.names else "nngp"
        problem = prepare(
            self.net,
            rows,
            None if diagonal else cols,
            get=get,
            dtype=self.dtype,
            max_memory=self.budget,
            same_batch=None if diagonal else False,
            checked=rows.dtype == self.dtype,  # slices of inputs validated by the tiler
        )
        k = run_problem(self.net, problem, into=into, scale_checked=True)
        return None if into is not None else _kernel_outputs(k, self.names)

    def __repr__(self) -> str:
        return f"LayerTiles({self.net!r}, get={self.names})"


class CallTiles:
    """Tiles of any ``fn(x1, x2)``: a tensor ``(n1, n2, ...)`` or an :class:`ntkit.Kernel`.

    Args:
        fn: The kernel function.
        names: For kernel-valued functions, ``nngp``/``ntk``; ``("kernel",)`` otherwise.
    """

    def __init__(self, fn, names: tuple[str, ...]):
        self.fn = fn
        self.names = names

    def __call__(self, rows: torch.Tensor, cols: torch.Tensor, *, diagonal: bool) -> dict:
        out = self.fn(rows, cols)
        if isinstance(out, Kernel):
            return _kernel_outputs(out, self.names)
        return {"kernel": _as_block(out, rows, cols)}

    def __repr__(self) -> str:
        return f"CallTiles({getattr(self.fn, '__qualname__', repr(self.fn))})"


class OnDevice:
    """Run a tile function on ``device`` (on a Dask worker: that worker's device).

    With one worker per GPU (``CUDA_VISIBLE_DEVICES=i dask worker ...``), ``"cuda"`` is each
    worker's own GPU. Outputs come back to the caller's device when they are placed.
    """

    def __init__(self, inner, device):
        self.inner = inner
        self.device = str(device)

    def __call__(self, rows, cols, **kwargs):
        device = torch.device(self.device)
        return self.inner(rows.to(device), cols.to(device), **kwargs)

    def __repr__(self) -> str:
        return f"OnDevice({self.inner!r}, {self.device!r})"


def _as_block(out, rows, cols) -> torch.Tensor:
    if not isinstance(out, torch.Tensor):
        try:
            out = torch.as_tensor(out)
        except (TypeError, ValueError, RuntimeError) as err:
            raise TypeError(
                "the kernel function must return a tensor (n1, n2, ...) or an ntkit.Kernel; "
                f"got {type(out).__name__}."
            ) from err
    want = (rows.shape[0], cols.shape[0])
    if out.ndim < 2 or tuple(out.shape[:2]) != want:
        raise ValueError(
            f"the kernel function returned shape {tuple(out.shape)} for {want[0]} x "
            f"{want[1]} inputs; expected ({want[0]}, {want[1]}, ...)."
        )
    return out.detach()


def _kernel_outputs(k: Kernel, names: tuple[str, ...]) -> dict:
    out = {}
    for name in names:
        value = getattr(k, name)
        if value is None:
            raise ValueError(f"the kernel function returned no {name} (it is None).")
        out[name] = value.detach()
    out["cov1"] = k.cov1.detach()
    out["cov2"] = k.cov2_or_cov1.detach()
    return out


def make_tile_function(fn, x1, x2, *, get, dtype, budget):
    """The tile function for ``fn`` and the :class:`OutputSpec` of its result.

    Layer descriptions are probed through the planner (no kernel is computed); other
    functions are called once on the first sample of ``x1`` and ``x2``.

    Returns:
        ``(tile_fn, spec)``.
    """
    if is_layer_kernel(fn):
        net = fn if isinstance(fn, Layer) else fn.__self__
        names = _as_names(("nngp", "ntk") if get is None else get, ("nngp", "ntk"), "a layer")
        from ntkit.layers._planner import prepare

        get_arg = names if "ntk" in names else "nngp"
        problem = prepare(net, x1[:1], None if x2 is None else x2[:1], get=get_arg, dtype=dtype)
        probe = problem.probe
        return LayerTiles(net, names, problem.dtype, budget), _kernel_spec(probe, names)
    if not callable(fn):
        raise TypeError(
            "fn must be an ntkit layer, its .kernel method, or a function fn(x1, x2); got "
            f"{type(fn).__name__}."
        )
    out = fn(x1[:1], x1[:1] if x2 is None else x2[:1])
    if isinstance(out, Kernel):
        allowed = ("nngp", "ntk") if out.ntk is not None else ("nngp",)
        default = allowed
        names = _as_names(default if get is None else get, allowed, "this kernel function")
        return CallTiles(fn, names), _kernel_spec(out, names)
    if get is not None and get != "kernel":
        raise ValueError(
            f"get={get!r} needs a function returning an ntkit.Kernel; this one returns a "
            f"{type(out).__name__}."
        )
    block = _as_block(out, x1[:1], x1[:1])
    trailing = tuple(block.shape[2:])
    pairs = len(trailing) // 2
    paired = len(trailing) % 2 == 0 and all(
        trailing[2 * i] == trailing[2 * i + 1] for i in range(pairs)
    )
    spec = OutputSpec(
        kind="tensor",
        names=("kernel",),
        trailing=trailing,
        cov_trailing=None,
        dtype=block.dtype,
        n_spatial=pairs if paired else -1,
        diagonal=False,
        flags={},
    )
    return CallTiles(fn, ("kernel",)), spec


def _kernel_spec(probe: Kernel, names: tuple[str, ...]) -> OutputSpec:
    return OutputSpec(
        kind="kernel",
        names=names,
        trailing=tuple(probe.nngp.shape[2:]),
        cov_trailing=tuple(probe.cov1.shape[1:]),
        dtype=probe.nngp.dtype,
        n_spatial=kernel_n_spatial(probe),
        diagonal=bool(probe.diagonal_spatial),
        flags={
            "shape": list(probe.shape),
            "is_gaussian": bool(probe.is_gaussian),
            "independent": bool(probe.independent),
            "decoupled": bool(probe.decoupled),
            "diagonal_spatial": bool(probe.diagonal_spatial),
        },
    )
