"""Fully connected layers and shape plumbing: ``Dense``, ``Identity``, ``Flatten``."""

from __future__ import annotations

import math

import torch
from torch import nn

from ntkit.errors import LayerSpecError
from ntkit.kernel import Kernel
from ntkit.layers import _init
from ntkit.layers._params import Param, hyperparameter, tracks_grad, value_of
from ntkit.layers._spatial import location_diagonal
from ntkit.layers.base import Layer, Shape, single_stream
from ntkit.layers.modules import DenseNTK

__all__ = ["PARAMETERIZATIONS", "Dense", "Flatten", "Identity", "check_parameterization"]

PARAMETERIZATIONS = ("ntk", "standard")

MUP_HAS_NO_KERNEL = (
    "there is no infinite-width NTK under muP: its readout is scaled by 1/width, so the "
    "tangent kernel in its parameters vanishes like 1/width, and the learning-rate-weighted "
    "kernel does not stay fixed during training (the muP limit learns features; Yang & Hu "
    "2021). Describe the layers with parameterization='ntk' or 'standard' and build the "
    "finite muP network with net.module(in_shape, parameterization='mup', base_width=...) "
    "or ntkit.parametrization.parametrize(model, 'mup', ...)."
)


def check_parameterization(parameterization: str) -> str:
    """Return ``parameterization`` if it is known, else raise ``ValueError``."""
    if parameterization == "mup":
        raise ValueError(MUP_HAS_NO_KERNEL)
    if parameterization not in PARAMETERIZATIONS:
        raise ValueError(
            f"parameterization must be one of {PARAMETERIZATIONS}; got {parameterization!r}."
        )
    return parameterization


def check_std(value, name: str, allow_none: bool) -> Param | None:
    """Validate a standard deviation argument (finite, >= 0; ``None`` if allowed).

    A one-element tensor stays a tensor (with its autograd graph), so kernels can be
    differentiated with respect to it.
    """
    if value is None and not allow_none:
        raise ValueError(f"{name} must be a non-negative number; got None.")
    return hyperparameter(value, name, minimum=0.0, allow_none=allow_none)


def affine_kernel(
    k: Kernel,
    *,
    w2: Param,
    b_std: Param | None,
    parameterization: str,
    fan_in: int,
    out_shape: tuple[int, ...],
    inplace: bool = False,
) -> Kernel:
    """Kernel of ``w x + b`` with fresh zero-mean weights, shared by Dense and Conv.

    The NNGP is ``w2 q + b_std^2`` (``w2 = w_std^2``; Conv folds its tap average into it).
    The NTK is ``nngp_out + w2 ntk_in`` under NTK parameterization, and
    ``fan_in q + w2 ntk_in (+ 1 with a bias)`` under standard parameterization, where the
    weights' gradients are not rescaled by ``1/sqrt(fan_in)``. ``k.nngp`` is the (already
    patch-summed) input covariance ``q``. With ``inplace`` the tensors of ``k`` (fresh ones,
    e.g. Conv's patch sums) are overwritten instead of copied. While autograd records
    (inputs or parameters that require grad), the map is computed out of place.
    """
    if tracks_grad(k.nngp, k.ntk, k.cov1, k.cov2, w2, b_std):
        return _affine_kernel_differentiable(
            k, w2=w2, b_std=b_std, parameterization=parameterization, fan_in=fan_in
        ).replace(
            shape=out_shape,
            is_gaussian=True,
            independent=True,
            decoupled=True,
        )
    if not inplace:
        k = k.replace(
            nngp=k.nngp.clone(),
            ntk=None if k.ntk is None else k.ntk.clone(),
            cov1=k.cov1.clone(),
            cov2=None if k.cov2 is None else k.cov2.clone(),
        )
    b2 = 0.0 if b_std is None else b_std**2

    def affine(t):
        if t is None:
            return None
        t.mul_(w2)
        return t.add_(b2) if b2 else t

    ntk = k.ntk
    if ntk is not None:
        if parameterization == "ntk":
            ntk.mul_(w2)  # + nngp below, once it is final
        else:
            ntk.mul_(w2).add_(k.nngp, alpha=float(fan_in))
            if b_std is not None:
                ntk.add_(1.0)
    nngp = affine(k.nngp)
    if ntk is not None and parameterization == "ntk":
        ntk.add_(nngp)
    return k.replace(
        nngp=nngp,
        ntk=ntk,
        cov1=affine(k.cov1),
        cov2=affine(k.cov2),
        shape=out_shape,
        is_gaussian=True,
        independent=True,
        decoupled=True,
    )


def _affine_kernel_differentiable(k: Kernel, *, w2, b_std, parameterization, fan_in) -> Kernel:
    """:func:`affine_kernel`'s map without in-place operations (for autograd)."""
    b2 = 0.0 if b_std is None else b_std**2

    def affine(t):
        return None if t is None else t * w2 + b2

    nngp = affine(k.nngp)
    ntk = k.ntk
    if ntk is not None:
        if parameterization == "ntk":
            ntk = ntk * w2 + nngp
        else:
            ntk = ntk * w2 + k.nngp * float(fan_in) + (0.0 if b_std is None else 1.0)
    return k.replace(nngp=nngp, ntk=ntk, cov1=affine(k.cov1), cov2=affine(k.cov2))


