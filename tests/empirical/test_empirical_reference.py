"""Every implementation and mode against a brute-force autograd loop, on a zoo of models."""

import functools

import pytest
import torch

import ntkit as nk
from tests.empirical.empirical_zoo import ZOO, brute_jacobian, brute_ntk, make

IMPLS = ["jacobian", "ntvp", "structured", "auto"]
MODES = ["full", "trace", "diagonal", "sum_logits", "logit"]


def _call(model, *args, **kw):
    if isinstance(model, tuple):
        f, params = model
        return nk.empirical_ntk(f, *args, params=params, **kw)
    return nk.empirical_ntk(model, *args, **kw)


@functools.cache
def _case(name, dtype=torch.float64):
    model, x1, x2 = make(name, dtype)
    return model, x1, x2, brute_ntk(model, x1, x2), brute_ntk(model, x1)


def _expected(mode, full, full_sym):
    o = full.shape[-1]
    if mode == "full":
        return full
    if mode == "trace":
        return full.diagonal(dim1=2, dim2=3).sum(-1)
    if mode == "sum_logits":
        return full.sum((2, 3)) / o
    if mode == "logit":
        return full[:, :, o - 1, o - 1]
    return full_sym.diagonal(dim1=0, dim2=1).permute(2, 0, 1)


def _rel(a, b):
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("name", ZOO)
def test_every_mode_matches_brute_force(name, impl):
    model, x1, x2, full, full_sym = _case(name)
    o = full.shape[-1]
    for mode in MODES:
        kw = {"logit": o - 1} if mode == "logit" else {}
        other = None if mode == "diagonal" else x2
        got = _call(model, x1, other, mode=mode, implementation=impl, **kw)
        want = _expected(mode, full, full_sym)
        assert got.shape == want.shape, (mode, got.shape, want.shape)
        assert got.dtype == torch.float64
        assert _rel(got, want) < 1e-12, (name, impl, mode)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("name", ["mlp", "cnn", "attention", "multiout"])
def test_symmetric_call_matches_brute_force(name, impl):
    model, x1, _, _, full_sym = _case(name)
    got = _call(model, x1, mode="full", implementation=impl)
    assert _rel(got, full_sym) < 1e-12
    # exact symmetry Theta(x_i, x_j)_ab = Theta(x_j, x_i)_ba
    assert torch.equal(got, got.permute(1, 0, 3, 2))
    tr = _call(model, x1, mode="trace", implementation=impl)
    assert torch.equal(tr, tr.T)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("name", ["mlp", "cnn", "resblock", "attention", "tied", "multiout"])
def test_float32(name, impl):
    model, x1, x2 = make(name, torch.float32)
    want = _case(name)[3]
    got = _call(model, x1, x2, mode="full", implementation=impl)
    assert got.dtype == torch.float32
    assert _rel(got.double(), want) < 1e-4
    got_t = _call(model, x1, x2, mode="trace", implementation=impl)
    assert _rel(got_t.double(), want.diagonal(dim1=2, dim2=3).sum(-1)) < 1e-4


@pytest.mark.parametrize("name", ["resblock", "attention", "tied_embedding", "multiout"])
def test_mode_identities_within_each_implementation(name):
    """sum_logits = (1/O) * sum of all O x O blocks of full; trace = block trace."""
    model, x1, x2, _, _ = _case(name)
    for impl in ["jacobian", "ntvp", "structured"]:
        full = _call(model, x1, x2, mode="full", implementation=impl)
        o = full.shape[-1]
        sl = _call(model, x1, x2, mode="sum_logits", implementation=impl)
        tr = _call(model, x1, x2, mode="trace", implementation=impl)
        assert _rel(sl, full.sum((2, 3)) / o) < 1e-12
        assert _rel(tr, torch.einsum("ijaa->ij", full)) < 1e-12


@pytest.mark.parametrize(
    ("name", "impl"),
    [
        (name, impl)
        for name in ["cnn", "attention", "tied", "tied_embedding"]
        for impl in ["jacobian", "ntvp", "structured"]
        if (name, impl) != ("cnn", "ntvp")  # one ntvp pass per parameter: slow, covered below
    ],
)
def test_per_parameter_matches_brute_force(name, impl):
    model, x1, x2, _, _ = _case(name)
    parts = nk.empirical_ntk(model, x1, x2, mode="trace", implementation=impl, per_parameter=True)
    named = dict(model.named_parameters())
    assert list(parts) == list(named)
    j1, j2 = brute_jacobian(model, x1), brute_jacobian(model, x2)  # (n, O, P) in that order
    total, start = 0, 0
    for n, p in named.items():
        cols = slice(start, start + p.numel())
        start += p.numel()
        want = torch.einsum("iap,jap->ij", j1[..., cols], j2[..., cols])
        assert _rel(parts[n], want) < 1e-12, n
        total = total + parts[n]
    assert _rel(total, _call(model, x1, x2, mode="trace", implementation="jacobian")) < 1e-12


@pytest.mark.parametrize("impl", IMPLS)
def test_parameter_subset(impl):
    model, x1, x2, _, _ = _case("attention")
    subset = ["attn.out_proj.weight", "ln2.weight", "out.weight", "out.bias"]
    want = brute_ntk(model, x1, x2, params=subset)
    got = nk.empirical_ntk(model, x1, x2, mode="full", implementation=impl, params=subset)
    assert _rel(got, want) < 1e-12


def test_all_pairs_of_implementations_agree_on_a_larger_cnn():
    torch.manual_seed(5)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.AvgPool2d(2),
        torch.nn.Conv2d(8, 8, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Flatten(),
        torch.nn.Linear(8 * 16, 4),
    )
    x1, x2 = torch.randn(6, 3, 8, 8), torch.randn(5, 3, 8, 8)
    for mode in ["full", "trace", "sum_logits"]:
        got = {i: nk.empirical_ntk(model, x1, x2, mode=mode, implementation=i) for i in IMPLS}
        for a in IMPLS:
            for b in IMPLS:
                assert _rel(got[a].double(), got[b].double()) < 1e-5, (mode, a, b)


@pytest.mark.parametrize("impl", IMPLS)
def test_diagonal_with_x2_pairs_rows(impl):
    model, x1, _, _, _ = _case("resblock")
    x2 = torch.randn(x1.shape, dtype=x1.dtype, generator=torch.Generator().manual_seed(3))
    full = brute_ntk(model, x1, x2)
    got = nk.empirical_ntk(model, x1, x2, mode="diagonal", implementation=impl)
    assert _rel(got, full.diagonal(dim1=0, dim2=1).permute(2, 0, 1)) < 1e-12
