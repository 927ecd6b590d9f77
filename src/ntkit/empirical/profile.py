"""What one forward pass tells about a model: output size, cost, and which rules apply.

:func:`profile` runs the model on one sample (and a pair of samples) while recording

- the forward FLOPs (``torch.utils.flop_counter``) and the bytes of intermediate results, for
  the cost model and the memory plan;
- every use of every parameter together with the innermost module running
  (a ``TorchFunctionMode``), so that a structured rule is trusted for a parameter only when
  the parameter is used nowhere but inside its own module's call;
- the calls of the covered modules with their input/output shapes, and whether a batched
  pass acts sample by sample (then the cotangents come from one batched backward pass).
"""

from __future__ import annotations

import dataclasses
import weakref
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import FlopCounterMode

from ntkit.empirical.factors import Dense, Factor
from ntkit.empirical.functional import FunctionalModel
from ntkit.empirical.structured import _REGISTRY, _fuse, find_rule, locals_by_module

__all__ = ["ModelProfile", "profile"]


@dataclass
class _Call:
    module: nn.Module
    out_shape: tuple[int, ...]
    x: torch.Tensor | None = None  # the recorded one-sample input (analysis only)
    out: torch.Tensor | None = None
    in_shape: tuple[int, ...] = ()


@dataclass
class ModelProfile:
    """What one forward pass on one sample tells about a model.

    Attributes:
        fm: The functional model.
        out_numel: ``O``, outputs per sample.
        flops: Forward FLOPs per sample.
        act_bytes: Bytes of all intermediate results of one sample's forward pass.
        param_numel: ``name -> size`` of the differentiated parameters.
        covered: ``name -> (module, local_name)`` handled by rules.
        generic: Names handled by the generic per-sample Jacobian.
        calls: The covered modules' calls in forward order (output shapes per sample).
        factor_shapes: ``name -> shape info`` of each covered parameter's factor for
            one sample and one direction: ``("dense", D)`` or ``("kron", P, A, B)``.
        fused_shapes: The same for the fused factors (weight and bias of one layer share
            their cotangent), keyed like :class:`StructuredFeaturizer` with ``fuse=True``.
        batched: A batched forward pass stands for per-sample passes (faster features).
    """

    fm: FunctionalModel
    out_numel: int
    flops: float
    act_bytes: float
    param_numel: dict[str, int]
    covered: dict[str, tuple[nn.Module, str]] = field(default_factory=dict)
    generic: list[str] = field(default_factory=list)
    calls: list[_Call] = field(default_factory=list)
    factor_shapes: dict[str, tuple] = field(default_factory=dict)
    fused_shapes: dict = field(default_factory=dict)
    batched: bool = False

    @property
    def total_params(self) -> int:
        return sum(self.param_numel.values())


class _UseTracker(TorchFunctionMode):
    """Records, for every use of a tracked tensor, the innermost module running."""

    def __init__(self, tracked: dict[int, str], stack: list[nn.Module]):
        super().__init__()
        self.tracked = tracked
        self.stack = stack
        self.uses: dict[str, set[int]] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        for a in tree_leaves((args, kwargs)):
            if isinstance(a, torch.Tensor) and id(a) in self.tracked:
                owner = id(self.stack[-1]) if self.stack else 0
                self.uses.setdefault(self.tracked[id(a)], set()).add(owner)
        return func(*args, **kwargs)


class _ByteCounter(TorchDispatchMode):
    """Sums the bytes of every newly allocated operator output (views are not counted)."""

    def __init__(self):
        super().__init__()
        self.bytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        seen = {
            t.untyped_storage().data_ptr()
            for t in tree_leaves((args, kwargs))
            if isinstance(t, torch.Tensor)
        }
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in seen:
                self.bytes += t.numel() * t.element_size()
        return out


def _owners(module: nn.Module) -> dict[str, set[tuple[int, str]]]:
    """Canonical parameter name -> every (module id, local name) registering it."""
    canonical = {id(p): name for name, p in module.named_parameters()}
    owners: dict[str, set[tuple[int, str]]] = {}
    for _, sub in module.named_modules(remove_duplicate=False):
        for local, p in sub._parameters.items():
            if p is not None and id(p) in canonical:
                owners.setdefault(canonical[id(p)], set()).add((id(sub), local))
    return owners


#: Profiles of modules, keyed by a structural signature (see ``_signature``).
_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_CACHE_PER_MODULE = 8


