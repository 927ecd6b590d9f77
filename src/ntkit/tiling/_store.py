"""A zarr (v3) store of finished kernel tiles, with the metadata that made it.

Layout of ``k.zarr`` (a zarr group)::

    zarr.json      group attributes "ntkit": format, ntkit version, hashes of the function
                   and the inputs, dtype, sizes, outputs, tile grid, result flags
    nngp/ ntk/     (n1, n2, ...) arrays chunked by tile; or kernel/ for tensor functions
    cov1/ cov2/    per-sample variances (kernel-valued functions)
    tiles/         (tiles along rows, tiles along columns) int64, one chunk per tile:
                   0 while the tile is missing, else 1 + the CRC-32 of everything it wrote

A tile writes its chunks (and, with ``x2 = x1``, their mirror below the diagonal), then
its entry in ``tiles``. zarr writes each chunk file atomically (a temporary file renamed
into place), so a killed process leaves whole chunks, and a tile counts as done only once
its checksum is in: killing at any moment loses at most the tiles in flight. A tile whose
data no longer matches its checksum (a truncated or altered chunk) is reported and
recomputed on the next run.
"""

from __future__ import annotations

import os
import uuid
import warnings
import zlib
from pathlib import Path

import numpy as np
import torch

from ntkit.errors import StoreCorruptError, StoreMismatchError
from ntkit.tiling._functions import OutputSpec
from ntkit.tiling._grid import TileGrid

FORMAT = 1
TILES = "tiles"

#: Metadata entries that must agree for a run to resume a store, and their names in errors.
_IDENTITY = {
    "function": "the kernel function (or layer description)",
    "x1": "the inputs x1",
    "x2": "the inputs x2",
    "symmetric": "x2=None (symmetric) versus an explicit x2",
    "dtype": "the dtype",
    "n1": "the number of rows (len(x1))",
    "n2": "the number of columns (len(x2))",
    "outputs": "the outputs (get=)",
    "trailing": "the per-pair shape of the outputs",
}


def _numpy_dtype(dtype: torch.dtype) -> np.dtype:
    return torch.empty((), dtype=dtype).numpy().dtype


def _torch_dtype(name: str) -> torch.dtype:
    dtype = getattr(torch, name.replace("torch.", ""), None)
    if not isinstance(dtype, torch.dtype):
        raise StoreMismatchError(f"the store records an unknown dtype {name!r}.")
    return dtype


def placements(grid: TileGrid, spec: OutputSpec, bi: int, bj: int) -> list:
    """Where the outputs of tile ``(bi, bj)`` go: ``(name, index, mirrored)`` triples.

    The block itself, its mirror below the diagonal (symmetric, off-diagonal tiles), the
    rows' variances (the first tile of a row of tiles) and the columns' variances (the
    first row of tiles, explicit ``x2`` only).
    """
    a0, a1, j0, j1 = grid.ranges(bi, bj)
    out = []
    for name in spec.names:
        out.append((name, (slice(a0, a1), slice(j0, j1)), False))
        if grid.symmetric and bi != bj:
            out.append((name, (slice(j0, j1), slice(a0, a1)), True))
    if spec.kind == "kernel":
        if bj == (bi if grid.symmetric else 0):
            out.append(("cov1", (slice(a0, a1),), False))
        if not grid.symmetric and bi == 0:
            out.append(("cov2", (slice(j0, j1),), False))
    return out


def placed(spec: OutputSpec, out: dict, name: str, mirrored: bool) -> torch.Tensor:
    """The data a placement writes: the output, or its mirror."""
    return spec.mirror(out[name]) if mirrored else out[name]


