"""``ntkit kernel SPEC INPUTS --out k.zarr``: a kernel matrix into a resumable store.

SPEC is a JSON or YAML file describing a layer network, a Python file defining ``net`` (as
for ``ntkit report --spec``), or ``module:attr`` naming an ntkit layer description or a
kernel function ``fn(x1, x2)``. The file holds a list of layers
(a serial network); each is a class name of :mod:`ntkit.layers` alone (``"ReLU"``) or a
one-entry mapping to its arguments, a list (positional) or a mapping (keywords)::

    [{"Dense": [512, 1.5, 0.05]}, "ReLU", {"Dense": {"out_features": 1}}]

``{"serial": [...]}`` and ``{"parallel": [[...], [...]]}`` nest. INPUTS (and ``--x2``) are
``.npy``, ``.npz`` (the array ``x``, or the only one) or ``.csv`` (numbers, commas) files
with one sample per row (``.npy``/``.npz`` keep their shape, e.g. images ``(n, C, H, W)``).
"""

from __future__ import annotations

import importlib
import json
import time
from pathlib import Path
from typing import Annotated

import typer


def load_spec(spec: str):
    """A layer description or kernel function from a JSON/YAML file or ``module:attr``.

    Raises:
        ValueError: unreadable file, unknown layer, bad arguments, missing attribute.
    """
    path = Path(spec)
    if path.suffix.lower() == ".py":  # as `ntkit report --spec`: a file defining `net`
        if not path.is_file():
            raise ValueError(f"spec file {spec!r} does not exist.")
        from ntkit.report.context import load_spec as load_python_spec

        make, _shape = load_python_spec(path)
        return make(None)
    if path.suffix.lower() in (".json", ".yaml", ".yml"):
        if not path.is_file():
            raise ValueError(f"spec file {spec!r} does not exist.")
        text = path.read_text()
        if path.suffix.lower() == ".json":
            try:
                data = json.loads(text)
            except json.JSONDecodeError as err:
                raise ValueError(f"spec file {spec!r} is not valid JSON: {err}.") from err
        else:
            try:
                import yaml
            except ImportError as err:  # pragma: no cover - PyYAML is usually present
                raise ValueError("YAML specs need PyYAML (pip install pyyaml).") from err
            try:
                data = yaml.safe_load(text)
            except yaml.YAMLError as err:
                raise ValueError(f"spec file {spec!r} is not valid YAML: {err}.") from err
        return build_network(data)
    if ":" in spec:
        module_name, _, attr = spec.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as err:
            raise ValueError(f"cannot import {module_name!r} for SPEC {spec!r}: {err}.") from err
        obj = module
        for part in attr.split("."):
            if not hasattr(obj, part):
                raise ValueError(f"{module_name!r} has no attribute {attr!r} (SPEC {spec!r}).")
            obj = getattr(obj, part)
        if not callable(obj):
            raise ValueError(f"{spec!r} is a {type(obj).__name__}, not a layer or a function.")
        return obj
    raise ValueError(f"SPEC must be a .json/.yaml/.yml file or 'module:attr'; got {spec!r}.")


def build_network(data):
    """A serial network from the list form described in the module docstring."""
    from ntkit import layers as L

    def build(entry):
        if isinstance(entry, str):
            name, args = entry, []
        elif isinstance(entry, dict) and len(entry) == 1:
            ((name, args),) = entry.items()
        else:
            raise ValueError(
                "a layer entry must be a name or a one-entry mapping {name: args}; got "
                f"{entry!r}."
            )
        if name == "serial":
            return L.serial(*[build(e) for e in _as_list(args, name)])
        if name == "parallel":
            return L.parallel(*[L.serial(*[build(e) for e in _as_list(b, name)]) for b in args])
        cls = getattr(L, name, None)
        if not (isinstance(cls, type) and issubclass(cls, L.Layer)):
            raise ValueError(f"unknown layer {name!r}; use a class name of ntkit.layers.")
        try:
            if isinstance(args, dict):
                return cls(**args)
            return cls(*_as_list(args, name))
        except TypeError as err:
            raise ValueError(f"bad arguments for {name}: {args!r} ({err}).") from err

    if isinstance(data, dict) and set(data) == {"layers"}:
        data = data["layers"]
    if not isinstance(data, list) or not data:
        raise ValueError("the spec file must hold a non-empty list of layers.")
    return L.serial(*[build(e) for e in data])


