"""ntk_vp, Monte Carlo fast path, input handling and errors, GPU."""

import pytest
import torch
from torch import nn

import ntkit as nk
from ntkit import layers as L
from tests.empirical.empirical_zoo import make


def _rel(a, b):
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("name", ["mlp", "attention", "multiout", "function"])
def test_ntk_vp_matches_the_kernel_times_v(name):
    model, x1, x2 = make(name)
    kw = {}
    if isinstance(model, tuple):
        model, kw = model[0], {"params": model[1]}
    full = nk.empirical_ntk(model, x1, x2, mode="full", implementation="jacobian", **kw)
    n2, o = full.shape[1], full.shape[-1]
    g = torch.Generator().manual_seed(0)
    v = torch.randn(n2, o, generator=g, dtype=torch.float64)
    got = nk.ntk_vp(model, x1, x2, v, **kw)
    assert got.shape == (x1.shape[0], o)
    assert _rel(got, torch.einsum("ijab,jb->ia", full, v)) < 1e-12
    vm = torch.randn(n2, o, 3, generator=g, dtype=torch.float64)
    got_m = nk.ntk_vp(model, x1, x2, vm, **kw)
    assert _rel(got_m, torch.einsum("ijab,jbm->iam", full, vm)) < 1e-12


def test_ntk_vp_symmetric_and_chunked():
    model, x1, _ = make("cnn")
    full = nk.empirical_ntk(model, x1, mode="full")
    v = torch.randn(x1.shape[0], full.shape[-1], dtype=torch.float64)
    want = torch.einsum("ijab,jb->ia", full, v)
    assert _rel(nk.ntk_vp(model, x1, None, v), want) < 1e-12
    assert _rel(nk.ntk_vp(model, x1, None, v, max_memory=120_000), want) < 1e-12
    with pytest.raises(ValueError, match="v must have shape"):
        nk.ntk_vp(model, x1, None, v[:, :1])
    with pytest.raises(ValueError, match="max_memory"):
        nk.ntk_vp(model, x1, None, v, max_memory=10)


def test_monte_carlo_kernel_uses_the_fast_path_and_matches_jacobian():
    net = L.serial(L.Dense(32, w_std=1.5, b_std=0.1), L.ReLU(), L.Dense(3, w_std=1.5, b_std=0.1))
    x = torch.randn(5, 4, dtype=torch.float64)
    import ntkit.empirical.api as api

    chosen = []
    real = api.choose

    def spy(est):
        chosen.append(real(est))
        return chosen[-1]

    api.choose = spy
    try:
        k = nk.monte_carlo_kernel(net, x, n_samples=2, seed=3)
    finally:
        api.choose = real
    assert chosen == ["structured", "structured"]
    want = 0
    for s in range(2):
        m = net.module((4,), seed=3 + s, dtype=torch.float64)
        want = want + nk.empirical_ntk(m, x, mode="trace", implementation="jacobian") / 3
    assert _rel(k.ntk, want / 2) < 1e-12


def test_numpy_and_integer_inputs():
    model, x1, x2 = make("mlp")
    got = nk.empirical_ntk(model, x1.numpy(), x2.numpy(), mode="trace")
    assert _rel(got, nk.empirical_ntk(model, x1, x2, mode="trace")) < 1e-14
    # float32 inputs are cast to the model's float64
    got32 = nk.empirical_ntk(model, x1.float(), mode="trace")
    assert got32.dtype == torch.float64


def test_x2_none_equals_x2_is_x1():
    model, x1, _ = make("resblock")
    for impl in ("jacobian", "structured", "ntvp"):
        a = nk.empirical_ntk(model, x1, mode="full", implementation=impl)
        b = nk.empirical_ntk(model, x1, x1, mode="full", implementation=impl)
        assert _rel(a, b) < 1e-13


