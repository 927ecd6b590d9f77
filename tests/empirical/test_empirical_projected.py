"""Projected (sketched) empirical NTKs: unbiasedness, the dim^-1/2 law, determinism, errors.

The reference is the brute-force kernel of ``empirical_zoo`` (one autograd call per sample
and output). All checks use fixed seeds, so they are deterministic; the tolerances are the
statistical ones that the estimator must meet, derived in each test.
"""

import math

import pytest
import torch
from torch import nn

import ntkit as nk
from ntkit.empirical.factors import Dense, Kron, OneHot
from ntkit.empirical.projection import Projector
from tests.empirical.empirical_zoo import brute_ntk, make


def _model_and_params(model):
    if isinstance(model, tuple):
        return model[0], model[1], model
    return model, None, model


def _kernel(phi1, phi2, mode):
    if mode == "full":  # (n, O, k) -> (n1, n2, O, O)
        return torch.einsum("iaj,kbj->ikab", phi1, phi2)
    return phi1 @ phi2.T


def _reference(model, x1, x2, mode):
    full = brute_ntk(model, x1, x2)  # (n1, n2, O, O)
    o = full.shape[-1]
    if mode == "full":
        return full
    if mode == "trace":
        return torch.einsum("ijaa->ij", full)
    if mode == "sum_logits":
        return full.sum((2, 3)) / o
    return full[:, :, 1, 1]  # logit=1


def _rel(a, b):
    return float((a - b).norm() / b.norm())


CASES = [
    ("mlp", "trace"),
    ("mlp", "full"),
    ("cnn", "sum_logits"),
    ("cnn", "full"),
    ("resblock", "trace"),
    ("attention", "trace"),
    ("attention", "full"),
    ("attention", "logit"),
    ("multiout", "trace"),
    ("tied_embedding", "sum_logits"),
    ("function", "trace"),
]


@pytest.mark.parametrize(("name", "mode"), CASES)
def test_unbiased_against_the_brute_force_kernel(name, mode):
    model, x1, x2 = make(name)
    f, params, ref_model = _model_and_params(model)
    ref = _reference(ref_model, x1, x2, mode)
    n_params = sum(p.numel() for p in (params or dict(f.named_parameters())).values())
    dim, seeds = min(32, n_params), 24
    logit = 1 if mode == "logit" else None
    kernels = []
    n1 = x1.shape[0]
    for s in range(seeds):
        kw = dict(dim=dim, mode=mode, logit=logit, seed=s, params=params, progress=False)
        phi = nk.ntk_features(f, torch.cat([x1, x2]), **kw)  # one call for both sides
        kernels.append(_kernel(phi[:n1], phi[n1:], mode))
    stack = torch.stack(kernels)
    rms = math.sqrt(sum(_rel(k, ref) ** 2 for k in kernels) / seeds)
    # The mean of S independent unbiased estimates has a Frobenius error of about
    # rms / sqrt(S); 3x that bound is exceeded with negligible probability by an unbiased
    # estimator, while any bias (a parameter missed or counted twice, a wrong scale)
    # stays at its size however many seeds are averaged.
    assert _rel(stack.mean(0), ref) < 3 * rms / math.sqrt(seeds)
    assert rms > 0  # a real estimate, not the exact kernel
    # and the estimate of a sample with itself is positive (trace-like modes)
    if mode != "full":
        assert bool(
            (torch.diagonal(_kernel(*(2 * [nk.ntk_features(f, x1, **kw)]), mode)) > 0).all()
        )


class _Wide(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv1d(2, 8, 3, padding=1),
            nn.Tanh(),
            nn.Flatten(),
            nn.Linear(8 * 6, 24),
            nn.ReLU(),
            nn.Linear(24, 3),
        )

    def forward(self, x):
        return self.net(x)


