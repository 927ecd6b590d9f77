"""Working-memory footprints of a probe run, recorded per call (``contextvars``).

The planner runs the network on one pair of inputs inside :func:`recording`; every
``Layer.apply_kernel`` during that run appends its footprint to the list of the current
context. Outside a recording (tiles, other threads, other calls) nothing is recorded, and
concurrent calls (threads, asyncio tasks) each see only their own list.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

#: (working entries per pair, kernel entries per pair, layer repr) of each layer run.
Footprint = tuple[float, int, str]

_footprints: contextvars.ContextVar[list[Footprint] | None] = contextvars.ContextVar(
    "ntkit_footprints", default=None
)


def record_footprint(layer, k) -> None:
    """During a probe run, record (working entries, kernel entries) per pair of ``k``.

    Working entries come from ``layer.working_entries(k)`` (by default ``memory_factor``
    x the entries per pair of the input kernel).
    """
    sink = _footprints.get()
    if sink is None:
        return
    kernels = k if isinstance(k, list) else [k]
    entries = sum(ki.entries_per_pair for ki in kernels)
    sink.append((float(layer.working_entries(k)), entries, repr(layer)))


@contextlib.contextmanager
def recording() -> Iterator[list[Footprint]]:
    """Collect the footprints of the layers run inside the block (this context only)."""
    found: list[Footprint] = []
    token = _footprints.set(found)
    try:
        yield found
    finally:
        _footprints.reset(token)


@contextlib.contextmanager
def paused() -> Iterator[None]:
    """Record nothing inside the block (tiles run inside a caller's recording)."""
    token = _footprints.set(None)
    try:
        yield
    finally:
        _footprints.reset(token)
