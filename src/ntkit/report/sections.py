"""Report sections: each is a function ``ReportContext -> Section``.

Add a section by writing such a function and listing it in :data:`DEFAULT_SECTIONS`.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass, field

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from ntkit.predict import kernel_regression  # noqa: E402
from ntkit.report.context import ReportContext  # noqa: E402

__all__ = ["DEFAULT_SECTIONS", "Figure", "Section"]


@dataclass
class Figure:
    """A PNG figure with its caption and a short reading of what it shows."""

    caption: str
    png: bytes
    reading: str = ""


@dataclass
class Section:
    """A titled block of the report: paragraphs, an optional table, figures."""

    title: str
    paragraphs: list[str] = field(default_factory=list)
    table_header: list[str] = field(default_factory=list)
    table_rows: list[list[str]] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)


def present(value: torch.Tensor | None, what: str) -> torch.Tensor:
    """``value``, which a computation was asked for; raise if it came back ``None``."""
    if value is None:
        raise RuntimeError(f"{what} was requested but not computed")
    return value


def figure_png(fig) -> bytes:
    """Render a matplotlib figure to PNG bytes and close it."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def data_section(ctx: ReportContext) -> Section:
    """The dataset and the network description."""
    d = ctx.data
    return Section(
        title="Data and network",
        paragraphs=[
            f"Dataset: {d.name}, {d.x_train.shape[0]} training and {d.x_test.shape[0]} test "
            f"examples of dimension {d.x_train.shape[1]}, {d.n_classes} classes "
            "(standardized pixels, one-hot targets).",
            f"Network (NTK parameterization, infinite width): {ctx.net!r}.",
        ],
    )


def accuracy(pred: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of rows whose argmax equals the label."""
    return float((pred.argmax(1) == labels).double().mean())


def regression_section(ctx: ReportContext) -> Section:
    """Kernel regression with the NNGP and the NTK on one-hot labels."""
    d, cfg = ctx.data, ctx.config
    rows = []
    k_tt, k_st = ctx.kernel("train_train"), ctx.kernel("test_train")
    for name in ("nngp", "ntk"):
        with ctx.timed(f"regression {name}"):
            pred = kernel_regression(
                getattr(k_tt, name),
                d.y_train,
                getattr(k_st, name),
                ridge_relative=cfg.ridge_relative or None,
            )
        acc = accuracy(pred, d.labels_test)
        ctx.results[f"test accuracy {name.upper()} regression"] = acc
        rows.append([name.upper(), f"{acc:.4f}", f"{ctx.timings[f'regression {name}']:.3f}"])
    ridge = (
        "ridgeless (pseudo-inverse)"
        if not cfg.ridge_relative
        else (f"ridge = {cfg.ridge_relative} x mean diagonal")
    )
    return Section(
        title="Kernel regression",
        paragraphs=[f"Predictions k(x, X) K^+ Y with {ridge}; accuracy is argmax agreement."],
        table_header=["kernel", "test accuracy", "solve time (s)"],
        table_rows=rows,
    )


def timing_section(ctx: ReportContext) -> Section:
    """Wall time of every step."""
    return Section(
        title="Timings",
        table_header=["step", "seconds"],
        table_rows=[[k, f"{v:.3f}"] for k, v in ctx.timings.items()],
    )


def provenance_section(ctx: ReportContext) -> Section:
    """How the report was made: versions, command line, device, date, seed, total time."""
    import datetime
    import time

    from ntkit.environment import describe_environment

    env = describe_environment()
    cfg = ctx.config
    rows = [
        ["command", ctx.command or "(called from Python)"],
        ["date (UTC)", datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")],
        ["seed", str(cfg.seed)],
        ["data", ctx.data.name],
        ["network", str(cfg.spec) if cfg.spec else "default MLP"],
        ["device of the data", str(ctx.device)],
        ["total time (s)", f"{time.perf_counter() - ctx.started:.1f}"],
    ]
    rows += [[k, v] for k, v in env.items()]
    return Section(title="Provenance", table_header=["item", "value"], table_rows=rows)


from ntkit.report.kernels import (  # noqa: E402
    kernel_matrices_section,
    spectrum_section,
    width_convergence_section,
)
from ntkit.report.training import gp_section, training_curve_section  # noqa: E402

DEFAULT_SECTIONS: list[Callable[[ReportContext], Section]] = [
    data_section,
    kernel_matrices_section,
    spectrum_section,
    regression_section,
    gp_section,
    training_curve_section,
    width_convergence_section,
    timing_section,
    provenance_section,
]