def _signature(fm: FunctionalModel, x: torch.Tensor, use_rules: bool) -> tuple:
    """Everything a profile depends on besides parameter values.

    The module tree (types, modes, registered tensors, hooks), the differentiated names,
    the input's shape, dtype and device, and the rule registry.
    """
    mods = tuple(
        (
            id(m),
            type(m),
            m.training,
            tuple(
                (k, id(v), tuple(v.shape), v.dtype)
                for k, v in m._parameters.items()
                if v is not None
            ),
            tuple((k, id(v)) for k, v in m._buffers.items() if v is not None),
            tuple(m._forward_hooks),
            tuple(m._forward_pre_hooks),
        )
        for m in fm.module.modules()
    )
    attention = getattr(torch.backends, "mha", None)
    fast = attention.get_fastpath_enabled() if attention is not None else None
    return (
        use_rules,
        tuple(fm.params),
        tuple(x.shape),
        x.dtype,
        x.device,
        fast,
        tuple((t, id(r)) for t, r in _REGISTRY.items()),
        mods,
    )


def profile(fm: FunctionalModel, x: torch.Tensor, use_rules: bool = True) -> ModelProfile:
    """Analyse one sample's forward pass: output size, cost, and which rules apply.

    With two samples, also check whether a plain batched forward pass can stand for
    per-sample passes (``batched``): the output of the pair equals the outputs of each
    sample alone, and every covered module sees the batch on its leading axis. Profiles of
    modules are cached under a structural signature (module tree, modes, registered
    tensors, hooks, input shape), so repeated calls skip the analysis.

    Args:
        fm: The functional model.
        x: One or two inputs ``(1 or 2, *in_shape)``; the first is analysed.
        use_rules: Whether to look for structured rules (else everything is generic).

    Returns:
        A :class:`ModelProfile`.
    """
    if fm.module is None:
        return _profile(fm, x, use_rules)
    key = _signature(fm, x, use_rules)
    store = _CACHE.setdefault(fm.module, {})
    if key in store:
        return dataclasses.replace(store[key], fm=fm)
    prof = _profile(fm, x, use_rules)
    if len(store) >= _CACHE_PER_MODULE:
        store.pop(next(iter(store)))
    store[key] = dataclasses.replace(prof, fm=None)
    return prof


def _profile(fm: FunctionalModel, x: torch.Tensor, use_rules: bool) -> ModelProfile:
    pair = x if x.shape[0] >= 2 else None
    x = x[:1]
    param_numel = {n: p.numel() for n, p in fm.params.items()}
    module = fm.module
    candidates: dict[str, tuple[nn.Module, str]] = {}
    modules: dict[int, nn.Module] = {}
    if module is not None and use_rules:
        modules = {id(m): m for m in module.modules()}
        for name, own in _owners(module).items():
            if name not in fm.params or len(own) != 1:
                continue
            ((mid, local),) = own
            found = find_rule(modules[mid])
            if found is not None and local in found[1]:
                candidates[name] = (modules[mid], local)
    rule_modules = {id(m): m for m, _ in candidates.values()}
    stack: list[nn.Module] = []
    calls: list[_Call] = []
    bad_modules: set[int] = set()
    handles = []

    def pre(mod, args):
        stack.append(mod)

    def post(mod, args, kwargs, out):
        stack.pop()
        if id(mod) in rule_modules:
            x_in = args[0] if args else next(iter(kwargs.values()), None)
            if not isinstance(out, torch.Tensor) or not isinstance(x_in, torch.Tensor):
                bad_modules.add(id(mod))
            else:
                calls.append(
                    _Call(mod, tuple(out.shape), x_in.detach(), out.detach(), tuple(x_in.shape))
                )

    if module is not None:
        for m in modules.values():
            handles.append(m.register_forward_pre_hook(pre))
            handles.append(m.register_forward_hook(post, with_kwargs=True, always_call=True))
    tracked = {id(t): n for n, t in fm.params.items()}
    tracker = _UseTracker(tracked, stack)
    counter = _ByteCounter()
    flops = FlopCounterMode(display=False)
    try:
        with torch.no_grad(), flops, counter, tracker:
            out = fm.fn(fm.params, x)
    finally:
        for h in handles:
            h.remove()
    if not isinstance(out, torch.Tensor):
        raise TypeError(
            f"the model must return one tensor (n, *out_shape); got {type(out).__name__}."
        )
    if out.shape[:1] != x.shape[:1]:
        raise ValueError(
            f"the model's output must keep the batch axis first: input {tuple(x.shape)} "
            f"gave output {tuple(out.shape)}."
        )
    covered = {}
    for name, (mod, local) in candidates.items():
        uses = tracker.uses.get(name, set())
        if id(mod) not in bad_modules and uses <= {id(mod)}:
            covered[name] = (mod, local)
    covered_modules = {id(m) for m, _ in covered.values()}
    calls = [c for c in calls if id(c.module) in covered_modules]
    prof = ModelProfile(
        fm=fm,
        out_numel=out[0].numel(),
        flops=float(flops.get_total_flops()),
        act_bytes=float(counter.bytes),
        param_numel=param_numel,
        covered=covered,
        generic=[n for n in fm.params if n not in covered],
        calls=calls,
    )
    prof.factor_shapes, prof.fused_shapes = _factor_shapes(prof)
    prof.batched = pair is None or _batches_like_samples(prof, pair, out)
    for c in calls:
        c.x = c.out = None
    return prof


