"""The ``ntkit`` command line.

Commands import torch and the heavy parts of ntkit inside their bodies, so ``ntkit --help``
answers at once. Add a command with ``@app.command()`` on a function whose body imports what
it needs; its errors are handled by :func:`run`:

- usage errors (a bad option value; raise :func:`usage_error`, or let ``ValueError`` /
  ``TypeError`` escape a ``with options_checked():`` block) print one line and exit 2;
- failures (any other exception) print one line and exit 1 (``NTKIT_TRACEBACK=1`` shows the
  traceback instead).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

import ntkit

app = typer.Typer(
    help="ntkit: neural tangent kernels for PyTorch.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

#: Exit status of a command whose options were wrong (as click) and of a failed command.
EXIT_USAGE, EXIT_FAILURE = 2, 1


def usage_error(message: str, option: str | None = None) -> typer.BadParameter:
    """A usage error (exit 2) naming ``option`` (e.g. ``"--n-train"``); raise it."""
    return typer.BadParameter(message, param_hint=f"'{option}'" if option else None)


@contextmanager
def options_checked(option: str | None = None) -> Iterator[None]:
    """Turn ``ValueError``/``TypeError`` raised while checking options into usage errors."""
    try:
        yield
    except (ValueError, TypeError) as err:
        raise usage_error(str(err), option) from err


def writable_folder(out: Path, option: str = "--out") -> Path:
    """Check (and create) the output folder before any work; a usage error names ``option``."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise usage_error(f"{str(out)!r} exists and is not a folder.", option)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise usage_error(f"cannot create folder {str(out)!r}: {err.strerror}.", option) from err
    if not os.access(out, os.W_OK | os.X_OK):
        raise usage_error(f"folder {str(out)!r} is not writable.", option)
    return out


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _command_name(argv: Sequence[str]) -> str:
    """``"ntkit NAME"`` for the first argument that names a command, else ``"ntkit"``."""
    names = {c.name or c.callback.__name__ for c in app.registered_commands if c.callback}
    for arg in argv:
        if arg in names:
            return f"ntkit {arg}"
    return "ntkit"


def run(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``argv`` (default: ``sys.argv[1:]``); return the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = typer.main.get_command(app)
    try:
        result = command.main(args=argv, prog_name="ntkit", standalone_mode=False)
    except typer.TyperException as err:  # click's usage and parameter errors
        if type(err).__name__ == "NoArgsIsHelpError":
            typer.echo(command.get_help(err.ctx) if err.ctx else str(err))  # type: ignore[attr-defined]
            return 0
        where = getattr(getattr(err, "ctx", None), "command_path", None) or _command_name(argv)
        hint = f" (see '{where} --help')" if err.exit_code == EXIT_USAGE else ""
        typer.echo(f"{where}: error: {_one_line(err.format_message())}{hint}", err=True)
        return int(err.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        typer.echo(f"{_command_name(argv)}: aborted", err=True)
        return 130
    except typer.Exit as err:
        return int(err.exit_code)
    except Exception as err:
        if os.environ.get("NTKIT_TRACEBACK"):
            raise
        kind = "" if isinstance(err, (ValueError, TypeError)) else f"{type(err).__name__}: "
        typer.echo(
            f"{_command_name(argv)}: error: {kind}{_one_line(str(err))}"
            " (NTKIT_TRACEBACK=1 shows the traceback)",
            err=True,
        )
        return EXIT_FAILURE
    return int(result) if isinstance(result, int) else 0


def main() -> None:
    """Console-script entry point: ``sys.exit(run())``."""
    sys.exit(run())


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"ntkit {ntkit.__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """ntkit: neural tangent kernels for PyTorch."""


def _results_table(title: str, results: dict[str, float], timings: dict[str, float] | None = None):
    from rich.table import Table

    table = Table(title=title)
    table.add_column("result")
    table.add_column("value", justify="right")
    for key, value in results.items():
        table.add_row(key, f"{value:.4g}")
    for key, value in (timings or {}).items():
        table.add_row(f"time: {key} (s)", f"{value:.3f}")
    return table


@app.command()
def info() -> None:
    """Versions of ntkit, torch and numpy, devices, threads and the memory budget."""
    from rich.console import Console
    from rich.table import Table

    from ntkit.environment import describe_environment

    table = Table(title="ntkit info", show_header=False)
    table.add_column("item")
    table.add_column("value")
    for key, value in describe_environment().items():
        table.add_row(key, value)
    Console().print(table)


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
    seed: Annotated[int, typer.Option(min=0, help="Seed of the split and of finite networks.")] = 0,
) -> None:
    """Kernels of a default MLP on scikit-learn's bundled digits, and what they predict.

    Computes the infinite-width NNGP and NTK (float64) of an MLP in NTK parameterization on
    a random train/test split, solves kernel regression on one-hot labels, and writes
    OUT/report.html with the results, the kernels' spectra and timings.
    """
    from rich.console import Console

    from ntkit.report import ReportConfig, run_report

    writable_folder(out)
    with options_checked():
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
    ctx, _sections, path = run_report(config, out)
    console = Console()
    console.print(_results_table("ntkit report", ctx.results, ctx.timings))
    console.print(f"report written to {path}")


@app.command()
def reproduce(
    name: Annotated[str, typer.Argument(help="An experiment listed above.")],
    out: Annotated[Path, typer.Option(help="Folder for NAME.html.")] = Path("report"),
    quick: Annotated[bool, typer.Option(help="Fewer widths and seeds (seconds).")] = False,
    seed: Annotated[int, typer.Option(min=0, help="Seed of data split and networks.")] = 0,
) -> None:
    """Reproduce a seed paper's claim at small scale and write OUT/NAME.html.

    ntk-convergence: Jacot et al. 2018, NTK convergence and lazy training.

    pntk: Mohamadi, Bae & Sutherland 2023, the sum-of-logits pseudo-NTK.

    min-eigenvalue: Bombari, Amani & Mondelli 2022, smallest NTK eigenvalue against P / N.

    curves: Wang, Buchanan, Gilboa & Wright 2021, deep NTKs localize; two curves.

    polynomial: Wu et al. 2022, NTK spectra with Hadamard-product layers.

    sample-then-optimize: Dai et al. 2022, posterior samples by training; Thompson sampling.
    """
    from rich.console import Console

    from ntkit.reproduce import EXPERIMENTS
    from ntkit.reproduce import reproduce as run_experiment

    if name not in EXPERIMENTS:
        raise usage_error(f"unknown experiment {name!r}; known: {sorted(EXPERIMENTS)}.", "NAME")
    writable_folder(out)
    results = run_experiment(name, out, quick=quick, seed=seed)
    Console().print(_results_table(f"ntkit reproduce {name}", results))
    Console().print(f"written to {Path(out) / (name + '.html')}")


if __name__ == "__main__":  # pragma: no cover
    main()
