"""The main job: an HTML report of what the kernels say about a dataset."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from ntkit.report.context import ReportConfig, ReportContext, default_network, load_spec
from ntkit.report.html import write_report
from ntkit.report.sections import DEFAULT_SECTIONS, Figure, Section

__all__ = [
    "ReportConfig",
    "ReportContext",
    "Figure",
    "Section",
    "default_network",
    "load_spec",
    "run_report",
]


def run_report(
    config: ReportConfig | ReportContext,
    out_dir: Path | str | None = "report",
    sections: Sequence[Callable[[ReportContext], Section]] | None = None,
    *,
    progress: bool = True,
) -> tuple[ReportContext, list[Section], Path | None]:
    """Compute every section and write ``out_dir/report.html`` (skipped if ``out_dir`` is None).

    Args:
        config: The options, or a context already made from them (data loaded).
        out_dir: Folder of ``report.html``; ``None`` writes nothing.
        sections: Section functions to run, in order (default: all of them).
        progress: Show a progress bar (rich) with the section being computed.

    Returns:
        ``(context, sections, path)``: the shared state (with ``results`` and ``timings``),
        the rendered sections and the HTML path (or ``None``).
    """
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    ctx = config if isinstance(config, ReportContext) else ReportContext(config)
    todo = list(DEFAULT_SECTIONS if sections is None else sections)
    done = []
    columns = (
        TextColumn("[bold]ntkit report[/bold] {task.description:<32}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, disable=not progress, transient=False) as bar:
        task = bar.add_task("", total=len(todo))
        with ctx.timed("total"):
            for make in todo:
                name = make.__name__.removesuffix("_section").replace("_", " ")
                bar.update(task, description=name)
                done.append(make(ctx))
                bar.advance(task)
        bar.update(task, description="done")
    path = None
    if out_dir is not None:
        path = write_report(Path(out_dir) / "report.html", "ntkit report", done)
    return ctx, done, path