def _batches_like_samples(prof: ModelProfile, pair: torch.Tensor, out0: torch.Tensor) -> bool:
    """Whether a batched forward pass of ``pair`` acts sample by sample (see ``profile``)."""
    fm = prof.fm
    seen: list[tuple[nn.Module, tuple, tuple]] = []

    def post(mod, args, kwargs, out):
        x_in = args[0] if args else next(iter(kwargs.values()), None)
        if isinstance(out, torch.Tensor) and isinstance(x_in, torch.Tensor):
            seen.append((mod, tuple(x_in.shape), tuple(out.shape)))

    mods = {id(c.module): c.module for c in prof.calls}
    handles = [m.register_forward_hook(post, with_kwargs=True) for m in mods.values()]
    try:
        with torch.no_grad():
            both = fm.fn(fm.params, pair[:2])
    finally:
        for h in handles:
            h.remove()
    if len(seen) != len(prof.calls):
        return False
    for (mod, sin, sout), c in zip(seen, prof.calls):
        if mod is not c.module:
            return False
        for two, one in ((sin, c.in_shape), (sout, c.out_shape)):
            if len(two) != len(one) or one[:1] != (1,) or two != (2, *one[1:]):
                return False
    with torch.no_grad():
        second = fm.fn(fm.params, pair[1:2])
    alone = torch.cat([out0, second]).reshape(both.shape)
    tol = 1e-4 if both.dtype in (torch.float16, torch.bfloat16, torch.float32) else 1e-9
    scale = float(alone.abs().max()) + 1e-30
    return bool((both - alone).abs().max() <= tol * scale)


def _shape_of(f: Factor) -> tuple:
    if isinstance(f, Dense):
        return ("dense", f.j.shape[-1])
    return ("kron", f.g.shape[2], f.g.shape[3], f.width_in)


def _merge_shapes(prev: tuple | None, s: tuple) -> tuple:
    if prev is None:
        return s
    if prev[0] == "kron" and s[0] == "kron" and prev[2:] == s[2:]:
        return ("kron", prev[1] + s[1], s[2], s[3])
    d = prev[1] if prev[0] == "dense" else prev[2] * prev[3]
    return ("dense", d)


def _factor_shapes(prof: ModelProfile) -> tuple[dict[str, tuple], dict]:
    """Run every rule on the recorded one-sample calls with one zero direction.

    Returns:
        ``(per-parameter shapes, fused shapes)``: ``("dense", D)`` or ``("kron", P, A, B)``.
    """
    shapes: dict[str, tuple] = {}
    fused: dict = {}
    by_module = locals_by_module(prof)
    for call in prof.calls:
        rule, _ = find_rule(call.module)
        locals_ = by_module[id(call.module)]
        g = torch.zeros((1, 1, *call.out_shape), dtype=call.out.dtype, device=call.out.device)
        got = rule(call.module, call.x.unsqueeze(0), g, tuple(locals_))
        missing = [loc for loc in locals_ if loc not in got]
        if missing:
            raise ValueError(
                f"the structured rule for {type(call.module).__name__} returned no factor "
                f"for {missing}; it must return every requested name."
            )
        named = {name: got[local] for local, name in locals_.items()}
        for name, f in named.items():
            shapes[name] = _merge_shapes(shapes.get(name), _shape_of(f))
        for key, f in _fuse(named).items():
            fused[key] = _merge_shapes(fused.get(key), _shape_of(f))
    return shapes, fused
