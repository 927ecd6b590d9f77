"""Tiled, resumable, distributed kernel matrices.

- :func:`kernel_matrix`: any kernel function (an ntkit layer description, an empirical NTK,
  your own ``fn(x1, x2)``) over tiles, in this process or on a Dask cluster, optionally
  through a resumable zarr store; returns the result in memory.
- :func:`kernel_store`: the same, leaving the result in the store (bounded memory) and
  returning a :class:`StoredKernel` handle; :func:`open_store` reopens one.
- :class:`StoredKernel` reads lazily (zarr, dask) and is a matrix-free operator for
  ``ntkit.predict.conjugate_gradient``.
"""

__all__ = ["StoredKernel", "kernel_matrix", "kernel_store", "open_store"]


def __getattr__(name: str):
    """Import the implementation on first use (``ntkit kernel --help`` stays quick)."""
    if name in __all__:
        from ntkit.tiling import api

        return getattr(api, name)
    raise AttributeError(f"module 'ntkit.tiling' has no attribute {name!r}")
