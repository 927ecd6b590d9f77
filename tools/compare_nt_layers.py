"""Compare ntkit's newer layers with Neural Tangents 0.6.5 (JAX), digit by digit.

Not part of the test suite (it needs a separate JAX environment with neural-tangents):
    python tools/compare_nt_layers.py --nt-python /path/to/jax-venv/bin/python
Covers ConvTranspose, ConvLocal, SigmoidLike/Gabor/ExpNormalized, ImageResize/Index,
attention's positional embeddings and Aggregate; prints the largest relative difference
per family and every case above 1e-10.
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from ntkit import layers as L

ACTS = {
    "sigmoid": L.SigmoidLike(),
    "gabor": L.Gabor(),
    "expnorm": L.ExpNormalized(0.7, -0.8),
    "expclip": L.ExpNormalized(1.3, -1.0, do_clip=True),
}
MAPS = {
    "lin-up": L.ImageResize((7, 9)),
    "lin-down": L.ImageResize((3, 2)),
    "near-up": L.ImageResize((7, 9), "nearest"),
    "near-down": L.ImageResize(3, "nearest"),
    "index": L.Index(slice(None, None, 2), slice(1, 3)),
}


def ntkit_net(name: str):
    kind, *p = name.split("|")
    if kind == "convt":
        pad, k, s, param = p[0].lower(), int(p[1]), int(p[2]), p[3]
        return L.serial(
            L.ConvTranspose(
                3, k, stride=s, padding=pad, w_std=1.3, b_std=0.2, parameterization=param
            ),
            L.ReLU(),
            L.ConvTranspose(3, k, stride=s, padding=pad, w_std=0.9, parameterization=param),
        )
    if kind == "local":
        pad, k, s, param, pool = p[0].lower(), int(p[1]), int(p[2]), p[3], p[4]
        return L.serial(
            L.ConvLocal(3, k, stride=s, padding=pad, w_std=1.3, b_std=0.2, parameterization=param),
            L.ReLU(),
            L.ConvLocal(3, 2, padding=pad, w_std=0.9, b_std=0.1, parameterization=param),
            L.Erf(),
            L.GlobalAvgPool() if pool == "gap" else L.Flatten(),
            L.Dense(1, parameterization=param),
        )
    if kind == "act":
        act, param = ACTS[p[0]], p[1]
        return L.serial(
            L.Conv(3, 2, padding="same", w_std=1.3, b_std=0.2, parameterization=param),
            act,
            L.Conv(3, 2, padding="same", w_std=0.9, parameterization=param),
            act,
            L.GlobalAvgPool(),
            L.Dense(1, b_std=0.1, parameterization=param),
        )
    if kind == "map":
        layer, first = MAPS[p[0]], p[1] == "True"
        body = [L.Conv(3, 2, padding="same", w_std=1.3, b_std=0.2), L.ReLU()]
        body = [layer, *body] if first else [*body, layer]
        return L.serial(*body, L.Conv(3, 1), L.ReLU(), L.GlobalAvgPool(), L.Dense(1))
    if kind == "posemb":
        att = L.GlobalSelfAttention(
            4,
            2,
            4,
            qk_std=0.8,
            ov_std=1.1,
            b_std=0.1,
            pos_emb=p[0],
            pos_emb_std=0.7,
            pos_emb_decay=None if p[1] == "none" else (lambda d: torch.exp(-d / 3)),
            pos_emb_p_norm=1.5,
            pos_emb_channels=5 if p[0] == "concat" else None,
            value_pos_emb=p[2] == "True",
        )
        return L.serial(
            L.Conv(3, 2, padding="same", w_std=1.3, b_std=0.2),
            att,
            L.ReLU(),
            L.GlobalAvgPool(),
            L.Dense(1),
        )
    param = p[0]
    return L.serial(
        L.Conv(8, 1, b_std=0.1, parameterization=param),
        L.Aggregate(),
        L.ReLU(),
        L.Conv(8, 1, w_std=1.2, parameterization=param),
        L.Aggregate(),
        L.Erf(),
        L.GlobalSumPool(),
        L.Dense(1, parameterization=param),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--nt-python", required=True, help="python of a neural-tangents venv")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    data = {
        "s1": rng.standard_normal((3, 2, 5)),
        "s2": rng.standard_normal((2, 2, 5)),
        "i1": rng.standard_normal((3, 2, 5, 4)),
        "i2": rng.standard_normal((2, 2, 5, 4)),
        "g1": rng.standard_normal((3, 3, 6)),
        "g2": rng.standard_normal((2, 3, 6)),
        "a1": (rng.random((3, 6, 6)) < 0.4) + 0.5 * np.eye(6),
        "a2": (rng.random((2, 6, 6)) < 0.4) + 0.5 * np.eye(6),
    }
    with tempfile.TemporaryDirectory() as tmp:
        inp, out = Path(tmp) / "in.npz", Path(tmp) / "out.npz"
        np.savez(inp, **data)
        side = Path(__file__).with_name("nt_layers_side.py")
        subprocess.run([args.nt_python, str(side), str(inp), str(out)], check=True)
        ref = dict(np.load(out))
    t = {k: torch.tensor(v) for k, v in data.items()}
    worst: dict[str, float] = defaultdict(float)
    count: dict[str, int] = defaultdict(int)
    for key in sorted(k for k in ref if k.endswith("|nngp")):
        name = key[: -len("|nngp")]
        net = ntkit_net(name)
        kind = name.split("|")[0]
        if kind == "graph":
            got = net.kernel(L.Graphs(t["g1"], t["a1"]), L.Graphs(t["g2"], t["a2"]))
        else:
            x1, x2 = (t["s1"], t["s2"]) if kind == "convt" else (t["i1"], t["i2"])
            got = net.kernel(x1, x2)
        for part, value in (("nngp", got.nngp), ("ntk", got.ntk)):
            r = ref[f"{name}|{part}"]
            err = float(np.abs(r - value.numpy()).max() / np.abs(r).max())
            family = kind if kind != "map" else f"map {name.split('|')[1]}"
            worst[family] = max(worst[family], err)
            count[family] += 1
            if err > 1e-10:
                print(f"  {name} {part}: {err:.2e}")
    for family in sorted(worst):
        print(
            f"{family:16s} {count[family]:3d} comparisons, largest relative difference "
            f"{worst[family]:.1e}"
        )


if __name__ == "__main__":
    main()