def test_error_follows_the_inverse_square_root_law():
    torch.manual_seed(0)
    model = _Wide().double()
    x = torch.randn(6, 2, 6, dtype=torch.float64)
    ref = _reference(model, x, None, "trace")
    # For a dense Gaussian projection, Var(K_ij estimate) = (K_ij^2 + K_ii K_jj) / dim; a
    # row-wise Kronecker sign sketch has at most 4x that variance (rank-one factors) and
    # about the same for high-rank ones. So the rms relative error times sqrt(dim) lies
    # between 0.5 and 2 times sqrt(sum(K_ij^2 + K_ii K_jj)) / ||K||.
    d = torch.diagonal(ref)
    law = math.sqrt(float((ref**2 + d[:, None] * d[None, :]).sum())) / float(ref.norm())
    rms = {}
    for dim in (16, 256):
        errs = [
            _rel(_kernel(*(2 * [nk.ntk_features(model, x, dim=dim, seed=s)]), "trace"), ref)
            for s in range(16)
        ]
        rms[dim] = math.sqrt(sum(e * e for e in errs) / len(errs))
        assert 0.5 * law < rms[dim] * math.sqrt(dim) < 2.0 * law
    # 16x the features: 4x smaller error (rms of 16 draws: about +-25% each)
    assert 2.8 < rms[16] / rms[256] < 5.7


def _count_sketch_matrix(h, s, dim):
    """The explicit ``(dim, m)`` matrix of a count sketch: column ``i`` is ``s_i e_{h_i}``."""
    m = torch.zeros(dim, h.numel(), dtype=torch.float64)
    m[h, torch.arange(h.numel())] = s
    return m


def test_sketches_equal_an_explicit_count_sketch_matrix():
    """TensorSketch of Kron factors (dense and one-hot inputs) and the dense count sketch
    against ``S @ vec(J)`` with ``S`` built entry by entry from the hashes."""
    g = torch.Generator().manual_seed(0)
    n, k, p, a, b, dim = 3, 2, 5, 4, 6, 40
    gt = torch.randn(n, k, p, a, generator=g, dtype=torch.float64)
    xt = torch.randn(n, p, b, generator=g, dtype=torch.float64)
    idx = torch.randint(0, 9, (n, p), generator=g)
    onehot = torch.nn.functional.one_hot(idx, 9).double()
    for how in ("full", "trace"):
        proj = Projector(dim, 7, how, k, torch.float64, "cpu")
        for key, x, xd in (("w", xt, xt), ("e", OneHot(idx, 9), onehot)):
            j = torch.einsum("nkpa,npb->nkab", gt, xd)  # per-sample Jacobians
            bw = xd.shape[-1]
            hx, sx = proj.hashes(key, "in", bw)
            rows = 1 if how == "full" else k
            hg, sg = proj.hashes(key, "out", rows * a)
            # TensorSketch = count sketch with H(a, b) = h_g(a) + h_x(b) mod dim
            big_h = (hg[:, None] + hx[None, :]) % dim
            big_s = sg[:, None] * sx[None, :]
            sk = _count_sketch_matrix(big_h.reshape(-1), big_s.reshape(-1), dim)
            got = proj.project(key, Kron(gt, x), 0)
            if how == "full":
                want = j.reshape(n, k, a * bw) @ sk.T
            else:
                want = j.reshape(n, k * a * bw) @ sk.T
            assert torch.allclose(got, want, rtol=0, atol=1e-12)
        jd = torch.randn(n, k, 7, generator=g, dtype=torch.float64)
        h, s = proj.hashes("d", "dense", 7 if how == "full" else k * 7)
        got = proj.project("d", Dense(jd), 0)
        want = (jd if how == "full" else jd.reshape(n, k * 7)) @ _count_sketch_matrix(h, s, dim).T
        assert torch.allclose(got, want, rtol=0, atol=1e-12)
        assert set(s.unique().tolist()) == {-1.0, 1.0}


