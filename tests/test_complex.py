"""Complex-valued networks (Tan et al. 2022): block NTKs, their infinite-width limit, errors."""

import pytest
import torch
from torch import nn

import ntkit as nk
from ntkit import layers as L
from ntkit.complex import (
    ComplexConv2d,
    ComplexDense,
    ComplexMLP,
    ModReLU,
    SplitActivation,
    complex_empirical_ntk,
)


def _z(n, d, seed=0):
    return torch.randn(n, d, dtype=torch.complex128, generator=torch.Generator().manual_seed(seed))


def _brute_force_blocks(model, z1, z2):
    """Real Jacobian of the realified network, one autograd.grad call per real output."""
    params = list(model.parameters())

    def jac(z):
        rows = []
        for i in range(z.shape[0]):
            out = model(z[i : i + 1]).reshape(-1)
            for part in (out.real, out.imag):
                for a in range(part.shape[0]):
                    g = torch.autograd.grad(part[a], params, retain_graph=True, allow_unused=True)
                    g = [torch.zeros_like(p) if gi is None else gi for gi, p in zip(g, params)]
                    rows.append(torch.cat([gi.reshape(-1) for gi in g]))
        return torch.stack(rows).reshape(z.shape[0], 2, -1, sum(p.numel() for p in params))

    j1, j2 = jac(z1), jac(z2)
    return torch.einsum("ipaP,jqbP->pqijab", j1, j2)


@pytest.mark.parametrize("act", [L.ReLU(), L.Erf(), "modrelu", "zrelu", "cardioid"])
def test_block_ntk_matches_brute_force_realified_jacobian(act):
    model = ComplexMLP(2, activation=act, b_std=0.2, out_features=2).module(3, 6, seed=1)
    z1, z2 = _z(3, 3), _z(2, 3, seed=1)
    got = complex_empirical_ntk(model, z1, z2)
    torch.testing.assert_close(got, _brute_force_blocks(model, z1, z2), rtol=1e-10, atol=1e-12)
    tr = complex_empirical_ntk(model, z1, z2, mode="trace")
    torch.testing.assert_close(tr, got.diagonal(dim1=-2, dim2=-1).sum(-1))


def test_complex_conv_block_ntk_matches_brute_force():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = ComplexConv2d(2, 3, 3, padding="same", b_std=0.1, seed=0)
            self.act = SplitActivation(torch.tanh)
            self.out = ComplexDense(3 * 4 * 4, 1, seed=1)

        def forward(self, z):
            return self.out(self.act(self.conv(z)).reshape(z.shape[0], -1))

    g = torch.Generator().manual_seed(0)
    z = torch.randn(3, 2, 4, 4, dtype=torch.complex128, generator=g)
    model = Net()
    torch.testing.assert_close(
        complex_empirical_ntk(model, z),
        _brute_force_blocks(model, z, z),
        rtol=1e-10,
        atol=1e-12,
    )


def test_complex_conv_equals_complex_matrix_product():
    # A 1x1 convolution is a complex matrix product on every pixel.
    conv = ComplexConv2d(3, 2, 1, w_std=1.3, b_std=0.4, seed=2)
    dense = ComplexDense(3, 2, w_std=1.3, b_std=0.4, seed=2)
    with torch.no_grad():
        for name in ("weight_real", "weight_imag"):
            getattr(dense, name).copy_(getattr(conv, name)[:, :, 0, 0])
        for name in ("bias_real", "bias_imag"):
            getattr(dense, name).copy_(getattr(conv, name))
    z = torch.randn(2, 3, 5, 5, dtype=torch.complex128)
    want = dense(z.permute(0, 2, 3, 1).reshape(-1, 3)).reshape(2, 5, 5, 2).permute(0, 3, 1, 2)
    torch.testing.assert_close(conv(z), want)


