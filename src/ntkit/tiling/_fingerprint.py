"""Stable fingerprints of kernel functions and inputs, for a store's metadata.

A store remembers what made it: a hash of the function (or layer description) and a hash
of the inputs. Both must be the same in every process and every run, so they are built
from content, never from ``id()`` or memory addresses:

- layer descriptions, plain objects, dataclasses: class name and attributes (private
  ``*_cache`` attributes skipped);
- functions and lambdas: module, qualified name, bytecode, constants, defaults, closure
  values and the globals the code refers to (recursively);
- bound methods: the object and the method name;
- ``torch.nn.Module``: its class, ``repr`` and every parameter and buffer's bytes;
- tensors and arrays: dtype, shape and bytes.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import hashlib
import inspect
import types

import numpy as np
import torch

from ntkit.errors import NotPicklableError

_MAX_DEPTH = 40


def fingerprint(obj) -> str:
    """A hex digest that stays the same for equal content across processes and runs.

    Raises:
        NotPicklableError: ``obj`` holds something without a stable content (an open
            file, a lock, an object whose ``repr`` is its memory address).
    """
    h = hashlib.blake2b(digest_size=16)
    _feed(h, obj, set(), 0)
    return h.hexdigest()


def tensor_fingerprint(*tensors: torch.Tensor | None) -> str:
    """Hash of dtypes, shapes and values of tensors (``None`` entries included as such)."""
    h = hashlib.blake2b(digest_size=16)
    for t in tensors:
        if t is None:
            h.update(b"none;")
            continue
        _feed_array(h, t)
    return h.hexdigest()


def _feed_array(h, t) -> None:
    if isinstance(t, torch.Tensor):
        a = t.detach().cpu().contiguous()
        h.update(f"tensor:{a.dtype}:{tuple(a.shape)};".encode())
        if a.dtype == torch.bfloat16:
            a = a.view(torch.int16)
        h.update(np.ascontiguousarray(a.numpy()).data)
    else:
        a = np.ascontiguousarray(t)
        h.update(f"array:{a.dtype}:{a.shape};".encode())
        h.update(a.data)


def _feed(h, obj, seen: set, depth: int) -> None:  # noqa: C901 - one dispatch table
    if depth > _MAX_DEPTH:
        h.update(b"deep;")
        return
    tag = lambda s: h.update(s.encode() + b";")  # noqa: E731
    if obj is None or isinstance(obj, (bool, int, float, complex, str, bytes)):
        tag(f"{type(obj).__name__}:{obj!r}")
        return
    if isinstance(obj, (torch.dtype, torch.device, torch.Size)):
        tag(f"{type(obj).__name__}:{obj}")
        return
    if isinstance(obj, enum.Enum):
        tag(f"enum:{type(obj).__qualname__}.{obj.name}")
        return
    if isinstance(obj, (torch.Tensor, np.ndarray)):
        _feed_array(h, obj)
        return
    if isinstance(obj, types.ModuleType):
        tag(f"module:{obj.__name__}")
        return
    if isinstance(obj, type):
        tag(f"class:{obj.__module__}.{obj.__qualname__}")
        return
    key = id(obj)
    if key in seen:
        tag("cycle")
        return
    seen = seen | {key}
    if isinstance(obj, (list, tuple)):
        tag(f"{type(obj).__name__}[{len(obj)}]")
        for item in obj:
            _feed(h, item, seen, depth + 1)
        return
    if isinstance(obj, (set, frozenset)):
        tag(f"set[{len(obj)}]")
        for item in sorted(obj, key=repr):
            _feed(h, item, seen, depth + 1)
        return
    if isinstance(obj, dict):
        tag(f"dict[{len(obj)}]")
        for k in sorted(obj, key=repr):
            _feed(h, k, seen, depth + 1)
            _feed(h, obj[k], seen, depth + 1)
        return
    if isinstance(obj, torch.nn.Module):
        tag(f"nn:{type(obj).__module__}.{type(obj).__qualname__}:{obj!r}")
        for name, t in sorted(obj.state_dict(keep_vars=False).items()):
            tag(name)
            _feed_array(h, t)
        return
    if isinstance(obj, functools.partial):
        tag("partial")
        _feed(h, (obj.func, obj.args, obj.keywords), seen, depth + 1)
        return
    if isinstance(obj, types.MethodType):
        tag(f"method:{obj.__func__.__qualname__}")
        _feed(h, obj.__self__, seen, depth + 1)
        _feed(h, obj.__func__, seen, depth + 1)
        return
    if isinstance(obj, types.FunctionType):
        _feed_function(h, obj, seen, depth)
        return
    builtin = isinstance(obj, (types.BuiltinFunctionType, types.BuiltinMethodType))
    if builtin or (callable(obj) and not hasattr(obj, "__dict__")):
        module = getattr(obj, "__module__", None) or ""
        name = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None)
        if name is None:
            raise NotPicklableError(f"cannot fingerprint {obj!r} for the store's metadata.")
        tag(f"builtin:{module}.{name}")
        return
    if dataclasses.is_dataclass(obj) and not hasattr(obj, "__dict__"):
        tag(f"dataclass:{type(obj).__module__}.{type(obj).__qualname__}")
        for f in dataclasses.fields(obj):
            tag(f.name)
            _feed(h, getattr(obj, f.name), seen, depth + 1)
        return
    state = getattr(obj, "__dict__", None)
    if state is not None:
        tag(f"object:{type(obj).__module__}.{type(obj).__qualname__}")
        items = {k: v for k, v in state.items() if not k.endswith("_cache")}
        _feed(h, items, seen, depth + 1)
        return
    text = repr(obj)
    if " at 0x" in text:
        raise NotPicklableError(
            f"cannot fingerprint {text} (a {type(obj).__name__}) for the store's metadata: "
            "it has no stable content. Keep such objects out of the kernel function."
        )
    tag(f"repr:{type(obj).__qualname__}:{text}")


#: Libraries whose functions are fingerprinted by name (their versions are recorded).
_LIBRARIES = ("ntkit", "torch", "numpy", "scipy", "functorch")


def _feed_function(h, fn: types.FunctionType, seen: set, depth: int) -> None:
    code = fn.__code__
    h.update(f"function:{fn.__module__}.{fn.__qualname__};".encode())
    if (fn.__module__ or "").split(".")[0] in _LIBRARIES:
        return
    _feed_code(h, code)
    _feed(h, fn.__defaults__, seen, depth + 1)
    _feed(h, fn.__kwdefaults__, seen, depth + 1)
    if fn.__closure__:
        for name, cell in zip(code.co_freevars, fn.__closure__):
            h.update(f"free:{name};".encode())
            try:
                value = cell.cell_contents
            except ValueError:  # an empty cell
                value = None
            _feed(h, value, seen, depth + 1)
    names = _global_names(code)
    glb = fn.__globals__
    for name in sorted(names):
        if name in glb:
            h.update(f"global:{name};".encode())
            _feed(h, glb[name], seen, depth + 1)


def _global_names(code: types.CodeType) -> set[str]:
    names = set(code.co_names)
    for const in code.co_consts:
        if inspect.iscode(const):
            names |= _global_names(const)
    return names


def _feed_code(h, code: types.CodeType) -> None:
    h.update(code.co_code)
    for const in code.co_consts:
        if inspect.iscode(const):
            _feed_code(h, const)
        else:
            h.update(repr(const).encode() + b";")
    h.update(repr(code.co_names).encode())
