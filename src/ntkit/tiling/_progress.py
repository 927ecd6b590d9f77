"""A rich progress bar for tiles: done / total, throughput and ETA (``enabled=False``: silent)."""

from __future__ import annotations

import contextlib
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


class TileProgress:
    """Counts finished tiles; :meth:`advance` is safe to call from worker threads."""

    def __init__(self, progress: Progress | None, task):
        self._progress = progress
        self._task = task
        self.done = 0

    def advance(self, n: int = 1) -> None:
        self.done += n
        if self._progress is not None:
            self._progress.advance(self._task, n)


@contextlib.contextmanager
def tile_progress(
    total: int, *, done: int = 0, enabled: bool = True, description: str = "kernel tiles"
) -> Iterator[TileProgress]:
    """Show a bar over ``total`` tiles of which ``done`` are already finished."""
    if not enabled:
        yield TileProgress(None, None)
        return
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        _Throughput(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, transient=False) as progress:
        task = progress.add_task(description, total=total, completed=done)
        yield TileProgress(progress, task)
