"""Structured rules: which parameters they cover, user rules, contraction strategies, memory."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import ntkit as nk
from ntkit.empirical.factors import Kron, OneHot, contract, materialize
from ntkit.empirical.functional import functionalize, transform_safe
from ntkit.empirical.profile import profile
from ntkit.empirical.structured import _REGISTRY
from tests.empirical.empirical_zoo import brute_jacobian, brute_ntk, make


def _rel(a, b):
    return float((a - b).abs().max() / b.abs().max())


def _profile(model, x):
    with transform_safe():
        return profile(functionalize(model), x[:1])


def test_rules_cover_module_parameters_and_leave_the_rest_generic():
    model, x1, _ = make("attention")
    prof = _profile(model, x1)
    # MultiheadAttention calls F.multi_head_attention_forward with out_proj's weight
    # directly (out_proj.forward never runs), so its parameters must stay generic.
    assert set(prof.generic) == {
        "attn.in_proj_weight",
        "attn.in_proj_bias",
        "attn.out_proj.weight",
        "attn.out_proj.bias",
    }
    assert {"emb.weight", "ln.weight", "ln.bias", "ln2.weight", "out.weight"} <= set(prof.covered)


def test_tied_and_reused_parameters():
    model, x1, _ = make("tied")
    prof = _profile(model, x1)
    assert "a.weight" in prof.generic  # tied between two modules
    assert "a.bias" in prof.covered  # one module called twice: positions add up
    model, x1, _ = make("tied_embedding")
    assert "emb.weight" in _profile(model, x1).generic  # also used as the readout matrix


class LinearWithNoise(nn.Linear):
    """A subclass that overrides forward: the Linear rule must not apply."""

    def forward(self, x):
        return F.linear(x, self.weight * 1.5, self.bias) + torch.sin(x).sum(-1, keepdim=True)


class KeepsLinearForward(nn.Linear):
    pass


def test_subclasses_use_the_rule_only_if_they_keep_forward():
    torch.manual_seed(0)
    model = nn.Sequential(LinearWithNoise(4, 3), nn.Tanh(), KeepsLinearForward(3, 2)).double()
    x1, x2 = torch.randn(3, 4, dtype=torch.float64), torch.randn(2, 4, dtype=torch.float64)
    prof = _profile(model, x1)
    assert set(prof.generic) == {"0.weight", "0.bias"}
    assert set(prof.covered) == {"2.weight", "2.bias"}
    got = nk.empirical_ntk(model, x1, x2, implementation="structured")
    assert _rel(got, brute_ntk(model, x1, x2)) < 1e-12


def test_parametrized_weight_goes_generic_and_stays_exact():
    torch.manual_seed(0)
    lin = nn.Linear(4, 3).double()
    nn.utils.parametrizations.weight_norm(lin)
    model = nn.Sequential(lin, nn.Tanh(), nn.Linear(3, 2).double())
    x1, x2 = torch.randn(3, 4, dtype=torch.float64), torch.randn(2, 4, dtype=torch.float64)
    got = nk.empirical_ntk(model, x1, x2, implementation="structured")
    assert _rel(got, brute_ntk(model, x1, x2)) < 1e-12


class Scale(nn.Module):
    """y = x * w (per feature): a module ntkit has no rule for."""

    def __init__(self, d):
        super().__init__()
        self.w = nn.Parameter(torch.randn(d))

    def forward(self, x):
        return x * self.w


def test_register_rule_for_a_user_module():
    calls = []

    def scale_rule(module, x, g, names):
        calls.append(x.shape)
        n, k = g.shape[:2]
        d = module.w.shape[0]
        j = (g.reshape(n, k, -1, d) * x.reshape(n, 1, -1, d)).sum(2)
        return {"w": nk.empirical.Dense(j)}

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), Scale(4), nn.Tanh(), nn.Linear(4, 2)).double()
    x1, x2 = torch.randn(3, 3, dtype=torch.float64), torch.randn(2, 3, dtype=torch.float64)
    assert "1.w" in _profile(model, x1).generic
    try:
        nk.register_rule(Scale, scale_rule, params=("w",))
        assert "1.w" in _profile(model, x1).covered
        got = nk.empirical_ntk(model, x1, x2, mode="full", implementation="structured")
    finally:
        _REGISTRY.pop(Scale, None)
    assert calls, "the registered rule was not used"
    assert _rel(got, brute_ntk(model, x1, x2)) < 1e-12


def test_register_rule_rejects_instances():
    with pytest.raises(TypeError, match="class, not an instance"):
        nk.register_rule(nn.Linear(2, 2), lambda *a: {})


@pytest.mark.parametrize("how", ["full", "trace", "diag"])
def test_kron_gram_and_materialized_contractions_agree(how):
    g = torch.Generator().manual_seed(0)
    n1, k, p, a, b = 3, 2, 5, 4, 6
    f1 = Kron(
        torch.randn(n1, k, p, a, generator=g, dtype=torch.float64),
        torch.randn(n1, p, b, generator=g, dtype=torch.float64),
    )
    f2 = (
        f1
        if how == "diag"
        else Kron(
            torch.randn(4, k, 3, a, generator=g, dtype=torch.float64),
            torch.randn(4, 3, b, generator=g, dtype=torch.float64),
        )
    )
    from ntkit.empirical.factors import _dense_contract, _kron_gram

    want = _dense_contract(materialize(f1), materialize(f2), how, False)
    got = _kron_gram(f1, f2, how, False)
    assert _rel(got, want) < 1e-13
    # brute force from explicit per-sample Jacobians sum_p g_p (x) x_p
    j1 = torch.einsum("ikpa,ipb->ikab", f1.g, f1.x).flatten(2)
    j2 = torch.einsum("ikpa,ipb->ikab", f2.g, f2.x).flatten(2)
    eq = {"full": "iad,jbd->iajb", "trace": "iad,jad->ij", "diag": "iad,ibd->iab"}[how]
    ref = torch.einsum(eq, j1, j2)
    assert _rel(got, ref) < 1e-13
    assert _rel(contract(f1, f2, how), ref) < 1e-13


def test_one_hot_factor_with_padding_mask():
    g = torch.Generator().manual_seed(1)
    idx1 = torch.tensor([[1, 0, 2], [2, 2, 3]])
    idx2 = torch.tensor([[0, 3, 1]])
    m1, m2 = (idx1 != 0).double(), (idx2 != 0).double()
    f1 = Kron(torch.randn(2, 2, 3, 4, generator=g, dtype=torch.float64), OneHot(idx1, 5, m1))
    f2 = Kron(torch.randn(1, 2, 3, 4, generator=g, dtype=torch.float64), OneHot(idx2, 5, m2))
    oh1 = F.one_hot(idx1, 5).double() * m1[..., None]
    oh2 = F.one_hot(idx2, 5).double() * m2[..., None]
    j1 = torch.einsum("ikpa,ipv->ikva", f1.g, oh1).flatten(2)
    j2 = torch.einsum("ikpa,ipv->ikva", f2.g, oh2).flatten(2)
    from ntkit.empirical.factors import _kron_gram

    assert _rel(_kron_gram(f1, f2, "full", False), torch.einsum("iad,jbd->iajb", j1, j2)) < 1e-13


def _all_at_once_peak(model, x1, x2, mode, impl):
    from ntkit.empirical.cost import estimate
    from ntkit.empirical.modes import mode_spec

    prof = _profile(model, x1)
    spec = mode_spec(mode, None, prof.out_numel)
    n2 = x1.shape[0] if x2 is None else x2.shape[0]
    est = estimate(prof, spec, x1.shape[0], n2, x2 is None, 8, 2**40, "cpu")[impl]
    return est.peak_bytes, prof, spec


@pytest.mark.parametrize(
    ("name", "impl"),
    [("mlp", "jacobian"), ("mlp", "ntvp"), ("cnn", "structured"), ("attention", "structured")],
)
def test_small_memory_budget_chunks_and_gives_the_same_kernel(name, impl):
    from ntkit.empirical.cost import estimate

    model, x1, x2 = make(name)
    cases = [("full", x2), ("full", None), ("trace", None), ("diagonal", None)]
    if name != "mlp":  # slower models: one asymmetric and one symmetric case
        cases = [("full", x2), ("trace", None)]
    for mode, other in cases:
        want = nk.empirical_ntk(model, x1, other, mode=mode, implementation=impl)
        peak, prof, spec = _all_at_once_peak(model, x1, other, mode, impl)
        n2 = x1.shape[0] if other is None else other.shape[0]
        for frac in (0.8, 0.6, 0.4, 0.25):  # a budget below the all-at-once peak that fits
            budget = int(peak * frac)
            est = estimate(prof, spec, x1.shape[0], n2, other is None, 8, budget, "cpu")
            if impl in est:
                break
        plan = est[impl].plan
        chunked = (
            plan[0] < n2 * spec.n_directions
            if impl == "ntvp"
            else (plan.rows < max(x1.shape[0], n2) or plan.dirs < spec.n_directions)
        )
        assert chunked, (mode, plan)
        got = nk.empirical_ntk(model, x1, other, mode=mode, implementation=impl, max_memory=budget)
        assert _rel(got, want) < 1e-13, mode


def test_chunk_plan_really_chunks():
    from ntkit.empirical.assemble import plan_chunks
    from ntkit.empirical.modes import mode_spec

    spec = mode_spec("full", None, 10)
    plan = plan_chunks(spec, 100, 100, True, 1000.0, 4000.0, 8, budget=10_000_000)
    assert plan.rows < 100 and plan.peak <= 10_000_000
    plan = plan_chunks(spec, 100, 100, True, 1000.0, 4000.0, 8, budget=8_020_000)
    assert plan.dirs < 10


def test_impossible_budget_refuses_with_the_estimate():
    model, x1, x2 = make("mlp")
    with pytest.raises(ValueError, match=r"max_memory=.*needs .*mode='trace'"):
        nk.empirical_ntk(model, x1, x2, mode="full", max_memory=1000)
    with pytest.raises(ValueError, match="max_memory"):
        nk.empirical_ntk(model, x1, x2, mode="full", implementation="jacobian", max_memory=1000)


def test_auto_prefers_structured_for_a_wide_mlp():
    from ntkit.empirical.cost import choose, estimate
    from ntkit.empirical.modes import mode_spec

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 10))
    prof = _profile(model, torch.randn(1, 64))
    for mode in ["full", "trace", "sum_logits"]:
        est = estimate(prof, mode_spec(mode, None, 10), 128, 128, True, 4, 2**32, "cpu")
        assert choose(est) == "structured"


class SeqFirst(nn.Module):
    """Inner layers see (L, n, d): the batch is not on the leading axis."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 4)
        self.ln = nn.LayerNorm(4)
        self.out = nn.Linear(4, 2)

    def forward(self, x):  # x: (n, L, 3)
        h = self.ln(torch.tanh(self.lin(x.transpose(0, 1))))  # (L, n, 4)
        return self.out(h.mean(0))


