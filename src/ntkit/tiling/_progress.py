"""A rich progress bar for tiles: done / total, throughput and ETA (``enabled=False``: silent)."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text


class _Throughput(ProgressColumn):
    """Tiles per second (rich's running estimate)."""

    def render(self, task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("  ?  tiles/s" if speed is None else f"{speed:6.2f} tiles/s")


def _columns() -> tuple:
    return (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        _Throughput(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )


class TileProgress:
    """Counts finished tiles; :meth:`advance` is safe to call from worker threads.

    With ``defer_s``, no bar is shown until a tile finishes at least ``defer_s`` seconds
    after the start with tiles still to go; the bar then appears with the tiles done so far
    (quick computations stay silent; long ones show their progress and ETA).
    """

    def __init__(
        self,
        progress: Progress | None,
        task,
        *,
        total: int = 0,
        description: str = "",
        defer_s: float | None = None,
    ):
        self._progress = progress
        self._task = task
        self._total = total
        self._description = description
        self._defer_s = defer_s
        self._start = time.perf_counter()
        self._lock = threading.Lock()
        self.done = 0

    def advance(self, n: int = 1) -> None:
        with self._lock:
            self.done += n
            if self._progress is None and self._defer_s is not None and self.done < self._total:
                if time.perf_counter() - self._start >= self._defer_s:
                    self._progress = Progress(*_columns(), transient=False)
                    self._progress.start()
                    self._task = self._progress.add_task(
                        self._description, total=self._total, completed=self.done
                    )
                return
            if self._progress is not None:
                self._progress.advance(self._task, n)

    def close(self) -> None:
        """Stop a deferred bar that was started."""
        if self._defer_s is not None and self._progress is not None:
            self._progress.stop()


#: Seconds a computation runs before its deferred bar (``enabled=None``) appears.
DEFER_S = 3.0


@contextlib.contextmanager
def tile_progress(
    total: int,
    *,
    done: int = 0,
    enabled: bool | None = True,
    description: str = "kernel tiles",
) -> Iterator[TileProgress]:
    """Show a bar over ``total`` tiles of which ``done`` are already finished.

    ``enabled=None``: only once the computation has run :data:`DEFER_S` seconds.
    """
    if enabled is None:
        bar = TileProgress(None, None, total=total, description=description, defer_s=DEFER_S)
        bar.done = done
        try:
            yield bar
        finally:
            bar.close()
        return
    if not enabled:
        yield TileProgress(None, None)
        return
    with Progress(*_columns(), transient=False) as progress:
        task = progress.add_task(description, total=total, completed=done)
        yield TileProgress(progress, task)
