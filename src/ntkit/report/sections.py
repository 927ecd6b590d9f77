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
    """A PNG figure with its caption."""

    caption: str
    png: bytes


@dataclass
class Section:
    """A titled block of the report: paragraphs, an optional table, figures."""

    title: str
    paragraphs: list[str] = field(default_factory=list)
    table_header: list[str] = field(default_factory=list)
    table_rows: list[list[str]] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)


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


def spectrum_section(ctx: ReportContext) -> Section:
    """Eigenvalue spectra of the training NNGP and NTK."""
    k = ctx.kernel("train_train")
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    rows = []
    for name in ("nngp", "ntk"):
        evals = torch.linalg.eigvalsh(getattr(k, name)).flip(0).clamp_min(1e-300)
        ax.loglog(torch.arange(1, evals.numel() + 1), evals, label=name.upper())
        cond = float(evals[0] / evals[-1])
        rows.append(
            [name.upper(), f"{float(evals[0]):.4g}", f"{float(evals[-1]):.4g}", f"{cond:.3g}"]
        )
    ax.set_xlabel("index")
    ax.set_ylabel("eigenvalue")
    ax.legend()
    ax.set_title("Spectrum of the training kernel")
    return Section(
        title="Kernel spectra",
        table_header=["kernel", "largest eigenvalue", "smallest eigenvalue", "condition number"],
        table_rows=rows,
        figures=[Figure("Eigenvalues of the training kernels, largest first.", figure_png(fig))],
    )


def timing_section(ctx: ReportContext) -> Section:
    """Wall time of every step."""
    return Section(
        title="Timings",
        table_header=["step", "seconds"],
        table_rows=[[k, f"{v:.3f}"] for k, v in ctx.timings.items()],
    )


from ntkit.report.training import gp_section, training_curve_section  # noqa: E402

DEFAULT_SECTIONS: list[Callable[[ReportContext], Section]] = [
    data_section,
    regression_section,
    gp_section,
    training_curve_section,
    spectrum_section,
    timing_section,
]