@pytest.mark.parametrize("act", [L.ReLU(), L.Erf(), L.GELU()])
def test_re_re_block_is_the_realified_real_ntk(act):
    # Tan et al.: the diagonal blocks of the limit are the real NTK of the realified network
    # (independent weights, w_std, b_std / sqrt(2), inputs [Re z, Im z]). Independent check:
    # ntkit.layers' real recursion. 1e-7 covers the arccos of a rounded cosine on the
    # diagonal (sqrt(eps) ~ 1.5e-8 in the angle).
    z1, z2 = _z(5, 4), _z(3, 4, seed=1)
    spec = ComplexMLP(2, activation=act, w_std=1.4, b_std=0.3)
    blocks = spec.kernel(z1, z2).blocks()
    bs = 0.3 / 2**0.5
    real = L.serial(L.Dense(8, 1.4, bs), act, L.Dense(8, 1.4, bs), act, L.Dense(1, 1.4, bs))
    x1, x2 = (torch.cat([z.real, z.imag], 1) for z in (z1, z2))
    want = real.kernel(x1, x2)
    torch.testing.assert_close(blocks[0, 0], want.ntk, rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(blocks[1, 1], want.ntk, rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(
        spec.kernel(z1, z2).blocks("nngp")[0, 0], want.nngp, rtol=1e-7, atol=1e-9
    )
    # cross blocks: antisymmetric pair, zero for real inputs
    torch.testing.assert_close(blocks[0, 1], -blocks[1, 0])
    real_in = spec.kernel(z1.real, z2.real).blocks()
    assert float(real_in[0, 1].abs().max()) == 0.0


def test_monte_carlo_blocks_converge_to_the_limit():
    # Average of the empirical block NTK over 12 random networks of width 512. Measured
    # relative errors (per block, Frobenius, relative to ||Theta_RR||) at this size are
    # 0.007-0.013 with 20 seeds, and the finite-width fluctuation of a mean over S seeds
    # scales like (S * width)^-1/2; 0.04 is 3x that scale for 12 seeds. A wrong factor of 2,
    # a dropped cross block or a sign error gives O(0.1-1).
    z = _z(4, 3)
    spec = ComplexMLP(2, activation=L.ReLU(), w_std=1.5, b_std=0.3)
    limit = spec.kernel(z).blocks()
    acc = (
        sum(complex_empirical_ntk(spec.module(3, 512, seed=s), z, mode="trace") for s in range(12))
        / 12
    )
    scale = limit[0, 0].norm()
    assert float(limit[0, 1].norm() / scale) > 0.1  # the cross block is not negligible here
    for p in range(2):
        for q in range(2):
            assert float((acc[p, q] - limit[p, q]).norm() / scale) < 0.04, (p, q)


def test_real_valued_backprop_trains():
    model = ComplexMLP(1, out_features=1).module(3, 32, seed=0)
    z, y = _z(16, 3), _z(16, 1, seed=2)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    losses = []
    for _ in range(50):
        opt.zero_grad()
        loss = (model(z) - y).abs().pow(2).sum()
        loss.backward()
        assert all(not p.grad.is_complex() for p in model.parameters())
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def lambda_real():
    class Abs(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.ones(1, dtype=torch.float64))

        def forward(self, z):
            return (z.abs() * self.w).sum(1, keepdim=True)

    return Abs()


def test_complex_bad_input():
    z = _z(3, 4)
    net = L.serial(L.Dense(8), L.ReLU(), L.Dense(1))
    with pytest.raises(TypeError, match="real-valued"):
        net.kernel(z)
    with pytest.raises(TypeError, match="real-valued"):
        nk.empirical_ntk(net.module((4,), seed=0), z)
    with pytest.raises(RuntimeError):
        net.module((4,), seed=0, dtype=torch.float64)(z)  # torch refuses complex @ real
    with pytest.raises(ValueError, match="no closed-form"):
        ComplexMLP(1, activation="modrelu").kernel(z)
    with pytest.raises(ValueError, match="activation must be"):
        ComplexMLP(1, activation="tanh")
    with pytest.raises(ValueError, match=r"expects inputs \(n, 5\)"):
        ComplexDense(5, 2)(z)
    with pytest.raises(TypeError, match="complex inputs"):
        complex_empirical_ntk(nn.Linear(4, 1).double(), z)
    with pytest.raises(TypeError, match="complex tensor"):
        complex_empirical_ntk(lambda_real(), z)
    with pytest.raises(TypeError, match="complex tensor"):
        SplitActivation(torch.relu)(z.real)
    with pytest.raises(ValueError, match="NaN"):
        complex_empirical_ntk(ModReLU(4), z * float("nan"))
