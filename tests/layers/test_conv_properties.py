"""Identities, layout decisions, tiling and errors of the convolutional kernels."""

import math

import pytest
import torch
import torch.nn.functional as F

import ntkit.layers as L
from ntkit.layers.conv import ConvNTK


def _x(shape, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=torch.float64)


def _cnn(padding="same", pool=None):
    return L.serial(
        L.Conv(8, 3, padding=padding, b_std=0.2),
        L.ReLU(),
        L.Conv(8, 3, padding=padding, w_std=1.3),
        L.ReLU(),
        pool if pool is not None else L.GlobalAvgPool(),
        L.Dense(1, b_std=0.1),
    )


# ----------------------------------------------------------------------------- identities
@pytest.mark.parametrize("param", ["ntk", "standard"])
def test_1x1_conv_on_1x1_images_equals_dense(param):
    x = _x((4, 5), 0)
    dense = L.serial(
        L.Dense(7, b_std=0.3, parameterization=param),
        L.ReLU(),
        L.Dense(2, w_std=1.5, parameterization=param),
    )
    conv = L.serial(
        L.Conv(7, 1, b_std=0.3, parameterization=param),
        L.ReLU(),
        L.Conv(2, 1, w_std=1.5, parameterization=param),
    )
    kd = dense.kernel(x)
    kc = conv.kernel(x.reshape(4, 5, 1, 1))
    assert kc.nngp.shape == (4, 4, 1, 1, 1, 1)
    torch.testing.assert_close(kc.nngp.reshape(4, 4), kd.nngp, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(kc.ntk.reshape(4, 4), kd.ntk, rtol=1e-12, atol=1e-14)
    # the finite networks agree too: same weight draws, same parameterization
    md = dense.module((5,), seed=3, dtype=torch.float64)
    mc = conv.module((5, 1, 1), seed=3, dtype=torch.float64)
    torch.testing.assert_close(mc(x.reshape(4, 5, 1, 1)).reshape(4, 2), md(x))


def test_circular_padding_with_global_pooling_is_shift_invariant():
    x1, x2 = _x((3, 2, 5, 6), 1), _x((2, 2, 5, 6), 2)
    net = _cnn("circular")
    k = net.kernel(x1, x2)
    shifted = net.kernel(torch.roll(x1, (2, -1), (2, 3)), torch.roll(x2, (1, 3), (2, 3)))
    torch.testing.assert_close(shifted.nngp, k.nngp, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(shifted.ntk, k.ntk, rtol=1e-12, atol=1e-14)
    # zero padding is not shift invariant: the check above can fail
    same = _cnn("same")
    moved = same.kernel(torch.roll(x1, (2, -1), (2, 3)), x2).nngp
    assert (moved - same.kernel(x1, x2).nngp).abs().max() > 1e-3


@pytest.mark.parametrize("padding", ["same", "valid", "circular"])
def test_flatten_readout_is_the_mean_of_per_location_kernels(padding):
    x1, x2 = _x((3, 2, 5, 5), 3), _x((2, 2, 5, 5), 4)
    body = L.serial(L.Conv(4, 3, padding=padding), L.ReLU(), L.Conv(4, 2, padding=padding), L.Erf())
    full = body.kernel(x1, x2)  # network output: full layout
    assert full.nngp.ndim == 6 and not full.diagonal_spatial
    flat = L.serial(body, L.Flatten()).kernel(x1, x2)  # computed in the diagonal layout
    for attr in ("nngp", "ntk"):
        t = getattr(full, attr)
        per_location = torch.diagonal(torch.diagonal(t, dim1=2, dim2=3), dim1=2, dim2=3)
        torch.testing.assert_close(getattr(flat, attr), per_location.mean(dim=(2, 3)))


def test_layout_is_decided_from_the_whole_network():
    flat_body = L.serial(L.Conv(4, 3), L.ReLU(), L.Flatten())
    pooled = L.serial(L.Conv(4, 3), L.ReLU(), L.GlobalAvgPool())
    attn = L.serial(L.Conv(4, 3), L.GlobalSelfAttention(4), L.Flatten())
    assert flat_body.input_layout(False) is True
    assert pooled.input_layout(False) is False
    assert attn.input_layout(False) is False  # attention needs the full covariance
    # a branch that pools forces the full layout upstream of the FanOut
    branches = L.serial(
        L.Conv(4, 3, padding="same"),
        L.FanOut(2),
        L.parallel(L.serial(L.ReLU(), L.Conv(4, 3, padding="same")), L.Conv(4, 1)),
        L.FanInSum(),
        L.ReLU(),
        L.GlobalAvgPool(),
    )
    assert branches.input_layout(False) is False
    x = _x((3, 2, 4, 4), 5)
    k = branches.kernel(x)
    assert torch.isfinite(k.ntk).all()


def test_x2_none_equals_explicit_superset_and_is_symmetric_psd():
    x1, extra = _x((4, 1, 5, 5), 6), _x((3, 1, 5, 5), 7)
    net = _cnn()
    k = net.kernel(x1)
    kx = net.kernel(x1, torch.cat([x1, extra]))
    torch.testing.assert_close(kx.nngp[:, :4], k.nngp, rtol=1e-11, atol=1e-13)
    torch.testing.assert_close(kx.ntk[:, :4], k.ntk, rtol=1e-11, atol=1e-13)
    assert torch.equal(k.nngp, k.nngp.T) and torch.equal(k.ntk, k.ntk.T)
    assert float(torch.linalg.eigvalsh(k.ntk).min()) > -1e-12


def test_float32_agrees_with_float64():
    x = _x((5, 2, 6, 6), 8)
    net = _cnn()
    k64 = net.kernel(x)
    k32 = net.kernel(x, dtype=torch.float32)
    assert k32.ntk.dtype == torch.float32
    torch.testing.assert_close(k32.ntk.double(), k64.ntk, rtol=1e-4, atol=1e-5)


@pytest.mark.filterwarnings("ignore:Using padding=.same. with even kernel")
def test_finite_same_padding_matches_torch_same_for_even_kernels():
    x = _x((2, 3, 6, 7), 9)
    conv = L.Conv(4, (2, 4), padding="same")
    mod = conv.module((3, 6, 7), seed=0, dtype=torch.float64)
    assert isinstance(mod, ConvNTK)
    want = F.conv2d(x, mod.weight, padding="same") * (1.0 / math.sqrt(3 * 8))
    torch.testing.assert_close(mod(x), want)
    # standard parameterization builds torch's own conv layers
    std = L.Conv(4, 3, padding="circular", parameterization="standard").module((3, 6, 7))
    assert isinstance(std, torch.nn.Conv2d) and std.padding_mode == "circular"


# ----------------------------------------------------------------------------- tiling
class _CountingIdentity(L.Identity):
    def __init__(self):
        self.calls = 0

    def kernel_rule(self, k):
        self.calls += 1
        return k


@pytest.mark.parametrize("explicit_x2", [False, True])
@pytest.mark.parametrize("pool", ["gap", "flatten"])
def test_tiny_max_memory_gives_the_untiled_result(explicit_x2, pool):
    x1 = _x((7, 2, 5, 5), 10)
    x2 = _x((5, 2, 5, 5), 11) if explicit_x2 else None
    counter = _CountingIdentity()
    net = L.serial(
        counter, _cnn(pool=L.GlobalAvgPool() if pool == "gap" else L.Flatten()), L.Dropout(0.2)
    )
    full = net.kernel(x1, x2)
    untiled_calls = counter.calls
    counter.calls = 0
    n2 = 5 if explicit_x2 else 7
    # result + variances + a few pairs (ReLU's 8 arrays of 625 or 25 entries per pair)
    small = 7 * n2 * 2 * 8 + 12 * 8 + (250_000 if pool == "gap" else 12_000)
    tiled = net.kernel(x1, x2, max_memory=small)
    assert counter.calls > untiled_calls + 5  # many more tiles
    torch.testing.assert_close(tiled.nngp, full.nngp, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(tiled.ntk, full.ntk, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(tiled.cov1, full.cov1, rtol=1e-12, atol=1e-14)


# ----------------------------------------------------------------------------- errors
def test_mismatched_spatial_shapes_are_refused():
    net = _cnn()
    with pytest.raises(ValueError, match=r"same per-sample shape.*\(2, 1, 5, 5\).*\(2, 1, 4, 4\)"):
        net.kernel(_x((2, 1, 5, 5), 0), _x((2, 1, 4, 4), 1))


def test_wrong_spatial_rank_is_refused():
    with pytest.raises(ValueError, match="kernel_size has 2 entries but the input has 1 spatial"):
        L.Conv(4, (3, 3)).kernel(_x((2, 1, 8), 0))
    with pytest.raises(ValueError, match=r"channels-first inputs .* got per-sample shape \(5,\)"):
        L.Conv(4, 3).kernel(_x((2, 5), 0))


def test_kernel_too_large_for_valid_padding():
    net = L.serial(L.Conv(4, 3), L.ReLU(), L.Conv(4, 5), L.GlobalAvgPool())
    with pytest.raises(
        ValueError, match=r"layer 2 .*kernel_size 5 is larger than the input length 4"
    ):
        net.kernel(_x((2, 1, 6, 6), 0))
    with pytest.raises(ValueError, match="kernel_size 7 is larger"):
        L.AvgPool(7).module((1, 6, 6))


def test_budget_too_small_for_one_pair_reports_numbers():
    x = _x((6, 1, 8, 8), 0)
    net = _cnn()
    with pytest.raises(ValueError) as err:
        net.kernel(x, max_memory=400_000)
    msg = str(err.value)
    assert "max_memory=390.62 KiB cannot hold this kernel" in msg
    assert "one pair of inputs needs" in msg and "at least" in msg
    assert "the largest layer, ReLU(), needs 8.0 x 4096 entries per pair" in msg
    # the required amount it states is indeed enough
    need = float(msg.split("so at least ")[1].split(" KiB")[0]) * 1024
    k = net.kernel(x, max_memory=int(need) + 1)
    assert k.ntk.shape == (6, 6)


def test_result_too_large_suggests_a_batch_that_fits():
    x = _x((300, 1, 4, 4), 0)
    body = L.serial(L.Conv(4, 3, padding="same"), L.ReLU(), L.Conv(4, 3, padding="same"))
    with pytest.raises(ValueError, match=r"at most \d+ rows of x1 fit against the 300 of x2"):
        body.kernel(x, max_memory=20 * 2**20)  # the full result alone is 2 x 300^2 x 256 x 8 B


def test_one_pair_input_kernel_too_large_is_refused_before_work():
    x = torch.zeros(1, 1, 64, 64, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"16777216 entries.*Splitting the batch cannot help"):
        _cnn().kernel(x, max_memory=2**20)


def test_layer_argument_errors():
    with pytest.raises(ValueError, match="padding must be one of"):
        L.Conv(4, 3, padding="reflect")
    with pytest.raises(ValueError, match="out_channels must be a positive integer"):
        L.Conv(0, 3)
    with pytest.raises(ValueError, match="drop probability"):
        L.Dropout(1.0)
    with pytest.raises(ValueError, match="mechanism must be one of"):
        L.GlobalSelfAttention(4, mechanism="sigmoid")
    with pytest.raises(ValueError, match="needs zero-mean Gaussian inputs"):
        L.serial(L.Conv(4, 3), L.ReLU(), L.LayerNorm()).kernel(_x((2, 1, 5, 5), 0))
    with pytest.raises(ValueError, match="circular padding of 4 exceeds the input length 3"):
        L.Conv(2, 9, padding="circular").kernel(_x((2, 1, 3, 3), 0))


def test_activation_after_spatial_flatten_is_refused():
    net = L.serial(L.Conv(4, 3), L.Flatten(), L.ReLU())
    with pytest.raises(ValueError, match="needs Gaussian pre-activations"):
        net.kernel(_x((2, 1, 5, 5), 0))


GPU_NETS = {
    "conv-gap": lambda: _cnn(),
    "circular-flatten": lambda: _cnn("circular", pool=L.Flatten()),
    "pool-layernorm-attention-dropout": lambda: L.serial(
        L.Conv(8, 3, padding="same"),
        L.ReLU(),
        L.AvgPool(2),
        L.Conv(8, 2, padding="same"),
        L.LayerNorm(),
        L.GlobalSelfAttention(8, b_std=0.1),
        L.ReLU(),
        L.Dropout(0.2),
        L.SumPool(2, stride=1),
        L.GlobalAvgPool(),
        L.Dense(1),
    ),
}


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", sorted(GPU_NETS))
def test_cuda_matches_cpu(name):
    x1, x2 = _x((6, 3, 8, 8), 12), _x((4, 3, 8, 8), 13)
    net = GPU_NETS[name]()
    for b in (None, x2):
        k_cpu = net.kernel(x1, b)
        k_gpu = net.kernel(x1.cuda(), None if b is None else b.cuda())
        assert k_gpu.ntk.device.type == "cuda"
        torch.testing.assert_close(k_gpu.nngp.cpu(), k_cpu.nngp, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(k_gpu.ntk.cpu(), k_cpu.ntk, rtol=1e-10, atol=1e-12)
    # tiled on the GPU as well
    tiled = net.kernel(x1.cuda(), max_memory=2_000_000)  # a few pairs per tile
    torch.testing.assert_close(tiled.ntk.cpu(), net.kernel(x1).ntk, rtol=1e-10, atol=1e-12)
    model = net.module((3, 8, 8), device="cuda", dtype=torch.float64)
    assert model(x1.cuda()).shape == (6, 1)
