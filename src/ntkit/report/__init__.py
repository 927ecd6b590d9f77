"""The main job: an HTML report of what the kernels say about a dataset."""

from __future__ import annotations

from pathlib import Path

from ntkit.report.context import ReportConfig, ReportContext, default_network
from ntkit.report.html import write_report
from ntkit.report.sections import DEFAULT_SECTIONS, Section

__all__ = ["ReportConfig", "ReportContext", "Section", "default_network", "run_report"]


def run_report(config: ReportConfig, out_dir: Path | str | None = "report", sections=None):
    """Compute every section and write ``out_dir/report.html`` (skipped if ``out_dir`` is None).

    Returns:
        ``(context, sections, path)``: the shared state (with ``results`` and ``timings``),
        the rendered sections and the HTML path (or ``None``).
    """
    ctx = ReportContext(config)
    done = []
    with ctx.timed("total"):
        for make in sections or DEFAULT_SECTIONS:
            done.append(make(ctx))
    path = None
    if out_dir is not None:
        path = write_report(Path(out_dir) / "report.html", "ntkit report", done)
    return ctx, done, path
