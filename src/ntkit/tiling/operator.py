"""A stored kernel as a matrix-free operator for :mod:`ntkit.predict`'s iterative solvers."""

from __future__ import annotations

import numpy as np
import torch

from ntkit.predict.solvers import BLOCK_BYTES, KernelOperator


class StoreOperator(KernelOperator):
    """``K @ v`` read from a kernel store block of rows by block of rows.

    Memory: one block of rows (whole tiles, about 16 MiB by default) plus ``v`` and the
    result; the matrix itself is never loaded.

    Args:
        stored: A finished :class:`ntkit.tiling.StoredKernel` with 2-D outputs.
        name: The output to use (``"ntk"``, ``"nngp"`` or ``"kernel"``).
        block_rows: Rows per block (default: a multiple of the tile height, ~16 MiB).
    """

    def __init__(self, stored, name: str, *, block_rows: int | None = None):
        if len(stored.shape) != 2:
            raise ValueError(
                f"a kernel operator needs a matrix (n1, n2); the store holds {name} of shape "
                f"{stored.shape}."
            )
        self.stored = stored
        self.name = name
        self._array = stored.array(name)
        self.shape = (int(stored.shape[0]), int(stored.shape[1]))
        self.dtype = stored.dtype
        self.device = torch.device("cpu")
        tile_rows = int(stored.metadata["tile"][0])
        if block_rows is None:
            per_row = self.shape[1] * torch.empty((), dtype=self.dtype).element_size()
            block_rows = max(1, BLOCK_BYTES // (per_row * tile_rows)) * tile_rows
        if int(block_rows) != block_rows or block_rows < 1:
            raise ValueError(f"block_rows must be a positive integer; got {block_rows}.")
        self.block_rows = int(min(block_rows, self.shape[0]))

    def _rows(self, start: int, stop: int) -> torch.Tensor:
        return torch.from_numpy(np.asarray(self._array[start:stop]))

    def matmul(self, v: torch.Tensor) -> torch.Tensor:
        if v.shape[0] != self.shape[1]:
            raise ValueError(f"v must have {self.shape[1]} rows; got shape {tuple(v.shape)}.")
        out = torch.empty(self.shape[0], v.shape[1], dtype=v.dtype, device=v.device)
        vv = v.to(device="cpu", dtype=self.dtype)
        for start in range(0, self.shape[0], self.block_rows):
            stop = min(start + self.block_rows, self.shape[0])
            out[start:stop] = (self._rows(start, stop) @ vv).to(device=v.device, dtype=v.dtype)
        return out

    def diagonal(self) -> torch.Tensor:
        if self.shape[0] != self.shape[1]:
            return super().diagonal()
        parts = []
        step = int(self.stored.metadata["tile"][0])
        for start in range(0, self.shape[0], step):
            stop = min(start + step, self.shape[0])
            block = np.asarray(self._array[start:stop, start:stop])
            parts.append(torch.from_numpy(np.ascontiguousarray(np.diagonal(block))))
        return torch.cat(parts)