def test_same_features_for_any_chunking_call_and_subset():
    model, x, _ = make("attention")
    x = torch.cat([x, x.flip(0), x[:1]])  # 7 sequences
    big = nk.ntk_features(model, x, dim=48, mode="full", seed=3, progress=False)
    again = nk.ntk_features(model, x, dim=48, mode="full", seed=3, progress=False)
    assert torch.equal(big, again)
    as_text = nk.ntk_features(model, x, dim=48, mode="full", seed=3, max_memory="1GiB")
    assert torch.allclose(as_text, big, rtol=1e-12, atol=1e-12)
    # a budget that forces chunks of samples and of output directions
    from ntkit.empirical.functional import functionalize, transform_safe
    from ntkit.empirical.modes import mode_spec
    from ntkit.empirical.profile import profile
    from ntkit.empirical.projected import plan_projection

    with transform_safe():
        prof = profile(functionalize(model), x[:2])
    spec = mode_spec("full", None, prof.out_numel)
    budget = plan_projection(prof, spec, 7, 48, 8, 2**40).peak
    plans = []
    for frac in (0.5, 0.1, 0.05, 0.02):
        try:
            plans.append(plan_projection(prof, spec, 7, 48, 8, budget * frac))
        except ValueError:  # below the smallest chunk
            break
        small = nk.ntk_features(
            model, x, dim=48, mode="full", seed=3, max_memory=int(budget * frac), progress=False
        )
        assert plans[-1].rows < 7
        assert torch.allclose(small, big, rtol=1e-12, atol=1e-12)
    assert min(pl.dirs for pl in plans) < prof.out_numel  # some budget split the directions
    # features of new inputs are compatible with stored ones
    sub = nk.ntk_features(model, x[2:5], dim=48, mode="full", seed=3, progress=False)
    assert torch.allclose(sub, big[2:5], rtol=1e-12, atol=1e-12)
    other = nk.ntk_features(model, x, dim=48, mode="full", seed=4, progress=False)
    assert not torch.allclose(other, big)


