"""CUDA: tiles computed on the GPU (device="cuda") equal the CPU ones."""

import pytest
import torch

from ntkit import layers as L
from ntkit.tiling import kernel_matrix, kernel_store
from tests.tiling.kernels import inputs, rbf

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def test_layer_tiles_on_cuda_equal_cpu(tmp_path):
    net = L.serial(L.Conv(8, 3, padding="same"), L.ReLU(), L.GlobalAvgPool(), L.Dense(1))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 3, 8, 8, generator=g, dtype=torch.float64)
    cpu = net.kernel(x)
    gpu = kernel_matrix(net, x, tile=16, device="cuda", progress=False)
    assert gpu.ntk.device.type == "cpu"  # assembled where x lives
    torch.testing.assert_close(gpu.ntk, cpu.ntk, rtol=1e-11, atol=1e-12)
    on_gpu = kernel_matrix(net, x.cuda(), tile=16, progress=False)
    assert on_gpu.ntk.device.type == "cuda"
    torch.testing.assert_close(on_gpu.ntk.cpu(), cpu.ntk, rtol=1e-11, atol=1e-12)
    handle = kernel_store(net, x, tile=16, store=tmp_path / "k.zarr", device="cuda")
    torch.testing.assert_close(handle.load().nngp, cpu.nngp, rtol=1e-11, atol=1e-12)


def test_function_tiles_on_cuda():
    x = inputs(30, 3)
    got = kernel_matrix(rbf, x, tile=7, device="cuda", progress=False)
    torch.testing.assert_close(got, rbf(x, x), rtol=1e-12, atol=1e-12)
