"""The exceptions ntkit raises beyond the built-in ``ValueError``/``TypeError``.

Every class derives from ``ValueError`` or ``TypeError``, so code that catches those keeps
working; the subclasses let callers tell the cases apart. This module imports nothing from
ntkit, so any module can import it.
"""

from __future__ import annotations

__all__ = [
    "LayerSpecError",
    "NotPicklableError",
    "StoreCorruptError",
    "StoreMismatchError",
]


class LayerSpecError(ValueError):
    """A network description cannot be evaluated (wrong shapes, non-Gaussian input, ...)."""


class NotPicklableError(TypeError):
    """An object that must travel to another process (a Dask worker) cannot be pickled."""


class StoreMismatchError(ValueError):
    """A kernel store was made by another computation (other inputs, spec, dtype, shape)."""


class StoreCorruptError(ValueError):
    """A kernel store holds a tile marked complete whose data does not match its checksum."""