def test_trace_features_split_over_directions_add_up():
    model, x, _ = make("multiout")
    ref = nk.ntk_features(model, x, dim=20, seed=1, progress=False)
    from ntkit.empirical.functional import functionalize, transform_safe
    from ntkit.empirical.modes import mode_spec
    from ntkit.empirical.profile import profile
    from ntkit.empirical.projected import ProjectionPlan, projected_features

    with transform_safe():
        prof = profile(functionalize(model), x[:2])
        spec = mode_spec("trace", None, prof.out_numel)
        split = projected_features(prof, x, spec, 20, 1, ProjectionPlan(1, 4, 0.0))
    assert torch.allclose(split, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("mode", ["full", "trace", "diagonal", "sum_logits", "logit"])
def test_empirical_ntk_projected_is_the_features_product(mode):
    model, x1, x2 = make("cnn")
    logit = 0 if mode == "logit" else None
    kw = dict(mode=mode, logit=logit, implementation="projected", dim=64, seed=5)
    sym = nk.empirical_ntk(model, x1, **kw)
    exact = nk.empirical_ntk(model, x1, mode=mode, logit=logit)
    assert sym.shape == exact.shape
    fmode = "full" if mode == "diagonal" else mode
    phi = nk.ntk_features(model, x1, dim=64, mode=fmode, logit=logit, seed=5, progress=False)
    if mode == "diagonal":
        want = torch.einsum("iaj,ibj->iab", phi, phi)
    else:
        want = _kernel(phi, phi, mode)
        assert torch.equal(sym, sym.T if sym.ndim == 2 else sym.permute(1, 0, 3, 2))
    assert torch.allclose(sym, want, rtol=1e-10, atol=1e-12)
    if mode != "diagonal":
        cross = nk.empirical_ntk(model, x1, x2, **kw)
        phi2 = nk.ntk_features(model, x2, dim=64, mode=fmode, logit=logit, seed=5)
        assert torch.allclose(cross, _kernel(phi, phi2, mode), rtol=1e-10, atol=1e-12)


def test_float32_features_match_float64():
    model, x, _ = make("resblock")
    f64 = nk.ntk_features(model, x, dim=32, seed=2)
    f32 = nk.ntk_features(model.float(), x.float(), dim=32, seed=2)
    assert f32.dtype == torch.float32
    assert _rel(f32.double(), f64) < 1e-5
    # bfloat16 (FFTs in float32): unit roundoff 2^-8 = 0.4% per stored value
    fb = nk.ntk_features(model.to(torch.bfloat16), x.to(torch.bfloat16), dim=32, seed=2)
    assert fb.dtype == torch.bfloat16
    assert _rel(fb.double(), f64) < 3e-2


def test_bad_input_is_refused_with_what_was_expected():
    model, x, _ = make("mlp")
    n_params = sum(p.numel() for p in model.parameters())
    with pytest.raises(ValueError, match="dim must be a positive integer"):
        nk.ntk_features(model, x, dim=0)
    with pytest.raises(TypeError, match="dim must be a positive integer"):
        nk.ntk_features(model, x, dim=2.5)
    with pytest.raises(ValueError, match=f"P={n_params}.*exact kernel is cheaper"):
        nk.ntk_features(model, x, dim=n_params + 1)
    with pytest.raises(ValueError, match="no parameters"):
        nk.ntk_features(nn.Tanh(), x, dim=4)
    with pytest.raises(ValueError, match="x is on meta but the model's parameters are on cpu"):
        nk.ntk_features(model, torch.empty(3, 6, device="meta", dtype=torch.float64), dim=4)
    with pytest.raises(ValueError, match="mode must be one of"):
        nk.ntk_features(model, x, dim=4, mode="diagonal")
    with pytest.raises(ValueError, match="max_memory=.*cannot hold projected features"):
        nk.ntk_features(model, x, dim=4, max_memory=1000)
    with pytest.raises(ValueError, match="needs dim=k"):
        nk.empirical_ntk(model, x, implementation="projected")
    with pytest.raises(ValueError, match="only used with implementation='projected'"):
        nk.empirical_ntk(model, x, dim=8)
    with pytest.raises(ValueError, match="per_parameter=True is not available"):
        nk.empirical_ntk(model, x, implementation="projected", dim=8, per_parameter=True)
    with pytest.raises(ValueError, match="contains 1 NaN"):
        nk.ntk_features(model, torch.where(x == x[0, 0], torch.nan, x), dim=4)


def test_many_seeds_resolve_a_small_bias():
    """300 draws: the mean's error is ~rms/17, so a 3% scale error (6% in the kernel) fails."""
    model, x1, x2 = make("mlp")
    x = torch.cat([x1[:2], x2[:2]])
    ref = _reference(model, x, None, "trace")
    seeds = 300
    kernels = torch.stack(
        [
            _kernel(*(2 * [nk.ntk_features(model, x, dim=160, seed=s)]), "trace")
            for s in range(seeds)
        ]
    )
    rms = math.sqrt(float(((kernels - ref) ** 2).sum((1, 2)).mean()) / float(ref.norm() ** 2))
    assert _rel(kernels.mean(0), ref) < 3 * rms / math.sqrt(seeds) < 0.03


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", ["cnn", "attention"])
def test_cuda_features_equal_cpu_features(name):
    model, x, _ = make(name)
    want = nk.ntk_features(model, x, dim=64, mode="full", seed=1, progress=False)
    model = model.cuda()
    got = nk.ntk_features(model, x.cuda(), dim=64, mode="full", seed=1, progress=False)
    assert got.device.type == "cuda"
    assert _rel(got.cpu(), want) < 1e-10  # same hashes: drawn on the CPU, then moved
    with pytest.raises(ValueError, match="x is on cpu but the model's parameters are on cuda"):
        nk.ntk_features(model, x, dim=64)
