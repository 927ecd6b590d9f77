"""Report sections on the kernels themselves: heatmaps, spectra, alignment, width convergence.

- :func:`kernel_matrices_section`: NNGP, NTK and the finite network's empirical NTK on the
  same training points, sorted by class.
- :func:`spectrum_section`: eigenvalues and their power-law decay; how much of the labels
  lies in the top eigenvectors.
- :func:`width_convergence_section`: the empirical NTK of random networks approaching the
  analytic one as the width grows, and the error of the sum-of-logits approximation.
"""

from __future__ import annotations

import numpy as np
import torch

import ntkit as nk
from ntkit.report.context import ReportContext
from ntkit.report.sections import Figure, Section, figure_png, plt

__all__ = ["kernel_matrices_section", "spectrum_section", "width_convergence_section"]

#: Random networks per width in the convergence figure.
CONVERGENCE_SEEDS = 2


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.linalg.norm(a - b) / torch.linalg.norm(b))


def heatmap_points(ctx: ReportContext) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n_heatmap`` training points sorted by class: ``(x, labels)``."""
    d = ctx.data
    m = min(ctx.config.n_heatmap, d.x_train.shape[0])
    labels = d.labels_train[:m]
    order = torch.argsort(labels, stable=True)
    return d.x_train[:m][order], labels[order]


def kernel_matrices_section(ctx: ReportContext) -> Section:
    """Heatmaps of the NNGP, the NTK and the finite network's empirical NTK."""
    x, labels = heatmap_points(ctx)
    with ctx.timed("kernel heatmap points"):
        k = ctx.net.kernel(x, progress=False)
    model = ctx.finite_model()
    n_out = ctx.data.n_classes
    with ctx.timed("empirical NTK"):
        entk = nk.empirical_ntk(model, x.to(torch.float64), mode="trace") / n_out
    err = _relative(entk, k.get_ntk())
    ctx.results["empirical NTK relative error (init)"] = err
    mats = {
        "NNGP": _cosine(k.nngp),
        "NTK (infinite width)": _cosine(k.get_ntk()),
        f"empirical NTK, width {ctx.config.width}": _cosine(entk),
    }
    fig, axes = plt.subplots(1, 3, figsize=(12, 4.2))
    bounds = np.flatnonzero(np.diff(labels.numpy())) + 0.5
    for ax, (title, mat) in zip(axes, mats.items()):
        im = ax.imshow(mat.numpy(), cmap="viridis", interpolation="nearest", vmax=1.0)
        for b in bounds:
            ax.axhline(b, color="w", lw=0.4)
            ax.axvline(b, color="w", lw=0.4)
        ax.set_title(title, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03)
    within, across = _block_means(mats["NTK (infinite width)"], labels)
    return Section(
        title="Kernel matrices",
        paragraphs=[
            f"{x.shape[0]} training points sorted by class (white lines separate classes). "
            f"The empirical NTK is the finite network's (width {ctx.config.width}, seed "
            f"{ctx.config.seed}) traced over its {n_out} outputs and divided by {n_out}, "
            "comparable entry by entry with the analytic per-output NTK. Shown as "
            "k(x, x') / sqrt(k(x, x) k(x', x')), the kernel's cosine between two inputs.",
        ],
        figures=[
            Figure(
                "Kernel matrices on the same points: NNGP, NTK and the empirical NTK.",
                figure_png(fig),
                reading=(
                    f"Mean NTK cosine within a class {within:.3f} against {across:.3f} across "
                    "classes: the brighter diagonal blocks are what "
                    "kernel regression uses to classify. The empirical NTK of one random "
                    f"network differs from the analytic one by {err:.1%} (relative Frobenius "
                    "norm); the difference shrinks like width^-1/2 (see 'Finite against "
                    "infinite width')."
                ),
            )
        ],
    )


def _cosine(k: torch.Tensor) -> torch.Tensor:
    d = torch.sqrt(torch.diagonal(k))
    return k / d[:, None] / d[None, :]


