"""Digit-by-digit comparison of ntkit's analytic kernels with Neural Tangents (JAX).

Not part of the test suite (it needs a separate JAX environment with neural-tangents):
    python tools/compare_neural_tangents.py --nt-python /path/to/jax-venv/bin/python [--n 200]
Draws random architectures, computes both libraries' NNGP and NTK in float64 and prints the
largest relative differences (off-diagonal and diagonal of the x2=None kernel separately).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import torch

from ntkit import layers as L

ACTS = [
    ["ReLU"],
    ["Erf", 1.3, 0.7, 0.2],
    ["GELU"],
    ["LeakyReLU", 0.1],
    ["ABReLU", -0.4, 1.2],
    ["Abs"],
    ["Sin", 1.1, 0.9, 0.3],
    ["Cos", 0.8, 1.2, 0.1],
    ["RBF", 0.6],
    ["Exp", 0.7, 0.4],
    ["Gaussian", 1.1, -0.7],
    ["Sign"],
    ["Monomial", 2],
    ["Monomial", 3],
    ["RectifiedMonomial", 2],
    ["Polynomial", [0.2, -0.8, 0.3, 0.1]],
]


def to_ntkit(spec):
    kind = spec[0]
    if kind == "Dense":
        _, width, w, b, param = spec
        return L.Dense(width, w, b, parameterization=param)
    if kind == "serial":
        return L.serial(*[to_ntkit(s) for s in spec[1]])
    if kind == "parallel":
        return L.parallel(*[to_ntkit(s) for s in spec[1]])
    if kind == "FanOut":
        return L.FanOut(spec[1])
    simple = {
        "FanInSum": L.FanInSum,
        "FanInProd": L.FanInProd,
        "FanInConcat": L.FanInConcat,
        "Identity": L.Identity,
    }
    if kind in simple:
        return simple[kind]()
    return getattr(L, kind)(*spec[1:])


def random_spec(g: np.random.Generator):
    param = "standard" if g.random() < 0.25 else "ntk"

    def dense(width=None):
        b = None if g.random() < 0.3 else float(g.uniform(0, 0.6))
        return ["Dense", int(width or g.integers(3, 40)), float(g.uniform(0.5, 2.0)), b, param]

    layers = [dense()]
    for _ in range(int(g.integers(1, 4))):
        act = ACTS[int(g.integers(len(ACTS)))]
        kind = g.random()
        w = int(g.integers(3, 40))
        if kind < 0.55:
            layers += [act, dense()]
        elif kind < 0.75:  # residual block on a Gaussian stream
            layers += [
                dense(w),
                ["FanOut", 2],
                ["parallel", [["Identity"], ["serial", [act, dense(w)]]]],
                ["FanInSum"],
            ]
        elif kind < 0.9:
            layers += [
                act,
                ["FanOut", 2],
                ["parallel", [dense(w), dense(w)]],
                ["FanInProd"],
                dense(),
            ]
        else:
            layers += [
                act,
                ["FanOut", 2],
                ["parallel", [dense(), dense()]],
                ["FanInConcat"],
                dense(),
            ]
    layers.append(dense(int(g.integers(1, 5))))
    return ["serial", layers]


def rel(a, b):
    scale = np.maximum(np.abs(b), 1e-300)
    return float(np.max(np.abs(a - b) / scale))


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--nt-python", required=True)
    parser.add_argument("--n", type=int, default=100, help="number of random architectures")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    g = np.random.default_rng(args.seed)
    x1, x2 = g.standard_normal((6, 5)), g.standard_normal((4, 5))
    specs = [random_spec(g) for _ in range(args.n)]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        np.savez(tmp / "in.npz", x1=x1, x2=x2)
        (tmp / "specs.json").write_text(json.dumps(specs))
        side = Path(__file__).with_name("nt_side.py")
        subprocess.run(
            [
                args.nt_python,
                str(side),
                str(tmp / "in.npz"),
                str(tmp / "specs.json"),
                str(tmp / "out.npz"),
            ],
            check=True,
        )
        ref = dict(np.load(tmp / "out.npz"))
    worst = []
    for i, spec in enumerate(specs):
        net = to_ntkit(spec)
        try:
            k = net.kernel(torch.tensor(x1), torch.tensor(x2))
            ks = net.kernel(torch.tensor(x1))
        except ValueError as err:
            status = "NT error too" if f"error{i}" in ref else "NT computes it"
            print(f"[{i}] ntkit refuses ({status}): {str(err)[:120]}")
            continue
        if f"error{i}" in ref:
            print(f"[{i}] NT error, ntkit computes: {str(ref[f'error{i}'])[:120]}")
            continue
        if any(np.isnan(ref[f"{t}{i}"]).any() for t in ("nngp", "ntk", "snngp", "sntk")):
            print(
                f"[{i}] NT returns NaN (e.g. RectifiedMonomial on identical inputs); ntkit "
                f"finite: {bool(torch.isfinite(k.ntk).all() and torch.isfinite(ks.ntk).all())}"
            )
            continue
        off = max(rel(k.nngp.numpy(), ref[f"nngp{i}"]), rel(k.ntk.numpy(), ref[f"ntk{i}"]))
        diag = max(
            rel(np.diag(ks.ntk.numpy()), np.diag(ref[f"sntk{i}"])),
            rel(np.diag(ks.nngp.numpy()), np.diag(ref[f"snngp{i}"])),
        )
        worst.append((off, diag, i))
    worst.sort(reverse=True)
    print(f"compared {len(worst)} architectures")
    for off, diag, i in worst[:10]:
        print(f"[{i}] max rel diff x1-x2: {off:.2e}, diagonal of x1-x1: {diag:.2e}  {specs[i]}")


if __name__ == "__main__":
    main()
