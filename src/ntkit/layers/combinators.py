"""Composition of layers: serial, parallel, fan-out / fan-in (sum, concat, product), repeat.

Fan-in rules drop the cross-covariances between branches, which is exact when every branch
but one is zero-mean and independent of its siblings (it went through a weight layer of its
own after the ``FanOut``). ntkit tracks this (``Kernel.independent``) and refuses fan-ins
where two branches share randomness, e.g. two identity branches, instead of returning a
wrong kernel.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ntkit.errors import LayerSpecError
from ntkit.kernel import Kernel
from ntkit.layers.base import Layer, Shape
from ntkit.layers.modules import (
    FanInConcatModule,
    FanInProdModule,
    FanInSumModule,
    FanOutModule,
    ParallelModule,
)

__all__ = [
    "FanInConcat",
    "FanInProd",
    "FanInSum",
    "FanOut",
    "Parallel",
    "Serial",
    "parallel",
    "repeat",
    "serial",
]


def _check_layer(layer, where: str) -> Layer:
    if isinstance(layer, type) and issubclass(layer, Layer):
        raise TypeError(
            f"{where} expects layer instances, but received the class {layer.__name__}; "
            f"instantiate it, e.g. {layer.__name__}()."
        )
    if not isinstance(layer, Layer):
        raise TypeError(f"{where} expects ntkit layers; got {type(layer).__name__}: {layer!r}.")
    return layer


class Serial(Layer):
    """Layers applied one after another."""

    memory_factor = 1.0

    def __init__(self, *layers: Layer):
        flat: list[Layer] = []
        for layer in layers:
            layer = _check_layer(layer, "serial")
            flat.extend(layer.layers if isinstance(layer, Serial) else [layer])
        self.layers = tuple(flat)

    def _context(self, i: int, err: Exception) -> LayerSpecError:
        return LayerSpecError(f"layer {i} ({self.layers[i]!r}) of the network: {err}")

    def out_shape(self, in_shape: Shape) -> Shape:
        shape = in_shape
        for i, layer in enumerate(self.layers):
            try:
                shape = layer.out_shape(shape)
            except LayerSpecError as err:
                raise self._context(i, err) from err
        return shape

    def kernel_rule(self, k):
        for i, layer in enumerate(self.layers):
            try:
                k = layer.apply_kernel(k)
            except LayerSpecError as err:
                if str(err).startswith("layer "):
                    raise
                raise self._context(i, err) from err
        return k

    def input_layout(self, diagonal_spatial):
        for layer in reversed(self.layers):
            diagonal_spatial = layer.input_layout(diagonal_spatial)
        return diagonal_spatial

    def build_module(self, in_shape: Shape, generator: torch.Generator) -> nn.Module:
        modules = []
        shape = in_shape
        for layer in self.layers:
            modules.append(layer.build_module(shape, generator))
            shape = layer.out_shape(shape)
        return nn.Sequential(*modules)

    def __repr__(self) -> str:
        return "serial(" + ", ".join(repr(layer) for layer in self.layers) + ")"


def serial(*layers: Layer) -> Serial:
    """Compose layers in sequence: ``serial(Dense(512), ReLU(), Dense(10))``."""
    return Serial(*layers)


def repeat(layer: Layer, n: int) -> Serial:
    """``serial(layer, layer, ...)`` ``n`` times; the finite network draws new weights each time."""
    if int(n) != n or n < 0:
        raise ValueError(f"repeat count must be a non-negative integer; got {n}.")
    return Serial(*([_check_layer(layer, "repeat")] * int(n)))


def _as_streams(value, n: int, what: str) -> list:
    if not isinstance(value, list):
        raise LayerSpecError(f"{what} expects {n} streams (after FanOut({n})); got one stream.")
    if len(value) != n:
        raise LayerSpecError(f"{what} expects {n} streams; got {len(value)}.")
    return value


class Parallel(Layer):
    """Applies the i-th layer to the i-th stream (streams come from ``FanOut``)."""

    memory_factor = 1.0

    def __init__(self, *layers: Layer):
        self.layers = tuple(_check_layer(layer, "parallel") for layer in layers)
        if not self.layers:
            raise ValueError("parallel needs at least one layer.")

    def out_shape(self, in_shape: Shape) -> Shape:
        shapes = _as_streams(in_shape, len(self.layers), repr(self))
        return [layer.out_shape(s) for layer, s in zip(self.layers, shapes)]

    def kernel_rule(self, k):
        kernels = _as_streams(k, len(self.layers), repr(self))
        return [layer.apply_kernel(ki) for layer, ki in zip(self.layers, kernels)]

    def input_layout(self, diagonal_spatial):
        if not isinstance(diagonal_spatial, list):
            diagonal_spatial = [diagonal_spatial] * len(self.layers)
        return [layer.input_layout(d) for layer, d in zip(self.layers, diagonal_spatial)]

    def build_module(self, in_shape: Shape, generator: torch.Generator) -> nn.Module:
        return ParallelModule(
            [layer.build_module(s, generator) for layer, s in zip(self.layers, in_shape)]
        )

    def __repr__(self) -> str:
        return "parallel(" + ", ".join(repr(layer) for layer in self.layers) + ")"


def parallel(*layers: Layer) -> Parallel:
    """Apply ``layers[i]`` to stream ``i``.

    Example: ``serial(FanOut(2), parallel(Dense(8), Identity()), FanInSum())``.
    """
    return Parallel(*layers)


class FanOut(Layer):
    """Copies one stream into ``n`` streams."""

    memory_factor = 1.0

    def __init__(self, n: int):
        if int(n) != n or n < 1:
            raise ValueError(f"FanOut needs a positive integer number of streams; got {n}.")
        self.n = int(n)

    def out_shape(self, in_shape: Shape) -> Shape:
        if isinstance(in_shape, list):
            raise LayerSpecError("FanOut expects a single stream; got several (fan in first).")
        return [in_shape] * self.n

    def kernel_rule(self, k: Kernel) -> list:
        return [k.replace(independent=False, decoupled=False)] * self.n

    def input_layout(self, diagonal_spatial):
        if isinstance(diagonal_spatial, list):
            return all(diagonal_spatial)
        return diagonal_spatial

    def build_module(self, in_shape: Shape, generator: torch.Generator) -> nn.Module:
        return FanOutModule(self.n)

    def __repr__(self) -> str:
        return f"FanOut({self.n})"


class _FanIn(Layer):
    """Shared checks of the fan-in layers."""

    memory_factor = 2.0
    needs_independence = True
    #: ``"independent"`` (sums, concatenations: zero-mean too) or ``"decoupled"`` (products)
    independence_flag = "independent"
    correlated_message = (
        "(none of them passes through a weight layer of its own after the FanOut, or one ends "
        "in a nonlinearity that shifts its mean), so their cross-covariance is not zero and "
        "the infinite-width kernel of the combination is not the combination of their "
        "kernels. Give all but one branch its own Dense/Conv layer at the end."
    )

    def _check_shapes(self, in_shape: Shape) -> list:
        if not isinstance(in_shape, list):
            raise LayerSpecError(f"{self.name} expects several streams (after FanOut); got one.")
        return in_shape

    def _check_kernels(self, kernels) -> list[Kernel]:
        if not isinstance(kernels, list):
            raise LayerSpecError(f"{self.name} expects several streams (after FanOut); got one.")
        layouts = {k.diagonal_spatial for k in kernels}
        if len(layouts) > 1:
            raise LayerSpecError(f"{self.name}: branches carry different spatial layouts.")
        if self.needs_independence:
            shared = [i for i, k in enumerate(kernels) if not getattr(k, self.independence_flag)]
            if len(shared) > 1:
                raise LayerSpecError(
                    f"{self.name}: branches {shared} are correlated " + self.correlated_message
                )
        return kernels

    def input_layout(self, diagonal_spatial):
        return diagonal_spatial


def _sum_kernels(kernels, attr):
    values = [getattr(k, attr) for k in kernels]
    if any(v is None for v in values):
        return None
    out = values[0]
    for v in values[1:]:
        out = out + v
    return out


class FanInSum(_FanIn):
    """Sums same-shaped streams (e.g. a residual connection)."""

    def out_shape(self, in_shape: Shape) -> Shape:
        shapes = self._check_shapes(in_shape)
        if any(s != shapes[0] for s in shapes):
            raise LayerSpecError(f"FanInSum needs streams of equal shapes; got {shapes}.")
        return shapes[0]

    def kernel_rule(self, k) -> Kernel:
        kernels = self._check_kernels(k)
        return kernels[0].replace(
            nngp=_sum_kernels(kernels, "nngp"),
            ntk=_sum_kernels(kernels, "ntk"),
            cov1=_sum_kernels(kernels, "cov1"),
            cov2=_sum_kernels(kernels, "cov2"),
            is_gaussian=all(ki.is_gaussian for ki in kernels),
            independent=all(ki.independent for ki in kernels),
            decoupled=all(ki.decoupled for ki in kernels),
        )

    def build_module(self, in_shape: Shape, generator: torch.Generator) -> nn.Module:
        return FanInSumModule()


class FanInProd(_FanIn):
    """Hadamard (elementwise) product of same-shaped streams, as in polynomial networks.

    NNGP: ``prod_i K_i``; NTK: ``sum_i Theta_i prod_(j != i) K_i`` (product rule). The output
    is not Gaussian (unless there is one stream), so an activation cannot follow directly.
    Exact when all but one branch went through a weight layer of its own after the
    ``FanOut``; unlike sums, branches may end in any nonlinearity (a product of independent
    factors needs no zero mean).
    """

    independence_flag = "decoupled"
    correlated_message = (
        "(none of them passes through a weight layer of its own after the FanOut), so the "
        "kernel of their product is not the product of their kernels. Give all but one "
        "branch its own Dense/Conv layer."
    )

    def out_shape(self, in_shape: Shape) -> Shape:
        shapes = self._check_shapes(in_shape)
        if any(s != shapes[0] for s in shapes):
            raise LayerSpecError(f"FanInProd needs streams of equal shapes; got {shapes}.")
        return shapes[0]

    def kernel_rule(self, k) -> Kernel:
        kernels = self._check_kernels(k)

        def product(attr):
            values = [getattr(ki, attr) for ki in kernels]
            if values[0] is None:
                return None
            return math.prod(values[1:], start=values[0])

        ntk = None
        if all(ki.ntk is not None for ki in kernels):
            nngp_acc = None
            for ki in kernels:
                if nngp_acc is None:
                    ntk, nngp_acc = ki.ntk, ki.nngp
                else:
                    ntk = ntk * ki.nngp + nngp_acc * ki.ntk
                    nngp_acc = nngp_acc * ki.nngp
        return kernels[0].replace(
            nngp=product("nngp"),
            ntk=ntk,
            cov1=product("cov1"),
            cov2=product("cov2"),
            is_gaussian=len(kernels) == 1 and kernels[0].is_gaussian,
            independent=all(ki.independent for ki in kernels),
            decoupled=all(ki.decoupled for ki in kernels),
        )

    def build_module(self, in_shape: Shape, generator: torch.Generator) -> nn.Module:
        return FanInProdModule()


class FanInConcat(_FanIn):
    """Concatenates streams along the channel/feature axis (dim 1 of ``(n, C, ...)``).

    The kernel is the channel-weighted mean ``sum_i C_i K_i / sum_i C_i``. The result is a
    mixture of differently distributed channels, hence not Gaussian: follow it with a weight
    layer before any activation. Cross-covariances never enter, so branches may be correlated.
    """

    needs_independence = False

    def out_shape(self, in_shape: Shape) -> Shape:
        shapes = self._check_shapes(in_shape)
        rest = {tuple(s[1:]) for s in shapes}
        if len(rest) > 1:
            raise LayerSpecError(
                f"FanInConcat needs streams that differ only in channels (axis 1); got {shapes}."
            )
        return (sum(s[0] for s in shapes), *shapes[0][1:])

    def kernel_rule(self, k) -> Kernel:
        kernels = self._check_kernels(k)
        widths = [ki.shape[0] for ki in kernels]
        total = float(sum(widths))

        def mean(attr):
            values = [getattr(ki, attr) for ki in kernels]
            if any(v is None for v in values):
                return None
            out = values[0] * (widths[0] / total)
            for w, v in zip(widths[1:], values[1:]):
                out = out + v * (w / total)
            return out

        return kernels[0].replace(
            nngp=mean("nngp"),
            ntk=mean("ntk"),
            cov1=mean("cov1"),
            cov2=mean("cov2"),
            shape=(int(total), *kernels[0].shape[1:]),
            is_gaussian=len(kernels) == 1 and kernels[0].is_gaussian,
            independent=all(ki.independent for ki in kernels),
            decoupled=all(ki.decoupled for ki in kernels),
        )

    def build_module(self, in_shape: Shape, generator: torch.Generator) -> nn.Module:
        return FanInConcatModule()
