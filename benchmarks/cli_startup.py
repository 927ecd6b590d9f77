"""Wall time of ``ntkit --help`` (target < 0.5 s), against Python itself and ``import torch``.

Every command line runs ``--repeats`` times in a fresh process (the OS file cache warm after
a first unmeasured run); the table gives the median and the fastest run, and ratios to a
bare ``python -c pass`` measured in the same session. ``ntkit --help`` must not import torch:
the last row shows what it would cost if it did.

    python benchmarks/cli_startup.py [--repeats 10]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

CASES = {
    "python -c pass": [sys.executable, "-c", "pass"],
    "ntkit --help": [sys.executable, "-m", "ntkit", "--help"],
    "ntkit --version": [sys.executable, "-m", "ntkit", "--version"],
    "ntkit report --help": [sys.executable, "-m", "ntkit", "report", "--help"],
    "python -c 'import torch'": [sys.executable, "-c", "import torch"],
}


def wall_times(cmd: list[str], repeats: int) -> list[float]:
    """Seconds of ``repeats`` runs of ``cmd`` after one warm-up run."""
    subprocess.run(cmd, capture_output=True, check=True)
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(cmd, capture_output=True, check=True)
        out.append(time.perf_counter() - start)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    rows = {name: wall_times(cmd, args.repeats) for name, cmd in CASES.items()}
    base = statistics.median(rows["python -c pass"])
    print(f"| command | median | fastest | median / python -c pass |  ({args.repeats} runs)")
    print("|---|---|---|---|")
    for name, times in rows.items():
        med = statistics.median(times)
        print(f"| `{name}` | {med:.3f} s | {min(times):.3f} s | {med / base:.1f}x |")
    help_s = statistics.median(rows["ntkit --help"])
    print(
        f"\nntkit --help: {help_s:.3f} s median (target < 0.5 s): "
        + ("met" if help_s < 0.5 else "MISSED")
    )


if __name__ == "__main__":
    main()
