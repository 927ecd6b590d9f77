"""The Layer protocol: a kernel rule, an output shape, a finite-module factory.

A layer asks three things of its author (the "tiny core"):

- :meth:`Layer.out_shape` -- the per-sample shape of the finite network's output;
- :meth:`Layer.kernel_rule` -- a pure function ``Kernel -> Kernel`` (infinite width);
- :meth:`Layer.build_module` -- the finite ``torch.nn.Module`` with random initial weights.

Everything else (``net.kernel``, ``net.module``, memory planning, tiling) is derived.
Multi-stream values (after ``FanOut``) are Python lists: a list of shapes, of kernels, of
tensors.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING

import torch
from torch import nn

from ntkit.errors import LayerSpecError
from ntkit.layers._footprint import record_footprint

if TYPE_CHECKING:
    from ntkit.kernel import Kernel

Shape = tuple[int, ...] | list
KernelOrList = "Kernel | list"

__all__ = ["Layer", "LayerSpecError", "Shape"]


def single_stream(who: str, in_shape: Shape) -> tuple[int, ...]:
    """``in_shape`` itself when it is one stream's per-sample shape.

    Raises:
        LayerSpecError: several streams (a list of shapes, after ``FanOut``).
    """
    if not isinstance(in_shape, tuple):
        raise LayerSpecError(f"{who} expects a single stream; got shapes {in_shape}.")
    return in_shape


def require_full_layout(who: str, k: Kernel) -> None:
    """Refuse a kernel that keeps only same-location entries (``diagonal_spatial``).

    Raises:
        LayerSpecError: ``k.diagonal_spatial`` is set.
    """
    if k.diagonal_spatial:
        raise LayerSpecError(
            f"{who} needs the full location-by-location covariance of its input, but the "
            "kernel reaching it keeps only same-location entries (diagonal_spatial)."
        )


class Layer(ABC):
    """Base class of every infinite-width/finite-width layer description.

    Attributes:
        memory_factor: Peak number of live arrays, each the size of this layer's input
            kernel tile, while :meth:`kernel_rule` runs; used to plan tiles.
    """

    memory_factor: float = 6.0

    @property
    def name(self) -> str:
        """A short human-readable name, used in error messages."""
        return type(self).__name__

    # --- the core a layer must provide -------------------------------------------------
    @abstractmethod
    def out_shape(self, in_shape: Shape) -> Shape:
        """Per-sample output shape for per-sample input shape ``in_shape``.

        Raises:
            LayerSpecError: the input shape is not one this layer accepts.
        """

    @abstractmethod
    def kernel_rule(self, k: KernelOrList) -> KernelOrList:
        """Map the input kernel(s) to the output kernel(s); pure, no side effects."""

    @abstractmethod
    def build_module(self, in_shape: Shape, generator: torch.Generator) -> nn.Module:
        """Build the finite module for ``in_shape``, drawing weights from ``generator``."""

    def input_layout(self, diagonal_spatial: bool | list) -> bool | list:
        """Which spatial covariance this layer needs of its input.

        Args:
            diagonal_spatial: Whether the layer's consumer needs only same-location
                covariances of this layer's output (a list for multi-stream outputs).

        Returns:
            The same for this layer's input. The default passes the requirement through.
        """
        return diagonal_spatial

    def working_entries(self, k: KernelOrList) -> float:
        """Peak working memory of :meth:`kernel_rule`, in kernel entries per input pair.

        Used to plan tiles. The default is ``memory_factor`` x the entries per pair of the
        input kernel(s); layers whose temporaries grow with their geometry (padding,
        windows) override it.
        """
        kernels = k if isinstance(k, list) else [k]
        return self.memory_factor * sum(ki.entries_per_pair for ki in kernels)

    # --- derived -----------------------------------------------------------------------
    def apply_kernel(self, k: KernelOrList) -> KernelOrList:
        """Run :meth:`kernel_rule`, recording the tile footprint for memory planning."""
        record_footprint(self, k)
        return self.kernel_rule(k)

    def kernel(
        self,
        x1,
        x2=None,
        *,
        get: str | tuple[str, ...] = ("nngp", "ntk"),
        dtype: torch.dtype | None = None,
        max_memory: int | str | None = None,
        progress: bool | None = None,
    ) -> Kernel:
        """Infinite-width NNGP and NTK between two batches.

        Differentiable: with ``x1``/``x2`` or tensor-valued layer parameters that require
        grad, the result carries a ``grad_fn`` (first derivatives; see docs/numerics.md).

        Args:
            x1: Inputs, shape ``(n1, *in_shape)`` (tensor or numpy array).
            x2: Inputs, shape ``(n2, *in_shape)``; ``None`` means ``x2 = x1`` and returns an
                exactly symmetric kernel computed from the upper triangle.
            get: ``"nngp"``, ``"ntk"`` or both (the default). Computing the NTK needs the
                NNGP, so ``"ntk"`` returns both; ``"nngp"`` skips the NTK (``ntk=None``).
            dtype: Arithmetic dtype; float64 by default (float32 on request).
            max_memory: Budget for the result plus working memory, in bytes or a string
                such as ``"2GiB"``; by default a safe fraction of the memory available on
                the inputs' device.
            progress: A rich progress bar over the kernel's tiles (tiles/s, ETA). ``None``
                (default): shown only once the computation has run 3 seconds; ``True``:
                from the start; ``False``: never.

        Returns:
            A :class:`ntkit.Kernel` on the inputs' device with ``nngp``/``ntk`` of shape
            ``(n1, n2)`` after a readout, or ``(n1, n2, *spatial pairs)`` otherwise.

        Raises:
            ValueError: bad inputs (NaN/Inf, wrong rank, mismatched features, empty batch,
                zero features, squares outside the floating-point range), a network that
                cannot be evaluated, a memory budget that cannot hold a single pair of
                inputs, or a result with NaN/Inf (naming the first layer where it appeared).
        """
        from ntkit.layers._driver import compute_kernel

        return compute_kernel(
            self, x1, x2, get=get, dtype=dtype, max_memory=max_memory, progress=progress
        )

    def module(
        self,
        in_shape: tuple[int, ...],
        *,
        seed: int = 0,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
        parameterization: str | None = None,
        base_width: int | None = None,
    ) -> nn.Module:
        """The finite network this description stands for, with random initial weights.

        Args:
            in_shape: Per-sample input shape, e.g. ``(784,)`` or ``(3, 32, 32)``.
            seed: Seed of the weights' random draw; the same seed gives the same module.
            dtype: Parameter dtype.
            device: Parameter device.
            parameterization: ``None`` (each layer's own), or ``"standard"``, ``"ntk"``,
                ``"mup"`` for the whole network via :func:`ntkit.parametrization.parametrize`
                with each layer's ``w_std``/``b_std`` as gains (layers must use the default
                ``parameterization="ntk"`` in the description). The per-layer learning-rate
                scales: ``ntkit.parametrization.parametrize(model, ...).param_groups(lr)``.
            base_width: The base width of ``"mup"``.

        Returns:
            A ``torch.nn.Module`` mapping ``(n, *in_shape)`` to ``(n, *out_shape)``, under
            the parameterization each layer names (or ``parameterization``).
        """
        in_shape = tuple(int(s) for s in in_shape)
        self.out_shape(in_shape)  # validates the whole description first
        generator = torch.Generator().manual_seed(int(seed))
        with torch.no_grad():
            mod = self.build_module(in_shape, generator)
        if parameterization is not None:
            from ntkit.parametrization import parametrize_spec_module

            parametrize_spec_module(mod, parameterization, base_width=base_width, seed=seed)
        return mod.to(dtype=dtype, device=device)

    def __repr__(self) -> str:
        return f"{self.name}()"