def _as_list(args, name):
    if args is None:
        return []
    if not isinstance(args, list):
        return [args]
    return args


def load_inputs(path: Path, what: str):
    """``(n, ...)`` array from ``.npy``, ``.npz`` (``x`` or the only array) or ``.csv``."""
    import numpy as np

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{what} file {str(path)!r} does not exist.")
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            return np.load(path, allow_pickle=False)
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as data:
                keys = list(data.keys())
                if "x" in keys:
                    return data["x"]
                if len(keys) == 1:
                    return data[keys[0]]
                raise ValueError(
                    f"{what} file {str(path)!r} holds arrays {keys}; name the inputs 'x'."
                )
        if suffix == ".csv":
            return np.atleast_2d(np.loadtxt(path, delimiter=",", dtype=np.float64))
    except (OSError, ValueError) as err:
        if "name the inputs" in str(err):
            raise
        raise ValueError(f"cannot read {what} file {str(path)!r}: {err}.") from err
    raise ValueError(f"{what} must be a .npy, .npz or .csv file; got {str(path)!r}.")


def kernel(
    spec: Annotated[str, typer.Argument(help="JSON/YAML/.py network file, or module:attr.")],
    inputs: Annotated[Path, typer.Argument(help="x1: .npy, .npz or .csv, one sample a row.")],
    out: Annotated[Path, typer.Option(help="The zarr store (resumed when it exists).")],
    x2: Annotated[Path | None, typer.Option(help="x2 (default: x2 = x1, symmetric).")] = None,
    executor: Annotated[
        str | None, typer.Option(help="'local' (Dask LocalCluster) or a scheduler address.")
    ] = None,
    tile: Annotated[int | None, typer.Option(help="Pairs per tile side (default: auto).")] = None,
    get: Annotated[str, typer.Option(help="Layers: 'nngp' or 'both'.")] = "both",
    float32: Annotated[bool, typer.Option(help="Compute in float32.")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to reach a scheduler.")] = 30.0,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Compute a kernel matrix tile by tile into a zarr store; rerun to resume."""
    import torch
    from rich.console import Console
    from rich.table import Table

    from ntkit.tiling import kernel_store
    from ntkit.tiling._functions import is_layer_kernel

    try:
        fn = load_spec(spec)
        x1_ = load_inputs(inputs, "INPUTS")
        x2_ = None if x2 is None else load_inputs(x2, "--x2")
        if get not in ("nngp", "both"):
            raise ValueError(f"--get must be 'nngp' or 'both'; got {get!r}.")
        opts = {}
        if is_layer_kernel(fn):
            opts["get"] = "nngp" if get == "nngp" else ("nngp", "ntk")
            opts["dtype"] = torch.float32 if float32 else torch.float64
        elif float32:
            opts["dtype"] = torch.float32
        start = time.perf_counter()
        handle = kernel_store(
            fn,
            x1_,
            x2_,
            store=out,
            tile=tile,
            executor=executor,
            progress=progress,
            timeout=timeout,
            **opts,
        )
    except (ValueError, TypeError, ConnectionError) as err:
        raise typer.BadParameter(str(err)) from err
    table = Table(title="ntkit kernel")
    table.add_column("result")
    table.add_column("value", justify="right")
    table.add_row("store", str(out))
    table.add_row("outputs", ", ".join(handle.names))
    table.add_row("shape", str(handle.shape))
    table.add_row("tiles", f"{handle.tiles_done}/{handle.n_tiles}")
    table.add_row("tile", str(tuple(handle.metadata["tile"])))
    table.add_row("seconds", f"{time.perf_counter() - start:.2f}")
    Console().print(table)