class KernelStore:
    """An open kernel store (see the module docstring for its layout).

    Use :meth:`create_or_resume` to start or continue a computation and :meth:`open` to
    read one.
    """

    def __init__(self, path: Path, group, meta: dict):
        self.path = path
        self.group = group
        self.meta = meta
        self.grid = TileGrid(
            meta["n1"], meta["n2"], meta["tile"][0], meta["tile"][1], meta["symmetric"]
        )
        self.dtype = _torch_dtype(meta["dtype"])
        self._arrays: dict = {}

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(cls, path, *, mode: str = "r") -> KernelStore:
        """Open an existing store (``mode="r"`` to read, ``"r+"`` to write tiles).

        Raises:
            ValueError: no store at ``path``.
            StoreMismatchError: ``path`` is not an ntkit kernel store.
        """
        import zarr

        path = Path(path)
        if not (path / "zarr.json").exists():
            raise ValueError(f"no kernel store at {str(path)!r} (no zarr.json there).")
        group = zarr.open_group(str(path), mode=mode)
        meta = group.attrs.get("ntkit")
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise StoreMismatchError(
                f"{str(path)!r} is a zarr store but not an ntkit kernel store (format "
                f"{FORMAT}); use another path."
            )
        return cls(path, group, dict(meta))

    @classmethod
    def create_or_resume(
        cls, path, meta: dict, spec: OutputSpec, *, explicit_tile: bool
    ) -> KernelStore:
        """Resume the store at ``path`` if it was made by the same computation, else create it.

        Args:
            path: Directory of the store.
            meta: This computation's metadata (see :func:`store_metadata`).
            spec: The outputs' description.
            explicit_tile: Whether the caller chose the tile size (a stored store with
                another tile size is then refused; otherwise its tiles are kept).

        Raises:
            StoreMismatchError: the store was made by another computation; the message
                says which entries differ.
            ValueError: the path cannot be written.
        """
        path = Path(path)
        if path.exists() and not (path.is_dir() and not any(path.iterdir())):
            store = cls.open(path, mode="r+")
            store._check_same(meta, explicit_tile=explicit_tile)
            return store
        return cls._create(path, meta, spec)

    @classmethod
    def _create(cls, path: Path, meta: dict, spec: OutputSpec) -> KernelStore:
        import zarr

        meta = {**meta, "store_id": uuid.uuid4().hex}
        try:
            group = zarr.open_group(str(path), mode="w")
            n1, n2 = meta["n1"], meta["n2"]
            rows, cols = meta["tile"]
            dtype = _numpy_dtype(spec.dtype)

            def array(name, shape, chunks, dt=dtype):
                group.create_array(
                    name, shape=shape, chunks=chunks, dtype=dt, compressors=None, fill_value=0
                )

            for name in spec.names:
                array(name, (n1, n2, *spec.trailing), (rows, cols, *spec.trailing))
            if spec.kind == "kernel":
                cov = tuple(spec.cov_trailing)
                array("cov1", (n1, *cov), (rows, *cov))
                if not meta["symmetric"]:
                    array("cov2", (n2, *cov), (cols, *cov))
            array(TILES, TileGrid(n1, n2, rows, cols, meta["symmetric"]).shape, (1, 1), "int64")
            group.attrs["ntkit"] = meta
        except OSError as err:
            raise ValueError(
                f"cannot create the kernel store at {str(path)!r}: {err}. Pass a store path "
                "in a writable directory."
            ) from err
        return cls(path, group, meta)

    def _check_same(self, meta: dict, *, explicit_tile: bool) -> None:
        differ = []
        for key, what in _IDENTITY.items():
            mine, theirs = self.meta.get(key), meta.get(key)
            if mine != theirs:
                differ.append(f"{what} (store: {_short(mine)}, this call: {_short(theirs)})")
        if explicit_tile and list(self.meta["tile"]) != list(meta["tile"]):
            differ.append(f"the tile size (store: {self.meta['tile']}, this call: {meta['tile']})")
        if differ:
            raise StoreMismatchError(
                f"the kernel store {str(self.path)!r} was made by another computation: "
                + "; ".join(differ)
                + ". Use another store path, or delete this one to start over."
            )
        if self.meta.get("ntkit_version") != meta.get("ntkit_version"):
            warnings.warn(
                f"the kernel store {str(self.path)!r} was started by ntkit "
                f"{self.meta.get('ntkit_version')}; resuming it with {meta.get('ntkit_version')}.",
                UserWarning,
                stacklevel=3,
            )

    # ------------------------------------------------------------------ tiles
    def array(self, name: str):
        """The zarr array ``name`` (opened once)."""
        if name not in self._arrays:
            self._arrays[name] = self.group[name]
        return self._arrays[name]

    def write_tile(self, bi: int, bj: int, out: dict, spec: OutputSpec) -> int:
        """Write a finished tile's chunks, then mark it complete with its checksum."""
        crc = 0
        for name, index, mirrored in placements(self.grid, spec, bi, bj):
            block = placed(spec, out, name, mirrored)
            data = np.ascontiguousarray(block.detach().cpu().numpy())
            self.array(name)[index] = data
            crc = zlib.crc32(data, crc)
        self.array(TILES)[bi, bj] = crc + 1
        return crc

    def tile_checksum(self, bi: int, bj: int, spec: OutputSpec) -> int | None:
        """CRC-32 of what tile ``(bi, bj)`` wrote, read back; ``None`` if unreadable."""
        crc = 0
        try:
            for name, index, _ in placements(self.grid, spec, bi, bj):
                data = np.ascontiguousarray(self.array(name)[index])
                crc = zlib.crc32(data, crc)
        except Exception:  # noqa: BLE001 - any decoding failure means a damaged chunk
            return None
        return crc

    def marks(self) -> np.ndarray:
        """``tiles`` array: 0 for missing tiles, 1 + checksum for finished ones."""
        return np.asarray(self.array(TILES)[...])

    def finished(self, spec: OutputSpec, *, verify: bool = True) -> tuple[set, list]:
        """Tiles marked complete, and those among them whose data fails the checksum."""
        try:
            marks = self.marks()
        except Exception:  # noqa: BLE001 - a damaged marker chunk: check one by one
            marks = np.zeros(self.grid.shape, dtype=np.int64)
            for bi, bj in self.grid.tiles():
                try:
                    marks[bi, bj] = int(self.array(TILES)[bi, bj])
                except Exception:  # noqa: BLE001
                    marks[bi, bj] = 0
        done, bad = set(), []
        for bi, bj in self.grid.tiles():
            mark = int(marks[bi, bj])
            if mark == 0:
                continue
            if verify and self.tile_checksum(bi, bj, spec) != mark - 1:
                bad.append((bi, bj))
                continue
            done.add((bi, bj))
        return done, bad


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def store_metadata(
    *,
    function: str,
    function_repr: str,
    x1: str,
    x2: str | None,
    grid: TileGrid,
    spec: OutputSpec,
) -> dict:
    """The metadata of a computation, as the store records it."""
    from ntkit import __version__

    return {
        "format": FORMAT,
        "ntkit_version": __version__,
        "torch_version": torch.__version__,
        "function": function,
        "function_repr": function_repr[:300],
        "x1": x1,
        "x2": x2,
        "symmetric": grid.symmetric,
        "dtype": str(spec.dtype).replace("torch.", ""),
        "n1": grid.n1,
        "n2": grid.n2,
        "outputs": list(spec.names),
        "kind": spec.kind,
        "trailing": list(spec.trailing),
        "cov_trailing": None if spec.cov_trailing is None else list(spec.cov_trailing),
        "n_spatial": spec.n_spatial,
        "diagonal": spec.diagonal,
        "flags": spec.flags,
        "tile": [grid.rows, grid.cols],
        "host": os.uname().nodename if hasattr(os, "uname") else "",
    }


def spec_from_metadata(meta: dict) -> OutputSpec:
    """The :class:`OutputSpec` a store was written with."""
    return OutputSpec(
        kind=meta["kind"],
        names=tuple(meta["outputs"]),
        trailing=tuple(meta["trailing"]),
        cov_trailing=None if meta["cov_trailing"] is None else tuple(meta["cov_trailing"]),
        dtype=_torch_dtype(meta["dtype"]),
        n_spatial=meta["n_spatial"],
        diagonal=meta["diagonal"],
        flags=meta["flags"],
    )


def raise_corrupt(path, bad: list) -> None:
    """Raise :class:`StoreCorruptError` naming the damaged tiles."""
    shown = ", ".join(str(t) for t in bad[:8]) + (" ..." if len(bad) > 8 else "")
    raise StoreCorruptError(
        f"the kernel store {str(path)!r} has {len(bad)} tile(s) whose data does not match "
        f"the checksum recorded when they were written: {shown}. Run the same "
        "kernel_matrix/kernel_store call again to recompute them."
    )