def test_errors_name_what_was_expected():
    model, x1, x2 = make("mlp")
    with pytest.raises(ValueError, match="mode must be one of"):
        nk.empirical_ntk(model, x1, mode="diag")
    with pytest.raises(ValueError, match="logit=i"):
        nk.empirical_ntk(model, x1, mode="logit")
    with pytest.raises(ValueError, match="out of range"):
        nk.empirical_ntk(model, x1, mode="logit", logit=3)
    with pytest.raises(ValueError, match="only used with mode='logit'"):
        nk.empirical_ntk(model, x1, mode="trace", logit=0)
    with pytest.raises(ValueError, match="implementation must be"):
        nk.empirical_ntk(model, x1, implementation="fast")
    with pytest.raises(ValueError, match="same per-sample shape"):
        nk.empirical_ntk(model, x1, x2[:, :3])
    bad = x1.clone()
    bad[1, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        nk.empirical_ntk(model, bad)
    with pytest.raises(ValueError, match="empty batch"):
        nk.empirical_ntk(model, x1[:0])
    with pytest.raises(TypeError, match=r"torch.Tensor or numpy.ndarray"):
        nk.empirical_ntk(model, [[1.0] * 6])
    with pytest.raises(ValueError, match="pairs x1\\[i\\] with x2\\[i\\]"):
        nk.empirical_ntk(model, x1, x2, mode="diagonal")
    with pytest.raises(ValueError, match="not parameters of the model"):
        nk.empirical_ntk(model, x1, params=["net.9.weight"])
    with pytest.raises(TypeError, match=r"nn.Module or f\(params, x\)"):
        nk.empirical_ntk("model", x1)

    class TupleOut(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(6, 2).double()

        def forward(self, x):
            return self.lin(x), x

    with pytest.raises(TypeError, match="one tensor"):
        nk.empirical_ntk(TupleOut(), x1)


def test_batch_coupled_models_raise_with_the_fix():
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    x = torch.randn(5, 3)
    with pytest.raises(ValueError, match=r"training mode.*model\.eval\(\)"):
        nk.empirical_ntk(model, x)
    model.eval()
    assert nk.empirical_ntk(model, x, mode="trace").shape == (5, 5)
    stats_free = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4, track_running_stats=False)).eval()
    with pytest.raises(ValueError, match="track_running_stats=False"):
        nk.empirical_ntk(stats_free, x)


def test_train_mode_dropout_raises_and_eval_mode_equals_the_dropout_free_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Dropout(0.3), nn.Linear(8, 2)).double()
    x = torch.randn(4, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"Dropout, p=0\.3.*model\.eval\(\)"):
        nk.empirical_ntk(model, x)
    plain = nn.Sequential(model[0], model[1], model[3])
    torch.testing.assert_close(
        nk.empirical_ntk(model.eval(), x, mode="trace"),
        nk.empirical_ntk(plain, x, mode="trace"),
        rtol=1e-12,
        atol=0,
    )


def test_monte_carlo_ntk_of_a_dropout_network_is_refused_nngp_is_not():
    net = L.serial(L.Dense(16), L.ReLU(), L.Dropout(0.2), L.Dense(16), L.ReLU(), L.Dense(2))
    x = torch.randn(3, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match="NTK of a network with Dropout.*get='nngp'"):
        nk.monte_carlo_kernel(net, x, n_samples=1, seed=0)
    k = nk.monte_carlo_kernel(net, x, n_samples=1, seed=0, get="nngp")
    assert k.ntk is None and k.nngp.shape == (3, 3)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", ["mlp", "cnn", "resblock", "attention", "tied", "multiout"])
def test_cuda_matches_cpu(name):
    model, x1, x2 = make(name)
    want = nk.empirical_ntk(model, x1, x2, mode="full", implementation="jacobian")
    model = model.cuda()
    for impl in ("jacobian", "ntvp", "structured", "auto"):
        got = nk.empirical_ntk(model, x1.cuda(), x2.cuda(), mode="full", implementation=impl)
        assert got.device.type == "cuda"
        assert _rel(got.cpu(), want) < 1e-10, impl
    # inputs on the CPU: computed on the model's device, returned on the inputs' device
    got = nk.empirical_ntk(model, x1, x2, mode="trace")
    assert got.device.type == "cpu"
    lin = nk.linearize(model)
    assert _rel(lin(x1.cuda()).detach().cpu(), model(x1.cuda()).detach().cpu()) < 1e-12
