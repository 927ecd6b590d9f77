"""Structured empirical NTKs: per-module rules over layer inputs and output cotangents.

For a parameter that enters the network only through one module's ``forward`` (a dense
layer's weight, a convolution's filters, an embedding table, a normalization's affine
parameters), its Jacobian is a simple function of that module's input ``x`` and of the
cotangent ``g`` of the module's output: for ``y = x W^T``, ``dy/dW`` gives
``J_W = g (x) x`` and the kernel share is ``(x . x') (g . g')``, so the Jacobian is never
formed (Novak, Sohl-Dickstein & Schoenholz 2022, "Fast Finite Width Neural Tangent Kernel").

One forward pass records every covered module's input; the cotangents of all covered
modules' outputs for all ``K`` output directions come from one vector-Jacobian product
vectorised over the directions (zero "probe" tensors added to the outputs are the
differentiation variables). Any other parameter -- used outside its module, tied between
modules, in a module without a rule, or behind a parametrization -- gets its exact
per-sample Jacobian from the same pass (the generic fallback).

Rules live in a registry (``{nn.Linear: rule, ...}``); :func:`register_rule` adds one for a
user's module type.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.func import vjp, vmap

from ntkit.empirical.factors import Dense, Factor, Kron, OneHot, materialize
from ntkit.empirical.functional import FunctionalModel
from ntkit.empirical.jacobian import per_sample_jacobians
from ntkit.empirical.rules import BUILTIN_RULES

if TYPE_CHECKING:
    from ntkit.empirical.profile import ModelProfile

__all__ = ["StructuredFeaturizer", "find_rule", "locals_by_module", "register_rule"]

Rule = Callable[[nn.Module, torch.Tensor, torch.Tensor, tuple], dict]

_REGISTRY: dict[type, tuple[Rule, Callable[[nn.Module], tuple[str, ...]] | tuple[str, ...]]] = {}


def register_rule(
    module_type: type,
    rule: Rule,
    *,
    params: Sequence[str] | Callable[[nn.Module], Sequence[str]] = ("weight", "bias"),
) -> None:
    """Register a structured rule for a module type.

    The rule also applies to subclasses that keep the type's ``forward``.

    Args:
        module_type: An ``nn.Module`` subclass (the class, not an instance).
        rule: ``rule(module, x, g, names) -> {name: factor}``. ``x``: the module's first
            input per sample ``(n, *in_shape)``; ``g``: cotangents of its output
            ``(n, K, *out_shape)``; ``names``: the wanted names among ``params``. Factors
            are :class:`ntkit.empirical.factors.Dense` ``(n, K, D)`` or
            :class:`ntkit.empirical.factors.Kron`.
        params: The module's own parameter names the rule handles, or a function of the
            module returning them (return ``()`` where the rule does not apply).

    Raises:
        TypeError: ``module_type`` is not an ``nn.Module`` class or ``rule`` not callable.
    """
    if not isinstance(module_type, type) or not issubclass(module_type, nn.Module):
        raise TypeError(
            "register_rule expects an nn.Module subclass (the class, not an instance); "
            f"got {module_type!r}."
        )
    if not callable(rule):
        raise TypeError(f"rule must be callable; got {type(rule).__name__}.")
    _REGISTRY[module_type] = (rule, params if callable(params) else tuple(params))


for _t, (_r, _p) in BUILTIN_RULES.items():
    register_rule(_t, _r, params=_p)


def find_rule(module: nn.Module) -> tuple[Rule, tuple[str, ...]] | None:
    """The rule for ``module`` and the parameter names it handles, or ``None``.

    A rule registered for a base class applies to subclasses that do not override
    ``forward``; parametrized modules (``torch.nn.utils.parametrize``) have none.
    """
    if getattr(module, "parametrizations", None) is not None:
        return None
    for cls in type(module).__mro__:
        if cls in _REGISTRY:
            if type(module).forward is not cls.forward:
                return None
            rule, params = _REGISTRY[cls]
            names = tuple(params(module)) if callable(params) else params
            return rule, tuple(n for n in names if module._parameters.get(n) is not None)
    return None


def locals_by_module(prof: ModelProfile) -> dict[int, dict[str, str]]:
    """``id(module) -> {local name: parameter name}`` of the covered parameters."""
    out: dict[int, dict[str, str]] = {}
    for name, (mod, local) in prof.covered.items():
        out.setdefault(id(mod), {})[local] = name
    return out


class _ProbeState:
    def __init__(self):
        self.active = False
        self.probes: list[torch.Tensor] = []
        self.inputs: list[torch.Tensor] = []
        self.k = 0


class StructuredFeaturizer:
    """Per-parameter factors of a chunk of inputs for a block of output directions.

    Args:
        prof: The model's :class:`ModelProfile`.
        fuse: Merge factors that share a cotangent (a layer's weight and bias) into one,
            which halves the cotangent Gram work; keys are then tuples of names.
    """

    def __init__(self, prof: ModelProfile, fuse: bool = True):
        self.prof = prof
        self.fuse = fuse
        self.by_module = locals_by_module(prof)

    def __call__(self, x: torch.Tensor, directions: torch.Tensor) -> dict:
        """Factors of ``x: (c, *in_shape)`` for ``directions: (K, O)``.

        Returns:
            ``key -> factor`` with ``key`` a parameter name (or a tuple of names when fused).
        """
        prof = self.prof
        if not prof.calls:  # no rule applies: only the generic per-sample Jacobians
            g_probes, inputs = [], []
            g_generic = per_sample_jacobians(prof.fm, x, directions)
        elif prof.batched:
            g_probes, inputs = self._cotangents_batched(x, directions)
            g_generic = self._generic_jacobians(x, directions)
        else:
            g_probes, g_generic, inputs = self._cotangents_per_sample(x, directions)
        per_call: list[dict] = []
        for call, xk, gk in zip(prof.calls, inputs, g_probes):
            rule, _ = find_rule(call.module)
            locals_ = self.by_module[id(call.module)]
            got = rule(call.module, xk, gk, tuple(locals_))
            per_call.append({locals_[loc]: f for loc, f in got.items() if loc in locals_})
        if self.fuse:
            per_call = [_fuse(d) for d in per_call]
        feats: dict = {}
        for d in per_call:
            for key, f in d.items():
                feats.setdefault(key, []).append(f)
        out = {key: _combine(fs) for key, fs in feats.items()}
        for name, j in g_generic.items():
            out[name] = Dense(j.reshape(j.shape[0], j.shape[1], -1))
        return out

    def _hooked(self, state: _ProbeState):
        calls = self.prof.calls

        def hook(mod, args, kwargs, out):
            if not state.active:
                return None
            k = state.k
            if k >= len(calls) or calls[k].module is not mod:
                raise RuntimeError(_FLOW_CHANGED)
            state.k += 1
            state.inputs.append(args[0] if args else next(iter(kwargs.values())))
            return out + state.probes[k]

        mods = {id(c.module): c.module for c in calls}
        return [m.register_forward_hook(hook, with_kwargs=True) for m in mods.values()]

    def _run(self, state: _ProbeState, probes, params: dict, x: torch.Tensor):
        state.active, state.probes, state.inputs, state.k = True, probes, [], 0
        try:
            out = self.prof.fm.fn(params, x)
        finally:
            state.active = False
        if state.k != len(self.prof.calls):
            raise RuntimeError(_FLOW_CHANGED)
        return out, list(state.inputs)

    def _cotangents_batched(self, x, directions):
        """Cotangents of all probes for all directions from one batched forward pass.

        One batched backward pass (``torch.autograd.grad(is_grads_batched=True)``; a loop
        over the directions where an operator has no batching rule).
        """
        prof, fm = self.prof, self.prof.fm
        n, k = x.shape[0], directions.shape[0]
        probes = [
            torch.zeros(
                (n, *c.out_shape[1:]),
                dtype=directions.dtype,
                device=directions.device,
                requires_grad=True,
            )
            for c in prof.calls
        ]
        state = _ProbeState()
        handles = self._hooked(state)
        try:
            with torch.enable_grad():
                out, inputs = self._run(state, probes, fm.params, x)
        finally:
            for hd in handles:
                hd.remove()
        out = out.reshape(n, -1)
        inputs = [t.detach() for t in inputs]
        cot = directions[:, None, :].expand(k, n, directions.shape[1])
        if not out.requires_grad:  # the output depends on no covered module: zero cotangents
            grads = [None] * len(probes)
        else:
            grads = self._batched_grads(out, probes, cot)
        g_probes = [
            torch.zeros((k, *p.shape), dtype=p.dtype, device=p.device) if g is None else g
            for g, p in zip(grads, probes, strict=True)
        ]
        # present them as a per-sample pass would: the module saw a batch of one
        return [g.transpose(0, 1).unsqueeze(2) for g in g_probes], [t.unsqueeze(1) for t in inputs]

    @staticmethod
    def _batched_grads(out, probes, cot) -> list:
        """``d <cot_a, out> / d probe`` for every direction ``a`` (``None`` where unused)."""
        try:
            return torch.autograd.grad(
                out, probes, cot, retain_graph=True, allow_unused=True, is_grads_batched=True
            )
        except RuntimeError:
            per_dir = [
                torch.autograd.grad(out, probes, cot_a, retain_graph=True, allow_unused=True)
                for cot_a in cot
            ]
            return [None if gs[0] is None else torch.stack(gs) for gs in zip(*per_dir, strict=True)]

    def _generic_jacobians(self, x, directions) -> dict:
        prof, fm = self.prof, self.prof.fm
        if not prof.generic:
            return {}
        fixed = {nm: fm.params[nm] for nm in prof.covered}
        sub = FunctionalModel(
            fn=lambda p, xx: fm.fn({**fixed, **p}, xx),
            params={nm: fm.params[nm] for nm in prof.generic},
            module=fm.module,
        )
        return per_sample_jacobians(sub, x, directions)

    def _cotangents_per_sample(self, x, directions):
        """Per-sample vmap: any model whose samples are processed independently."""
        prof, fm = self.prof, self.prof.fm
        covered_vals = {nm: fm.params[nm] for nm in prof.covered}
        generic = {nm: fm.params[nm] for nm in prof.generic}
        probes = [
            torch.zeros(c.out_shape, dtype=directions.dtype, device=directions.device)
            for c in prof.calls
        ]
        state = _ProbeState()

        def per_sample(xi):
            def h(pr, gp):
                out, inputs = self._run(state, pr, {**covered_vals, **gp}, xi.unsqueeze(0))
                return out.reshape(-1), inputs

            _, pullback, inputs = vjp(h, probes, generic, has_aux=True)
            g_probes, g_generic = vmap(pullback)(directions)
            return g_probes, g_generic, inputs

        handles = self._hooked(state)
        try:
            return vmap(per_sample)(x)
        finally:
            for hd in handles:
                hd.remove()


_FLOW_CHANGED = (
    "the model's sequence of module calls differs between passes (data-dependent control "
    "flow); use implementation='jacobian'."
)


def _fuse(d: dict) -> dict:
    """Merge Kron factors of one call that share their cotangent tensor."""
    groups: dict[int, list[str]] = {}
    for key, f in d.items():
        if isinstance(f, Kron) and isinstance(f.x, torch.Tensor):
            groups.setdefault(id(f.g), []).append(key)
    out = dict(d)
    for keys in groups.values():
        if len(keys) < 2:
            continue
        fs = [out.pop(k) for k in keys]
        out[tuple(keys)] = Kron(fs[0].g, torch.cat([f.x for f in fs], -1))
    return out


def _combine(fs: list[Factor]) -> Factor:
    """One factor for a parameter used in several calls (its Jacobians add up)."""
    if len(fs) == 1:
        return fs[0]
    if all(isinstance(f, Kron) for f in fs):
        if all(isinstance(f.x, torch.Tensor) for f in fs):
            return Kron(torch.cat([f.g for f in fs], 2), torch.cat([f.x for f in fs], 1))
        if all(isinstance(f.x, OneHot) for f in fs):
            masks = [
                f.x.mask if f.x.mask is not None else torch.ones_like(f.x.idx, dtype=f.g.dtype)
                for f in fs
            ]
            return Kron(
                torch.cat([f.g for f in fs], 2),
                OneHot(torch.cat([f.x.idx for f in fs], 1), fs[0].x.size, torch.cat(masks, 1)),
            )
    return Dense(sum(materialize(f).j for f in fs))


def feature_bytes(prof: ModelProfile, k: int, itemsize: int) -> tuple[float, float]:
    """Per-sample memory of structured features: ``(fixed, per_direction)`` bytes."""
    fixed = per_dir = 0.0
    for c in prof.calls:
        per_dir += math.prod(c.out_shape)
    for name in prof.generic:
        per_dir += prof.param_numel[name]
    for s in prof.factor_shapes.values():
        if s[0] == "kron":
            fixed += s[1] * s[3]
            per_dir += s[1] * s[2]
        else:
            per_dir += s[1]
    per_dir_bytes = per_dir * itemsize + prof.act_bytes
    return fixed * itemsize + prof.act_bytes, per_dir_bytes