class Dense(Layer):
    """Fully connected layer acting on ``(n, features)`` inputs.

    NTK parameterization (default): ``y = (w_std / sqrt(d)) W x + b_std b`` with standard
    normal ``W`` and ``b``. Standard parameterization: ``y = W x + b`` with
    ``W ~ N(0, w_std^2 / d)`` and ``b ~ N(0, b_std^2)``. Both give the NNGP
    ``w_std^2 q + b_std^2``; the NTKs differ (see :func:`affine_kernel`).

    Args:
        out_features: Width of the layer (the readout's number of outputs ``O`` for the last).
        w_std: Weight standard deviation ``sigma_w``.
        b_std: Bias standard deviation ``sigma_b``; ``None`` (default) means no bias.
        parameterization: ``"ntk"`` or ``"standard"``.
    """

    memory_factor = 3.0

    def __init__(
        self,
        out_features: int,
        w_std: float = 1.0,
        b_std: float | None = None,
        *,
        parameterization: str = "ntk",
    ):
        if int(out_features) != out_features or out_features < 1:
            raise ValueError(f"Dense out_features must be a positive integer; got {out_features}.")
        self.out_features = int(out_features)
        self.w_std = check_std(w_std, "w_std", allow_none=False)
        self.b_std = check_std(b_std, "b_std", allow_none=True)
        self.parameterization = check_parameterization(parameterization)

    def out_shape(self, in_shape: Shape) -> Shape:
        if not isinstance(in_shape, tuple) or len(in_shape) != 1:
            raise LayerSpecError(
                f"Dense expects inputs of shape (n, features); got per-sample shape "
                f"{in_shape}. Add Flatten() (or a pooling layer) before Dense."
            )
        return (self.out_features,)

    def kernel_rule(self, k: Kernel) -> Kernel:
        return affine_kernel(
            k,
            w2=self.w_std**2,
            b_std=self.b_std,
            parameterization=self.parameterization,
            fan_in=k.shape[0],
            out_shape=(self.out_features,),
        )

    def build_module(self, in_shape: Shape, generator: torch.Generator) -> nn.Module:
        d = in_shape[0]
        w_std = value_of(self.w_std)
        b_std = None if self.b_std is None else value_of(self.b_std)
        shape = (self.out_features, d)
        if self.parameterization == "ntk":
            mod = DenseNTK(d, self.out_features, w_std, b_std)
            mod.weight.copy_(_init.normal(shape, generator))
            if mod.bias is not None:
                mod.bias.copy_(_init.normal((self.out_features,), generator))
            return mod
        mod = nn.Linear(d, self.out_features, bias=b_std is not None, dtype=torch.float64)
        mod.weight.copy_(_init.normal(shape, generator, w_std / math.sqrt(d)))
        if mod.bias is not None:
            mod.bias.copy_(_init.normal((self.out_features,), generator, b_std))
        return mod

    def __repr__(self) -> str:
        return (
            f"Dense({self.out_features}, w_std={value_of(self.w_std)}, "
            f"b_std={None if self.b_std is None else value_of(self.b_std)}, "
            f"parameterization={self.parameterization!r})"
        )


class Identity(Layer):
    """Passes its input through unchanged (finite and infinite)."""

    memory_factor = 1.0

    def out_shape(self, in_shape: Shape) -> Shape:
        return in_shape

    def kernel_rule(self, k):
        return k

    def build_module(self, in_shape: Shape, generator: torch.Generator) -> nn.Module:
        return nn.Identity()


class Flatten(Layer):
    """Flattens ``(n, C, *spatial)`` to ``(n, C * prod(spatial))``, channels-first order.

    Same order as ``torch.flatten(x, 1)``. The kernel of the flattened features is the
    average over locations of the per-location kernels, so only the same-location
    (diagonal) spatial covariance is needed upstream. On ``(n, features)`` it is the identity.
    With more than one location the output is not Gaussian in the kernel's sense (features
    at different locations have different variances), so a Dense layer must follow before
    any activation.
    """

    memory_factor = 1.0

    def out_shape(self, in_shape: Shape) -> Shape:
        return (math.prod(single_stream("Flatten", in_shape)),)

    def input_layout(self, diagonal_spatial):
        return True

    def kernel_rule(self, k: Kernel) -> Kernel:
        n_spatial = len(k.shape) - 1
        if n_spatial == 0:
            return k

        def mean_locations(t, pair: bool):
            if t is None:
                return None
            if not k.diagonal_spatial:
                t = location_diagonal(t, n_spatial, pair=pair)
            first = 2 if pair else 1
            return t.mean(dim=tuple(range(first, first + n_spatial)))

        return k.replace(
            nngp=mean_locations(k.nngp, True),
            ntk=mean_locations(k.ntk, True),
            cov1=mean_locations(k.cov1, False),
            cov2=mean_locations(k.cov2, False),
            shape=(math.prod(k.shape),),
            diagonal_spatial=False,
            # features at different locations have different variances: the averaged
            # kernel is not the covariance of a Gaussian with one variance per sample
            is_gaussian=k.is_gaussian and math.prod(k.shape[1:]) == 1,
        )

    def build_module(self, in_shape: Shape, generator: torch.Generator) -> nn.Module:
        return nn.Flatten(1)