def _block_means(k: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    same = labels[:, None] == labels[None, :]
    off = ~torch.eye(len(labels), dtype=torch.bool)
    return float(k[same & off].mean()), float(k[~same].mean())


def _decay_exponent(evals: np.ndarray) -> float:
    """Slope of log eigenvalue against log index over the middle of the spectrum."""
    n = len(evals)
    lo, hi = max(1, n // 50), max(3, n // 2)
    idx = np.arange(lo, hi)
    return float(np.polyfit(np.log(idx + 1), np.log(evals[idx]), 1)[0])


def spectrum_section(ctx: ReportContext) -> Section:
    """Eigenvalue spectra of the training NNGP and NTK, and label alignment."""
    k = ctx.kernel("train_train")
    y = ctx.data.y_train - ctx.data.y_train.mean(0)  # centred targets
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 3.8))
    rows = []
    captured = {}
    for name in ("nngp", "ntk"):
        with ctx.timed(f"eigendecomposition {name}"):
            evals, vecs = torch.linalg.eigh(getattr(k, name))
        evals, vecs = evals.flip(0), vecs.flip(1)
        pos = evals.clamp_min(1e-300).numpy()
        slope = _decay_exponent(pos)
        ax.loglog(np.arange(1, len(pos) + 1), pos, label=f"{name.upper()} (slope {slope:.2f})")
        share = ((vecs.T @ y) ** 2).sum(1).cumsum(0) / (y**2).sum()
        captured[name] = share
        ax2.semilogx(np.arange(1, len(share) + 1), share.numpy(), label=name.upper())
        top = {k_: float(share[min(k_, len(share)) - 1]) for k_ in (10, 100)}
        ctx.results[f"{name.upper()} label share in top 10 eigenvectors"] = top[10]
        ctx.results[f"{name.upper()} spectrum decay exponent"] = slope
        rows.append(
            [
                name.upper(),
                f"{float(evals[0]):.4g}",
                f"{float(evals[-1]):.4g}",
                f"{float(evals[0] / evals[-1]):.3g}",
                f"{slope:.2f}",
                f"{top[10]:.3f}",
                f"{top[100]:.3f}",
            ]
        )
    ax.set_xlabel("index")
    ax.set_ylabel("eigenvalue")
    ax.legend(fontsize=8)
    ax.set_title("Spectrum of the training kernel")
    ax2.set_xlabel("number of top eigenvectors k")
    ax2.set_ylabel("share of ||Y||^2 captured")
    ax2.set_ylim(0, 1.02)
    ax2.legend(fontsize=8)
    ax2.set_title("Label alignment")
    n = len(captured["ntk"])
    half = int(torch.searchsorted(captured["ntk"], torch.tensor(0.5, dtype=torch.float64))) + 1
    return Section(
        title="Kernel spectra and label alignment",
        paragraphs=[
            "Eigenvalues of the training kernels, largest first; the decay exponent is the "
            "least-squares slope of log eigenvalue against log index over the middle of the "
            "spectrum. Label alignment: the share of the centred one-hot targets' squared "
            "norm that lies in the span of the top k eigenvectors.",
        ],
        table_header=[
            "kernel",
            "largest eigenvalue",
            "smallest eigenvalue",
            "condition number",
            "decay exponent",
            "labels in top 10",
            "labels in top 100",
        ],
        table_rows=rows,
        figures=[
            Figure(
                "Left: eigenvalues of the training kernels (log-log). Right: share of the "
                "labels captured by the top k eigenvectors.",
                figure_png(fig),
                reading=(
                    f"Half of the labels' energy lies in the top {half} of {n} NTK "
                    "eigenvectors. Gradient descent learns the component along eigenvector i "
                    "at rate proportional to its eigenvalue, so labels concentrated at the "
                    "top are learned fast and generalize; the flat tail is learned last (and "
                    "fits noise)."
                ),
            )
        ],
    )


