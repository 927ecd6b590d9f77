"""CUDA: kernels computed on the GPU equal the CPU ones and stay on the GPU."""

import pytest
import torch

import ntkit as nk
from ntkit import layers as L

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def _x(n, d, seed):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize(
    "act",
    [L.ReLU(), L.Erf(), L.GELU(), L.RectifiedMonomial(2), L.Elementwise(torch.tanh)],
    ids=repr,
)
def test_cuda_matches_cpu(act):
    net = L.serial(L.Dense(8, 1.3, 0.1), act, L.Dense(8, 1.1), act, L.Dense(2))
    x1, x2 = _x(300, 7, 0), _x(200, 7, 1)
    cpu = net.kernel(x1, x2)
    gpu = net.kernel(x1.cuda(), x2.cuda())
    assert gpu.nngp.device.type == "cuda" and gpu.ntk.device.type == "cuda"
    torch.testing.assert_close(gpu.nngp.cpu(), cpu.nngp, rtol=1e-11, atol=1e-12)
    torch.testing.assert_close(gpu.ntk.cpu(), cpu.ntk, rtol=1e-11, atol=1e-12)
    sym = net.kernel(x1.cuda())
    assert torch.equal(sym.ntk, sym.ntk.T)


def test_cuda_monte_carlo_and_float32():
    net = L.serial(L.Dense(256, 1.3, 0.1), L.ReLU(), L.Dense(1))
    x = _x(6, 5, 2).cuda()
    mc = nk.monte_carlo_kernel(net, x, n_samples=2)
    assert mc.ntk.device.type == "cuda"
    k32 = net.kernel(x.float(), dtype=torch.float32)
    torch.testing.assert_close(k32.ntk.double(), net.kernel(x).ntk, rtol=1e-4, atol=1e-5)


def test_cuda_gradients_match_cpu():
    """Gradients with respect to inputs and a tensor hyperparameter, on the GPU."""
    x1, x2 = _x(40, 5, 2), _x(30, 5, 3)
    grads = []
    for device in ("cpu", "cuda"):
        w = torch.tensor(1.4, dtype=torch.float64, device=device, requires_grad=True)
        net = L.serial(L.Dense(8, w_std=w, b_std=0.1), L.ReLU(), L.Dense(8), L.Erf(), L.Dense(1))
        a = x1.to(device).requires_grad_(True)
        b = x2.to(device).requires_grad_(True)
        k = net.kernel(a, b)
        assert k.ntk.device.type == device
        (k.ntk.square().sum() + net.kernel(a).nngp.sum()).backward()
        grads.append([t.grad.cpu() for t in (a, b, w)])
    for c, g in zip(*grads):
        torch.testing.assert_close(g, c, rtol=1e-10, atol=1e-12)
