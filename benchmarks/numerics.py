"""Exact activations and gradients: ``Elementwise(tanh)`` against ``Erf``; kernel gradients.

Cases, each in a fresh process (baselines in the same session):

- a depth-3 tanh MLP kernel (NNGP + NTK) at n = 2000 through ``Elementwise(torch.tanh)``
  (tolerance 1e-8; its Hermite table is built once per process, timed separately), against
  the same network with the closed-form ``Erf`` (target: at most 5x);
- the gradient of a 500 x 500 FC kernel with respect to the inputs (forward + backward)
  against its forward alone (target: at most 3x).

Usage: ``python benchmarks/numerics.py [--n 2000] [--write]``.
"""

from __future__ import annotations

import argparse
import datetime
from pathlib import Path

import torch
from _measure import machine, run_case

TANH_SETUP = """
from ntkit import layers as L
torch.manual_seed(0)
n, d = {n}, 784
x = torch.randn(n, d, dtype=torch.float64)

def mlp(act):
    layers = []
    for _ in range(3):
        layers += [L.Dense(512, 1.5, 0.05), act]
    return L.serial(*layers, L.Dense(10, 1.5, 0.05))

erf = mlp(L.Erf())
tanh = mlp(L.Elementwise(torch.tanh))
tanh.kernel(x[:4])  # build the Hermite tables (once per process)
"""

TABLE_SETUP = """
from ntkit import layers as L
x = torch.randn(4, 10, dtype=torch.float64)
"""

GRAD_SETUP = """
from ntkit import layers as L
torch.manual_seed(0)
x = torch.randn(500, 784, dtype=torch.float64)
net = L.serial(L.Dense(512, 1.5, 0.05), L.ReLU(), L.Dense(512, 1.5, 0.05), L.ReLU(),
               L.Dense(10, 1.5, 0.05))

def grad():
    xr = x.clone().requires_grad_(True)
    k = net.kernel(xr)
    (k.ntk.sum() + k.nngp.sum()).backward()
    return xr.grad
"""

CASES = [
    ("tanh MLP, closed-form Erf (baseline)", TANH_SETUP, "erf.kernel(x)"),
    ("tanh MLP, Elementwise(torch.tanh), rtol 1e-8", TANH_SETUP, "tanh.kernel(x)"),
    (
        "Elementwise(torch.tanh) table build (once per process)",
        TABLE_SETUP,
        "L.serial(L.Dense(3), L.Elementwise(lambda t: torch.tanh(t))).kernel(x)",
    ),
    ("500 x 500 FC kernel forward (baseline)", GRAD_SETUP, "net.kernel(x)"),
    ("500 x 500 FC kernel forward + backward", GRAD_SETUP, "grad()"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--write", action="store_true", help="write docs/benchmarks/numerics.md")
    args = parser.parse_args()
    lines = [
        f"`python benchmarks/numerics.py --n {args.n}` on {machine()}, torch "
        f"{torch.__version__}, {datetime.date.today()}, on a busy shared machine (ratios "
        "are measured in the same session). Each case in a fresh process; time: best of "
        "2 calls; peak: increase of the resident-set peak over the process after setup.",
        "",
        "| case | time (s) | ratio to baseline | peak memory increase (GiB) |",
        "|---|---|---|---|",
    ]
    baseline = None
    for name, setup, stmt in CASES:
        res = run_case(setup.format(n=args.n), stmt, repeats=2)
        if "baseline" in name:
            baseline = res["seconds"]
        ratio = res["seconds"] / baseline if baseline and "table" not in name else float("nan")
        row = f"| {name} | {res['seconds']:.3f} | {ratio:.2f} | {res['peak_bytes'] / 2**30:.2f} |"
        print(row, flush=True)
        lines.append(row)
    if args.write:
        path = Path(__file__).resolve().parents[1] / "docs" / "benchmarks" / "numerics.md"
        path.write_text("# Numerics benchmark\n\n" + "\n".join(lines) + "\n")
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
