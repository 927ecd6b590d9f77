"""The ``ntkit`` command line."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(
    help="ntkit: neural tangent kernels for PyTorch.", no_args_is_help=True, add_completion=False
)


@app.callback()
def _main() -> None:
    """ntkit: neural tangent kernels for PyTorch."""


@app.command()
def report(
    out: Annotated[Path, typer.Option(help="Folder for report.html.")] = Path("report"),
    n_train: Annotated[
        int, typer.Option(help="Training examples (digits: at most 1797 in all).")
    ] = 1000,
    n_test: Annotated[int, typer.Option(help="Test examples.")] = 500,
    depth: Annotated[
        int, typer.Option(help="Number of Dense layers of the MLP (readout included).")
    ] = 3,
    width: Annotated[int, typer.Option(help="Hidden width of the finite networks.")] = 512,
    w_std: Annotated[float, typer.Option(help="Weight standard deviation sigma_w.")] = 1.5,
    b_std: Annotated[float, typer.Option(help="Bias standard deviation sigma_b.")] = 0.05,
    activation: Annotated[str, typer.Option(help="relu, erf or gelu.")] = "relu",
    ridge_relative: Annotated[
        float, typer.Option(help="Ridge as a multiple of mean diag(K).")
    ] = 0.0,
    seed: Annotated[int, typer.Option(help="Seed of the split and of finite networks.")] = 0,
) -> None:
    """Kernels of a default MLP on scikit-learn's bundled digits, and what they predict.

    Computes the infinite-width NNGP and NTK (float64) of an MLP in NTK parameterization on
    a random train/test split, solves kernel regression on one-hot labels, and writes
    OUT/report.html with the results, the kernels' spectra and timings.
    """
    from ntkit.report import ReportConfig, run_report

    config = ReportConfig(
        n_train=n_train,
        n_test=n_test,
        depth=depth,
        width=width,
        w_std=w_std,
        b_std=b_std,
        activation=activation,
        ridge_relative=ridge_relative,
        seed=seed,
    )
    try:
        ctx, _sections, path = run_report(config, out)
    except ValueError as err:
        raise typer.BadParameter(str(err)) from err
    console = Console()
    table = Table(title="ntkit report")
    table.add_column("result")
    table.add_column("value", justify="right")
    for key, value in ctx.results.items():
        table.add_row(key, f"{value:.4g}")
    for key, value in ctx.timings.items():
        table.add_row(f"time: {key} (s)", f"{value:.3f}")
    console.print(table)
    console.print(f"report written to {path}")


@app.command()
def reproduce(
    name: Annotated[str, typer.Argument(help="An experiment listed above.")],
    out: Annotated[Path, typer.Option(help="Folder for NAME.html.")] = Path("report"),
    quick: Annotated[bool, typer.Option(help="Fewer widths and seeds (seconds).")] = False,
    seed: Annotated[int, typer.Option(help="Seed of data split and networks.")] = 0,
) -> None:
    """Reproduce a seed paper's claim at small scale and write OUT/NAME.html.

    ntk-convergence: Jacot et al. 2018, NTK convergence and lazy training.

    pntk: Mohamadi, Bae & Sutherland 2023, the sum-of-logits pseudo-NTK.

    min-eigenvalue: Bombari, Amani & Mondelli 2022, smallest NTK eigenvalue against P / N.

    curves: Wang, Buchanan, Gilboa & Wright 2021, deep NTKs localize; two curves.

    polynomial: Wu et al. 2022, NTK spectra with Hadamard-product layers.

    sample-then-optimize: Dai et al. 2022, posterior samples by training; Thompson sampling.

    label-aware: Chen, He & Su 2020, label-aware NTKs (HR, NTH) and local elasticity.

    complex: Tan et al. 2022, block NTKs of complex networks and their infinite-width limit.
    """
    from ntkit.reproduce import reproduce as run

    try:
        results = run(name, out, quick=quick, seed=seed)
    except ValueError as err:
        raise typer.BadParameter(str(err)) from err
    table = Table(title=f"ntkit reproduce {name}")
    table.add_column("result")
    table.add_column("value", justify="right")
    for key, value in results.items():
        table.add_row(key, f"{value:.4g}")
    Console().print(table)
    Console().print(f"written to {Path(out) / (name + '.html')}")


if __name__ == "__main__":  # pragma: no cover
    app()
