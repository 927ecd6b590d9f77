"""Runs inside an environment with neural-tangents (JAX): kernels of specs from a JSON file.

Usage: python nt_side.py IN.npz SPECS.json OUT.npz  (float64 via jax_enable_x64)
"""

import json
import sys

import jax

jax.config.update("jax_enable_x64", True)
import numpy as np  # noqa: E402
from neural_tangents import stax  # noqa: E402

ACT = {
    "ReLU": lambda: stax.Relu(),
    "Erf": lambda a=1.0, b=1.0, c=0.0: stax.Erf(a, b, c),
    "GELU": lambda: stax.Gelu(),
    "LeakyReLU": lambda alpha: stax.LeakyRelu(alpha),
    "ABReLU": lambda a, b: stax.ABRelu(a, b),
    "Abs": lambda: stax.Abs(),
    "Sin": lambda a=1.0, b=1.0, c=0.0: stax.Sin(a, b, c),
    "Cos": lambda a=1.0, b=1.0, c=0.0: stax.Cos(a, b, c),
    "RBF": lambda gamma=1.0: stax.Rbf(gamma),
    "Exp": lambda a=1.0, b=1.0: stax.Exp(a, b),
    "Gaussian": lambda a=1.0, b=-1.0: stax.Gaussian(a, b),
    "Sign": lambda: stax.Sign(),
    "Monomial": lambda n: stax.Monomial(n),
    "RectifiedMonomial": lambda n: stax.RectifiedMonomial(n),
    "Polynomial": lambda coef: stax.Polynomial(coef),
}


def build(spec):
    kind = spec[0]
    if kind == "Dense":
        _, width, w, b, param = spec
        return stax.Dense(width, W_std=w, b_std=b, parameterization=param)
    if kind == "serial":
        return stax.serial(*[build(s) for s in spec[1]])
    if kind == "parallel":
        return stax.parallel(*[build(s) for s in spec[1]])
    if kind == "FanOut":
        return stax.FanOut(spec[1])
    if kind == "FanInSum":
        return stax.FanInSum()
    if kind == "FanInProd":
        return stax.FanInProd()
    if kind == "FanInConcat":
        return stax.FanInConcat()
    if kind == "Identity":
        return stax.Identity()
    return ACT[kind](*spec[1:])


def main():
    data = np.load(sys.argv[1])
    specs = json.load(open(sys.argv[2]))
    out = {}
    for i, spec in enumerate(specs):
        _, _, kernel_fn = build(spec)
        try:
            k = kernel_fn(data["x1"], data["x2"], ("nngp", "ntk"))
            out[f"nngp{i}"], out[f"ntk{i}"] = np.asarray(k[0]), np.asarray(k[1])
            ks = kernel_fn(data["x1"], None, ("nngp", "ntk"))
            out[f"snngp{i}"], out[f"sntk{i}"] = np.asarray(ks[0]), np.asarray(ks[1])
        except Exception as err:  # noqa: BLE001
            out[f"error{i}"] = np.array(repr(err))
    np.savez(sys.argv[3], **out)


main()