class Centering(nn.Module):
    """Couples the samples of a batch (subtracts the batch mean)."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 4)
        self.out = nn.Linear(4, 2)

    def forward(self, x):
        h = torch.tanh(self.lin(x))
        return self.out(h - h.mean(0, keepdim=True))


def test_batch_coupled_model_is_refused():
    """A model coupling the samples of a batch has no per-sample NTK; refuse it."""
    model = Centering().double()
    x = torch.randn(4, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match="depends on the other samples in the batch"):
        nk.empirical_ntk(model, x, implementation="structured")


@pytest.mark.parametrize("cls", [SeqFirst])
def test_models_that_need_the_per_sample_path(cls):
    torch.manual_seed(0)
    model = cls().double()
    shape = (5, 3) if cls is SeqFirst else (3,)
    x1 = torch.randn(4, *shape, dtype=torch.float64)
    x2 = torch.randn(3, *shape, dtype=torch.float64)
    with transform_safe():
        prof = profile(functionalize(model), x1[:2])
    assert not prof.batched
    assert set(prof.covered) == {n for n, _ in model.named_parameters()}
    want = brute_ntk(model, x1, x2)  # one sample at a time
    for mode in ("full", "trace"):
        got = nk.empirical_ntk(model, x1, x2, mode=mode, implementation="structured")
        ref = want if mode == "full" else torch.einsum("ijaa->ij", want)
        assert _rel(got, ref) < 1e-12


def test_zoo_models_take_the_batched_path():
    for name in ("mlp", "cnn", "resblock", "attention", "multiout"):
        model, x1, _ = make(name)
        with transform_safe():
            assert profile(functionalize(model), x1[:2]).batched, name


@pytest.mark.parametrize("n", [70, 67, 700])
def test_block_symmetric_grams_on_a_large_symmetric_kernel(n):
    """n K >= 640 rows (full) or n >= 640 (trace) with width >= 128 take the
    block-triangular Gram path (blocks of whole samples, scaled in place) + mirror."""
    from ntkit.empirical.factors import sym_bounds

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 130), nn.Tanh(), nn.Linear(130, 10)).double()
    x = torch.randn(n, 5, dtype=torch.float64)
    j = brute_jacobian(model, x)
    want = torch.einsum("iap,jbp->ijab", j, j)
    modes = ("full", "trace") if n >= 640 else ("full",)
    for impl in ("structured", "jacobian"):
        for mode in modes:
            got = nk.empirical_ntk(model, x, mode=mode, implementation=impl)
            ref = want if mode == "full" else torch.einsum("ijaa->ij", want)
            assert _rel(got, ref) < 1e-12, (impl, mode)
            assert torch.equal(
                got, got.transpose(0, 1) if mode == "trace" else got.permute(1, 0, 3, 2)
            )
    bounds = sym_bounds(n * 10, unit=10)
    assert bounds is not None and all(b % 10 == 0 for b in bounds)


def test_profile_cache_follows_structural_changes():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2)).double()
    x = torch.randn(3, 4, dtype=torch.float64)
    first = _profile(model, x)
    assert set(first.covered) == {"0.weight", "0.bias", "2.weight", "2.bias"}
    again = _profile(model, x)
    assert again.covered == first.covered and again.fm is not first.fm
    model[0] = LinearWithNoise(4, 3).double()  # replaced submodule: analysed afresh
    assert set(_profile(model, x).generic) == {"0.weight", "0.bias"}
    with torch.no_grad():  # new parameter values: same profile, kernels follow the values
        model[2].weight.mul_(2.0)
    got = nk.empirical_ntk(model, x, implementation="structured")
    assert _rel(got, brute_ntk(model, x)) < 1e-12


@pytest.mark.parametrize("with_x2", [False, True])
def test_uneven_direction_chunks_under_tight_budgets(with_x2):
    """Budgets that split the K = 3 outputs into chunks of 2 and 1 (and other splits)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3)).double()
    x1 = torch.randn(3, 4, dtype=torch.float64)
    x2 = torch.randn(2, 4, dtype=torch.float64) if with_x2 else None
    want = brute_ntk(model, x1, x2)
    computed = 0
    for budget in range(2000, 12000, 150):
        for mode in ("full", "trace"):
            try:
                got = nk.empirical_ntk(
                    model, x1, x2, mode=mode, implementation="structured", max_memory=budget
                )
            except ValueError:  # too small for one sample and one direction
                continue
            ref = want if mode == "full" else torch.einsum("ijaa->ij", want)
            assert _rel(got, ref) < 1e-12, (budget, mode)
            computed += 1
    assert computed > 20
