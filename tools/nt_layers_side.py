"""Neural Tangents side of tools/compare_nt_layers.py (runs in a JAX environment).

Usage: python nt_layers_side.py IN.npz OUT.npz. Inputs are channels-first in IN.npz and are
moved to channels-last here; every architecture mirrors one in compare_nt_layers.py.
"""

import sys

import jax

jax.config.update("jax_enable_x64", True)
import numpy as np  # noqa: E402
from neural_tangents import stax  # noqa: E402


def last(x):
    return np.moveaxis(x, 1, -1)


def conv_t(pad, k, s, param):
    return stax.serial(
        stax.ConvTranspose(3, (k,), (s,), pad, W_std=1.3, b_std=0.2, parameterization=param),
        stax.Relu(),
        stax.ConvTranspose(3, (k,), (s,), pad, W_std=0.9, parameterization=param),
    )


def conv_local(pad, k, s, param, pool):
    return stax.serial(
        stax.ConvLocal(3, (k, k), (s, s), pad, W_std=1.3, b_std=0.2, parameterization=param),
        stax.Relu(),
        stax.ConvLocal(3, (2, 2), (1, 1), pad, W_std=0.9, b_std=0.1, parameterization=param),
        stax.Erf(),
        stax.GlobalAvgPool() if pool == "gap" else stax.Flatten(),
        stax.Dense(1, parameterization=param),
    )


def activation(act, param):
    return stax.serial(
        stax.Conv(3, (2, 2), (1, 1), "SAME", W_std=1.3, b_std=0.2, parameterization=param),
        act,
        stax.Conv(3, (2, 2), (1, 1), "SAME", W_std=0.9, parameterization=param),
        act,
        stax.GlobalAvgPool(),
        stax.Dense(1, b_std=0.1, parameterization=param),
    )


def spatial_map(layer, first):
    body = [stax.Conv(3, (2, 2), (1, 1), "SAME", W_std=1.3, b_std=0.2), stax.Relu()]
    body = [layer, *body] if first else [*body, layer]
    return stax.serial(
        *body, stax.Conv(3, (1, 1)), stax.Relu(), stax.GlobalAvgPool(), stax.Dense(1)
    )


def graph(param):
    return stax.serial(
        stax.Conv(8, (1,), b_std=0.1, parameterization=param),
        stax.Aggregate(aggregate_axis=1),
        stax.Relu(),
        stax.Conv(8, (1,), W_std=1.2, parameterization=param),
        stax.Aggregate(aggregate_axis=1),
        stax.Erf(),
        stax.GlobalSumPool(),
        stax.Dense(1, parameterization=param),
    )


def main():
    d = np.load(sys.argv[1])
    out = {}

    def run(name, layer, x1, x2, **kw):
        kernel_fn = layer[2]
        k = kernel_fn(last(x1), last(x2), ("nngp", "ntk"), **kw)
        out[name + "|nngp"], out[name + "|ntk"] = np.asarray(k[0]), np.asarray(k[1])

    for pad in ("VALID", "SAME", "CIRCULAR"):
        for k, s in ((3, 2), (2, 3), (4, 2), (3, 1), (5, 2)):
            for param in ("ntk", "standard"):
                run(f"convt|{pad}|{k}|{s}|{param}", conv_t(pad, k, s, param), d["s1"], d["s2"])
        for k, s in ((3, 1), (2, 2)):
            for param in ("ntk", "standard"):
                for pool in ("gap", "flat"):
                    run(
                        f"local|{pad}|{k}|{s}|{param}|{pool}",
                        conv_local(pad, k, s, param, pool),
                        d["i1"],
                        d["i2"],
                    )
    acts = {
        "sigmoid": stax.Sigmoid_like(),
        "gabor": stax.Gabor(),
        "expnorm": stax.ExpNormalized(0.7, -0.8),
        "expclip": stax.ExpNormalized(1.3, -1.0, True),
    }
    for name, act in acts.items():
        for param in ("ntk", "standard"):
            run(f"act|{name}|{param}", activation(act, param), d["i1"], d["i2"])
    maps = {
        "lin-up": stax.ImageResize((-1, 7, 9, -1), "linear"),
        "lin-down": stax.ImageResize((-1, 3, 2, -1), "linear"),
        "near-up": stax.ImageResize((-1, 7, 9, -1), "nearest"),
        "near-down": stax.ImageResize((-1, 3, 3, -1), "nearest"),
        "index": stax.Index(idx=stax.Slice[:, ::2, 1:3, :]),
    }
    for name, layer in maps.items():
        for first in (True, False):
            run(f"map|{name}|{first}", spatial_map(layer, first), d["i1"], d["i2"])
    import jax.numpy as jnp

    for kind in ("SUM", "CONCAT"):
        for decay in ("none", "exp"):
            for val in (False, True):
                att = stax.GlobalSelfAttention(
                    4,
                    4,
                    4,
                    2,
                    linear_scaling=True,
                    W_query_std=0.8,
                    W_value_std=1.1,
                    b_std=0.1,
                    pos_emb_type=kind,
                    pos_emb_p_norm=1.5,
                    W_pos_emb_std=0.7,
                    pos_emb_decay_fn=None if decay == "none" else (lambda d: jnp.exp(-d / 3)),
                    val_pos_emb=val,
                    n_chan_pos_emb=5 if kind == "CONCAT" else None,
                )
                net = stax.serial(
                    stax.Conv(3, (2, 2), (1, 1), "SAME", W_std=1.3, b_std=0.2),
                    att,
                    stax.Relu(),
                    stax.GlobalAvgPool(),
                    stax.Dense(1),
                )
                run(f"posemb|{kind.lower()}|{decay}|{val}", net, d["i1"], d["i2"])
    for param in ("ntk", "standard"):
        run(f"graph|{param}", graph(param), d["g1"], d["g2"], pattern=(d["a1"], d["a2"]))
    np.savez(sys.argv[2], **out)


main()
