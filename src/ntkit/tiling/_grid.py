"""The tile grid of a kernel matrix, and the choice of tile size.

Tiles are ``rows x cols`` blocks on a fixed grid (ragged at the ends), so each tile is one
chunk of the store's arrays. With ``x2 = x1`` (``symmetric``) tiles are square and only
those on or above the diagonal are computed; each is mirrored below.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

#: Largest result of one tile per output (bytes) when the tile is chosen automatically:
#: big enough that per-tile costs (a probe, a task, a chunk file) vanish, small enough that
#: a few tiles in flight per worker stay cheap.
TILE_BYTES = 32 * 2**20


@dataclass(frozen=True)
class TileGrid:
    """Tiles of ``rows x cols`` pairs over an ``n1 x n2`` matrix.

    Attributes:
        n1: Rows of the matrix.
        n2: Columns of the matrix.
        rows: Rows per tile.
        cols: Columns per tile (equal to ``rows`` when symmetric).
        symmetric: Only tiles on or above the diagonal are computed.
    """

    n1: int
    n2: int
    rows: int
    cols: int
    symmetric: bool

    @property
    def shape(self) -> tuple[int, int]:
        """Tiles along each axis."""
        return -(-self.n1 // self.rows), -(-self.n2 // self.cols)

    def tiles(self) -> list[tuple[int, int]]:
        """Tile indices ``(bi, bj)`` to compute, row by row."""
        nb1, nb2 = self.shape
        return [(bi, bj) for bi in range(nb1) for bj in range(bi if self.symmetric else 0, nb2)]

    @property
    def n_tiles(self) -> int:
        nb1, nb2 = self.shape
        return nb1 * (nb1 + 1) // 2 if self.symmetric else nb1 * nb2

    def ranges(self, bi: int, bj: int) -> tuple[int, int, int, int]:
        """``(a0, a1, j0, j1)`` of tile ``(bi, bj)``."""
        a0, j0 = bi * self.rows, bj * self.cols
        return a0, min(self.n1, a0 + self.rows), j0, min(self.n2, j0 + self.cols)


def check_tile(tile) -> tuple[int, int] | None:
    """Validate ``tile``: ``None``, a positive int, or a pair of positive ints."""
    if tile is None:
        return None
    pair = (tile, tile) if not isinstance(tile, (tuple, list)) else tuple(tile)
    ok = len(pair) == 2 and all(
        isinstance(t, int) and not isinstance(t, bool) and t >= 1 for t in pair
    )
    if not ok:
        raise ValueError(
            f"tile must be None, a positive int or a pair of positive ints (rows, cols); "
            f"got {tile!r}."
        )
    return pair


def choose_grid(
    n1: int,
    n2: int,
    *,
    symmetric: bool,
    tile: tuple[int, int] | None,
    entry_bytes: int,
    n_outputs: int,
    budget: int,
    workers: int,
) -> TileGrid:
    """The tile grid: ``tile`` if given, else the largest tiles within the memory model.

    Memory model: each of ``workers`` tiles in flight holds its result (``entry_bytes`` per
    pair and output, ``n_outputs`` outputs) plus as much again while it is computed and
    written, so a tile may use ``budget / (2 workers)``, and at most :data:`TILE_BYTES` per
    output.

    Raises:
        ValueError: symmetric with non-square ``tile``.
    """
    if tile is not None:
        rows, cols = tile
        if symmetric and rows != cols:
            raise ValueError(
                f"with x2=None tiles are square (mirrored across the diagonal); got tile="
                f"{tile}. Pass one int."
            )
        return TileGrid(n1, n2, min(rows, n1), min(cols, n2), symmetric)
    entry_bytes = max(1, entry_bytes)
    pairs = min(TILE_BYTES / entry_bytes, budget / (2 * max(1, workers) * entry_bytes * n_outputs))
    pairs = max(1, int(pairs))
    side = max(1, math.isqrt(pairs))
    if symmetric:
        side = min(side, n1)
        return TileGrid(n1, n2, side, side, True)
    rows = min(side, n1)
    cols = min(n2, max(side, pairs // rows))
    return TileGrid(n1, n2, rows, cols, False)