def width_convergence_section(ctx: ReportContext) -> Section:
    """Empirical NTKs of random networks against the analytic NTK, over width."""
    cfg = ctx.config
    if ctx.make_net is None or cfg.spec is not None and _fixed_width(ctx):
        return Section(
            title="Finite against infinite width",
            paragraphs=[
                "Skipped: the spec file gives a network of fixed width. Define "
                "`make_net(width)` in it to see the convergence with width."
            ],
        )
    x, _ = heatmap_points(ctx)
    x = x[: min(100, x.shape[0])]
    analytic = ctx.net.kernel(x, progress=False).get_ntk()
    n_out = ctx.data.n_classes
    eye = torch.eye(n_out, dtype=torch.float64)
    full_err, pntk_err = [], []
    with ctx.timed("width convergence"):
        for width in cfg.widths:
            net = ctx.make_net(width)
            fe, pe = [], []
            for s in range(CONVERGENCE_SEEDS):
                model = net.module(ctx.in_shape, seed=1000 + s, dtype=torch.float64)
                full = nk.empirical_ntk(model, x, mode="full")  # (n, n, O, O)
                pntk = nk.empirical_ntk(model, x, mode="sum_logits")
                fe.append(_relative(full, analytic[:, :, None, None] * eye))
                pe.append(_relative(pntk[:, :, None, None] * eye, full))
            full_err.append(float(np.sqrt(np.mean(np.square(fe)))))
            pntk_err.append(float(np.sqrt(np.mean(np.square(pe)))))
    widths = np.asarray(cfg.widths, dtype=float)
    slope = float(np.polyfit(np.log(widths), np.log(full_err), 1)[0]) if len(widths) > 1 else 0.0
    ctx.results["empirical NTK error slope vs width"] = slope
    ctx.results[f"empirical NTK error at width {cfg.widths[-1]}"] = full_err[-1]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.loglog(widths, full_err, "o-", label="full empirical NTK vs NTK (x) I")
    ax.loglog(widths, pntk_err, "s-", label="sum-of-logits pNTK (x) I vs full empirical NTK")
    ax.loglog(widths, full_err[0] * (widths / widths[0]) ** -0.5, "k:", label="width^-1/2")
    ax.set_xlabel("width")
    ax.set_ylabel("relative Frobenius error")
    ax.legend(fontsize=8)
    rows = [[f"{int(w)}", f"{a:.4f}", f"{b:.4f}"] for w, a, b in zip(widths, full_err, pntk_err)]
    return Section(
        title="Finite against infinite width",
        paragraphs=[
            f"Empirical NTKs (mode 'full', {n_out} x {n_out} blocks) of "
            f"{CONVERGENCE_SEEDS} random networks per width on {x.shape[0]} training points, "
            "against the analytic NTK times the identity over outputs; and the sum-of-logits "
            "pseudo-NTK (one backward pass instead of one per output) against the full "
            "empirical NTK of the same network. Errors are root-mean-square over networks.",
        ],
        table_header=["width", "empirical NTK error", "sum-of-logits error"],
        table_rows=rows,
        figures=[
            Figure(
                "Relative error of finite-width kernels against width (log-log).",
                figure_png(fig),
                reading=(
                    f"The empirical NTK's error falls with slope {slope:.2f} (theory: -0.5), "
                    f"to {full_err[-1]:.1%} at width {int(widths[-1])}. The sum-of-logits "
                    f"approximation's error ({pntk_err[-1]:.1%} at the largest width) also "
                    "vanishes with width: the off-diagonal output blocks it ignores average "
                    "out."
                ),
            )
        ],
    )


def _fixed_width(ctx: ReportContext) -> bool:
    """Whether the spec's ``make_net`` ignores the width (a fixed ``net`` only)."""
    if ctx.make_net is None:
        return True
    a, b = ctx.make_net(64), ctx.make_net(128)
    return a is b
