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
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

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
def options_checked(option: str | None = None, *, fields: Iterable[str] = ()) -> Iterator[None]:
    """Turn ``ValueError``/``TypeError`` raised while checking options into usage errors.

    Args:
        option: The option to name; ``None`` names the one whose Python name (one of
            ``fields``, e.g. ``"n_train"`` for ``--n-train``) begins the message, if any.
        fields: Python names of the options checked in the block.
    """
    try:
        yield
    except (ValueError, TypeError) as err:
        message = str(err)
        first = message.split(" ", 1)[0].rstrip(":,")
        if option is None and first in set(fields):
            option = "--" + first.replace("_", "-")
        raise usage_error(message, option) from err


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


def _shape(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        shape = tuple(int(v) for v in text.split(","))
    except ValueError:
        shape = ()
    if not shape or min(shape) < 1:
        raise usage_error(f"expected sizes like 1,8,8; got {text!r}.", "--input-shape")
    return shape


@app.command()
def report(
    out: Annotated[Path, typer.Option(help="Folder for report.html.")] = Path("report"),
    spec: Annotated[
        Path | None,
        typer.Option(
            help="Python file defining `net = L.serial(...)` or `make_net(width)`, and "
            "optionally `input_shape` (L is ntkit.layers). Default: an MLP (--depth, --width)."
        ),
    ] = None,
    data: Annotated[
        Path | None,
        typer.Option(
            help="Data file: .csv or .npy (one example per row, label in the last column) or "
            ".npz (arrays x, y). Default: scikit-learn's bundled 8x8 digits."
        ),
    ] = None,
    input_shape: Annotated[
        str | None, typer.Option(help="Reshape each example, e.g. 1,8,8 for a CNN on digits.")
    ] = None,
    n_train: Annotated[
        int | None, typer.Option(help="Training examples (default 1000; 300 with --quick).")
    ] = None,
    n_test: Annotated[
        int | None, typer.Option(help="Test examples (default 500; 200 with --quick).")
    ] = None,
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
    max_steps: Annotated[
        int | None,
        typer.Option(
            help="Most gradient-descent steps of the finite network "
            "(default 3000; 300 with --quick)."
        ),
    ] = None,
    seed: Annotated[int, typer.Option(min=0, help="Seed of the split and of finite networks.")] = 0,
    quick: Annotated[
        bool, typer.Option(help="Smaller sizes everywhere (about 20 s on 2 cores).")
    ] = False,
    progress: Annotated[bool, typer.Option(help="Show progress while computing.")] = True,
) -> None:
    """Kernels of a network on a dataset, and what they predict: one HTML page.

    Computes the infinite-width NNGP and NTK (float64) of the network (an MLP in NTK
    parameterization, or --spec) on a random train/test split of the data (the bundled
    digits, or --data), the empirical NTK of the finite network, and writes OUT/report.html:
    kernel heatmaps, spectra and label alignment, kernel regression and GP accuracy, the
    trained finite network against the NTK's prediction, the convergence of empirical to
    analytic NTKs with width, timings and provenance. One to three minutes on 2 cores.
    """
    from rich.console import Console

    from ntkit.report import ReportConfig, ReportContext, run_report

    writable_folder(out)
    given = dict(n_train=n_train, n_test=n_test, max_steps=max_steps)
    options: dict[str, Any] = dict(
        depth=depth,
        width=width,
        w_std=w_std,
        b_std=b_std,
        activation=activation,
        ridge_relative=ridge_relative,
        seed=seed,
        spec=spec,
        data=data,
        input_shape=_shape(input_shape),
        **{k: v for k, v in given.items() if v is not None},
    )
    with options_checked(fields=ReportConfig.__dataclass_fields__):
        config = ReportConfig.quick_defaults(**options) if quick else ReportConfig(**options)
        ctx = ReportContext(config, command=" ".join(["ntkit", *sys.argv[1:]]))
    ctx, _sections, path = run_report(ctx, out, progress=progress)
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

    polynomial: Wu et al. 2022, NTK spectra with Hadamard products; polynomial extrapolation.

    sample-then-optimize: Dai et al. 2022, posterior samples by training; Thompson sampling.

    label-aware: Chen, He & Su 2020, label-aware NTKs (HR, NTH) and local elasticity.

    complex: Tan et al. 2022, block NTKs of complex networks and their infinite-width limit.

    adversarial-features: Tsilivis & Kempe 2022, robustness of the NTK's eigen-features.

    super-consistency: Noci et al. 2024, sharpness trajectories under muP and NTK parameterization.

    ntk-evolution-adversarial: Loo et al. 2022, the empirical NTK under adversarial training.
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


# ntkit kernel SPEC INPUTS --out k.zarr (implementation in ntkit.tiling.cli, imports lazily)
from ntkit.tiling.cli import kernel as _kernel_command  # noqa: E402

app.command("kernel")(_kernel_command)


if __name__ == "__main__":  # pragma: no cover
    main()
