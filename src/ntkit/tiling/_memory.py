"""In-memory assembly of tiles (the default sink of ``kernel_matrix``)."""

from __future__ import annotations

import math

import torch

from ntkit.kernel import Kernel
from ntkit.tiling._functions import OutputSpec
from ntkit.tiling._grid import TileGrid
from ntkit.tiling._store import placed, placements


def result_bytes(grid: TileGrid, spec: OutputSpec) -> int:
    """Bytes of the whole result in memory (pair outputs and variances)."""
    itemsize = torch.finfo(spec.dtype).bits // 8 if spec.dtype.is_floating_point else 8
    pairs = grid.n1 * grid.n2 * math.prod(spec.trailing) * len(spec.names)
    cov = 0
    if spec.kind == "kernel":
        rows = grid.n1 + (0 if grid.symmetric else grid.n2)
        cov = rows * math.prod(spec.cov_trailing)
    return (pairs + cov) * itemsize


class MemoryResult:
    """Preallocated outputs that tiles are placed into (mirrored when symmetric)."""

    def __init__(self, grid: TileGrid, spec: OutputSpec, device: torch.device):
        self.grid, self.spec = grid, spec
        self.arrays = {}
        opts = {"dtype": spec.dtype, "device": device}
        for name in spec.names:
            self.arrays[name] = torch.empty((grid.n1, grid.n2, *spec.trailing), **opts)
        if spec.kind == "kernel":
            self.arrays["cov1"] = torch.empty((grid.n1, *spec.cov_trailing), **opts)
            if not grid.symmetric:
                self.arrays["cov2"] = torch.empty((grid.n2, *spec.cov_trailing), **opts)

    def place(self, bi: int, bj: int, out: dict) -> None:
        """Copy tile ``(bi, bj)``'s outputs into the result."""
        for name, index, mirrored in placements(self.grid, self.spec, bi, bj):
            self.arrays[name][index] = placed(self.spec, out, name, mirrored)

    def views(self, bi: int, bj: int) -> dict:
        """Views of the result where tile ``(bi, bj)`` goes (for tiles written in place)."""
        a0, a1, j0, j1 = self.grid.ranges(bi, bj)
        out = {name: self.arrays[name][a0:a1, j0:j1] for name in self.spec.names}
        out["cov1"] = self.arrays["cov1"][a0:a1]
        if self.grid.symmetric and bi != bj:  # the mirror, written by the tile's threads
            for name in self.spec.names:
                out[f"mirror_{name}"] = self.arrays[name][j0:j1, a0:a1]
        if "cov2" in self.arrays:
            out["cov2"] = self.arrays["cov2"][j0:j1]
        else:  # a symmetric result keeps no cov2: off-diagonal tiles write theirs to scratch
            cov1 = self.arrays["cov1"]
            out["cov2"] = cov1.new_empty((j1 - j0, *cov1.shape[1:]))
        return out

    def place_region(self, name: str, index, data) -> None:
        """Copy an already placed region (read back from a store)."""
        self.arrays[name][index] = torch.as_tensor(data)

    def result(self, *, explicit_x2: bool) -> Kernel | torch.Tensor:
        """The assembled result: a tensor, or an :class:`ntkit.Kernel` for kernel outputs."""
        spec = self.spec
        if spec.kind == "tensor":
            return self.arrays["kernel"]
        flags = dict(spec.flags)
        flags["shape"] = tuple(flags["shape"])
        cov1 = self.arrays["cov1"]
        cov2 = self.arrays.get("cov2", cov1 if explicit_x2 else None)
        return Kernel(
            nngp=self.arrays["nngp"],
            ntk=self.arrays.get("ntk"),
            cov1=cov1,
            cov2=cov2,
            x1_is_x2=self.grid.symmetric,
            pair_shift=0,
            **flags,
        )
