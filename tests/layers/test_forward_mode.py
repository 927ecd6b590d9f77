"""Forward-mode AD (dual tensors) through net.kernel: JVPs against central differences.

Used by ntkit.sklearn's GP kernels for dK/dtheta (one dual pass per hyperparameter). The
custom functions with a hand-written derivative (the arc-cosine expectations, the sine gap's
square root) define ``jvp``; elsewhere torch's own forward formulas apply.
"""

import pytest
import torch
import torch.autograd.forward_ad as fwad

from ntkit import layers as L

F64 = torch.float64


def _jvp(build, value, x1, x2):
    with fwad.dual_level():
        p = fwad.make_dual(torch.tensor(value, dtype=F64), torch.tensor(1.0, dtype=F64))
        k = build(p).kernel(x1, x2)
        return (
            fwad.unpack_dual(k.nngp).tangent.clone(),
            fwad.unpack_dual(k.ntk).tangent.clone(),
        )


def _central(build, value, x1, x2, h=1e-4):
    # h = 1e-4: truncation ~h^2 = 1e-8 relative; smaller steps amplify the rounding noise
    # of nearly perfectly correlated location pairs (arc-cosine near angle 0, ~1e-11)
    up, down = build(value + h).kernel(x1, x2), build(value - h).kernel(x1, x2)
    return (up.nngp - down.nngp) / (2 * h), (up.ntk - down.ntk) / (2 * h)


CASES = [
    ("w_std relu", lambda w: L.serial(L.Dense(4, w, 0.3), L.ReLU(), L.Dense(1, w, 0.3)), 1.3),
    ("b_std relu", lambda b: L.serial(L.Dense(4, 1.2, b), L.ReLU(), L.Dense(1, 1.2, b)), 0.4),
    (
        "abrelu slope",
        lambda a: L.serial(L.Dense(4, 1.2, 0.1), L.ABReLU(a, 1.0), L.Dense(1, 1.1)),
        -0.3,
    ),
    ("w_std erf", lambda w: L.serial(L.Dense(4, w, 0.2), L.Erf(), L.Dense(1, w)), 1.4),
    (
        "w_std conv",
        lambda w: L.serial(
            L.Conv(3, 2, padding="same", w_std=w), L.ReLU(), L.GlobalAvgPool(), L.Dense(1, w)
        ),
        1.5,
    ),
]


@pytest.mark.parametrize(("name", "build", "value"), CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("symmetric", [True, False])
def test_forward_mode_matches_central_differences(name, build, value, symmetric):
    g = torch.Generator().manual_seed(0)
    shape = (1, 3, 3) if "conv" in name else (5,)
    x1 = torch.randn(4, *shape, generator=g, dtype=F64)
    x2 = None if symmetric else torch.randn(3, *shape, generator=g, dtype=F64)
    for ad, fd in zip(_jvp(build, value, x1, x2), _central(build, value, x1, x2)):
        assert torch.isfinite(ad).all()
        torch.testing.assert_close(ad, fd, rtol=1e-6, atol=1e-7 * float(fd.abs().max()))


def test_forward_mode_with_tiles_in_worker_threads():
    # several tiles and two torch threads: the driver computes dual tiles in turn (writing
    # them from two threads into one result would race on the result's tangent)
    build = CASES[0][1]
    g = torch.Generator().manual_seed(1)
    x1 = torch.randn(1000, 5, generator=g, dtype=F64)  # three 512-row tiles
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        with fwad.dual_level():
            p = fwad.make_dual(torch.tensor(1.3, dtype=F64), torch.tensor(1.0, dtype=F64))
            k = build(p).kernel(x1)
            ad = fwad.unpack_dual(k.ntk).tangent.clone()
    finally:
        torch.set_num_threads(threads)
    fd = _central(build, 1.3, x1, None)[1]
    torch.testing.assert_close(ad, fd, rtol=0, atol=1e-8 * float(fd.abs().max()))
