"""Standard / NTK / muP: the table by hand, the coordinate check, NTK limit, refusals."""

import math

import numpy as np
import pytest
import torch
from torch import nn

import ntkit as nk
from ntkit import layers as L
from ntkit.parametrization import parametrize


def _mlp(width, d=16, out=4):
    return nn.Sequential(
        nn.Linear(d, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, out)
    )


def test_mup_table_by_hand():
    width, base, d = 256, 32, 16
    m = width / base
    model = _mlp(width, d)
    par = parametrize(model, "mup", base_width=base, w_std=1.5, b_std=0.2, seed=0)
    raw = {s.name: p for s in par.scales for n, p in model.named_parameters() if n == s.name}
    by = {(s.module, s.is_bias): s for s in par.scales}
    # role, expected raw std, multiplier, SGD scale, Adam scale (Tensor Programs V, Table 3
    # rewritten relative to the base width)
    expected = {
        ("0", False): ("input", 1.5 / math.sqrt(d), 1.0, m, 1.0),
        ("0", True): ("input", 0.2, 1.0, m, 1.0),
        ("2", False): ("hidden", 1.5 / math.sqrt(width), 1.0, 1.0, 1 / m),
        ("2", True): ("hidden", 0.2, 1.0, m, 1.0),
        ("4", False): ("output", 1.5 / math.sqrt(base), 1 / m, m, 1.0),
        ("4", True): ("output", 0.2, 1.0, 1.0, 1.0),
    }
    for key, (role, std, mult, sgd, adam) in expected.items():
        s = by[key]
        assert (s.role, s.multiplier, s.lr_sgd, s.lr_adam) == (
            role,
            pytest.approx(mult),
            pytest.approx(sgd),
            pytest.approx(adam),
        )
        sample_std = float(raw[s.name].detach().std())
        n = raw[s.name].numel()
        # sample std of n Gaussian draws: relative standard error 1/sqrt(2n); 5 sigma
        assert sample_std == pytest.approx(std, rel=5 / math.sqrt(2 * n))
    # the forward pass uses the multiplier: recompute the network by hand from raw tensors
    x = torch.randn(5, d)
    w = {k: raw[by[k].name].detach() for k in expected}
    h = torch.relu(x @ w[("0", False)].T + w[("0", True)])
    h = torch.relu(h @ w[("2", False)].T + w[("2", True)])
    ref = h @ (w[("4", False)] / m).T + w[("4", True)]
    torch.testing.assert_close(model(x), ref, rtol=1e-5, atol=1e-6)
    groups = par.param_groups(0.1, optimizer="adam")
    lrs = sorted(g["lr"] for g in groups)
    assert lrs == pytest.approx([0.1 / m, 0.1])
    assert sum(len(g["params"]) for g in groups) == 6


def test_standard_ntk_and_mup_at_base_width_define_the_same_function():
    x = torch.randn(7, 16)
    outs = []
    for kind in ("standard", "ntk", "mup"):
        model = _mlp(32)
        par = parametrize(model, kind, base_width=32, w_std=1.3, b_std=0.1, seed=3)
        outs.append(model(x))
        if kind != "ntk":
            assert all(s.lr_sgd == 1 and s.lr_adam == 1 for s in par.scales)
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(outs[0], outs[2], rtol=1e-5, atol=1e-6)


def _coordinate_changes(kind, optimizer, width, lr, steps=4):
    model = _mlp(width)
    par = parametrize(model, kind, base_width=64, w_std=1.0, seed=0)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(32, 16, generator=g), torch.randn(32, 4, generator=g)
    feats = {}
    for i in (0, 2, 4):
        model[i].register_forward_hook(lambda mod, a, o, i=i: feats.__setitem__(i, o.detach()))
    model(x)
    before = dict(feats)
    cls = torch.optim.SGD if optimizer == "sgd" else torch.optim.Adam
    opt = cls(par.param_groups(lr, optimizer=optimizer))
    for _ in range(steps):
        opt.zero_grad()
        ((model(x) - y) ** 2).mean().backward()
        opt.step()
    model(x)
    return [float((feats[i] - before[i]).pow(2).mean().sqrt()) for i in (0, 2, 4)]


@pytest.mark.parametrize("optimizer,lr", [("sgd", 0.1), ("adam", 0.01)])
def test_coordinate_check(optimizer, lr):
    # RMS change of every layer's pre-activations after 4 steps, widths 128..1024 at one
    # learning rate: muP keeps it width-independent (fitted log-log slope ~0; measured
    # |slope| <= 0.12, bound 0.25), while the standard parameterization's hidden-layer
    # change grows with width (measured slopes 1.8 SGD, 0.9 Adam; bound 0.5)
    torch.manual_seed(0)
    widths = [128, 256, 512, 1024]
    with torch.random.fork_rng():
        mup = np.array([_coordinate_changes("mup", optimizer, w, lr) for w in widths])
        sp = np.array([_coordinate_changes("standard", optimizer, w, lr) for w in widths])
    slope = lambda v: np.polyfit(np.log(widths), np.log(v), 1)[0]  # noqa: E731
    assert max(abs(slope(mup[:, j])) for j in range(3)) < 0.25
    assert slope(sp[:, 1]) > 0.5


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_folded_learning_rates_train_identically(optimizer):
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(16, 8, generator=g, dtype=torch.float64), torch.randn(16, 2, generator=g)
    y = y.double()
    outs = []
    for fold in (None, optimizer):
        model = _mlp(64, d=8, out=2).double()
        par = parametrize(model, "mup", base_width=16, seed=5, fold_lr=fold)
        lr = 0.05 if optimizer == "sgd" else 0.003
        if fold is None:
            groups = par.param_groups(lr, optimizer=optimizer)
        else:
            groups = [{"params": list(model.parameters()), "lr": lr}]
            assert set(par.lr_scales(optimizer).values()) == {1.0}
        kw = {} if optimizer == "sgd" else {"eps": 1e-30}  # Adam's eps breaks scale invariance
        opt = (torch.optim.SGD if optimizer == "sgd" else torch.optim.Adam)(groups, **kw)
        for _ in range(5):
            opt.zero_grad()
            ((model(x) - y) ** 2).mean().backward()
            opt.step()
        outs.append(model(x).detach())
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-9, atol=1e-12)


def test_ntk_parameterization_converges_to_analytic_ntk():
    spec = L.serial(
        L.Dense(1, 1.5, 0.05), L.ReLU(), L.Dense(1, 1.5, 0.05), L.ReLU(), L.Dense(1, 1.5, 0.05)
    )
    x = torch.randn(12, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    exact = spec.kernel(x).ntk
    errors = []
    for width in (64, 2048):
        model = nn.Sequential(
            nn.Linear(10, width),
            nn.ReLU(),
            nn.Linear(width, width),
            nn.ReLU(),
            nn.Linear(width, 1),
        ).double()
        parametrize(model, "ntk", w_std=1.5, b_std=0.05, seed=1)
        emp = nk.empirical_ntk(model, x, mode="trace")
        errors.append(float(torch.linalg.norm(emp - exact) / torch.linalg.norm(exact)))
    # Monte Carlo error ~ c / sqrt(width) (c ~ 2.5 for this depth-3 net, README's
    # ntk-convergence: 5.7% at 2048): bound 0.15 at 2048, and a clear fall from width 64
    assert errors[1] < 0.15
    assert errors[1] < errors[0] / 2


def test_net_module_parameterization():
    net = L.serial(
        L.Dense(64, 1.5, 0.1), L.ReLU(), L.Dense(64, 1.5, 0.1), L.ReLU(), L.Dense(3, 1.5, 0.1)
    )
    model = net.module((5,), parameterization="mup", base_width=16, dtype=torch.float64)
    # the same table through torch parametrizations on plain nn.Linear layers: the draws
    # come in the same order from the same seed, so the functions agree exactly
    plain = nn.Sequential(
        nn.Linear(5, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 3)
    ).double()
    parametrize(plain, "mup", base_width=16, w_std=1.5, b_std=0.1, seed=0)
    x = torch.randn(4, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    # net.module stores weights in float32 before casting to dtype: float32 rounding
    torch.testing.assert_close(model(x), plain(x), rtol=1e-5, atol=1e-6)
    # a second parametrize reads the remembered gains, not the multipliers
    par = parametrize(model, "standard", seed=0)
    std_model = net.module((5,), parameterization="standard", dtype=torch.float64)
    # same float32 rounding as above (the re-parametrized weights are rescaled float32 draws)
    torch.testing.assert_close(model(x), std_model(x), rtol=1e-5, atol=1e-6)
    assert all(s.multiplier == 1.0 for s in par.scales)
    with pytest.raises(ValueError, match="no infinite-width NTK under muP"):
        L.Dense(3, parameterization="mup")
    std_layer = L.serial(L.Dense(8, parameterization="standard"), L.ReLU(), L.Dense(1))
    with pytest.raises(ValueError, match=r"declared 'standard': '0' \(Linear\)"):
        std_layer.module((3,), parameterization="mup", base_width=4)


def test_bad_input():
    with pytest.raises(ValueError, match=r"'1' \(LayerNorm\)"):
        parametrize(
            nn.Sequential(nn.Linear(3, 8), nn.LayerNorm(8), nn.Linear(8, 1)), "mup", base_width=4
        )
    with pytest.raises(ValueError, match="exactly one of base_width"):
        parametrize(_mlp(32), "mup")
    with pytest.raises(ValueError, match="parameterization must be one of"):
        parametrize(_mlp(32), "mean-field")
    with pytest.raises(ValueError, match="same architecture"):
        parametrize(_mlp(32), "mup", base_model=nn.Sequential(nn.Linear(16, 8)))
    par = parametrize(_mlp(32), "mup", base_width=8, fold_lr="sgd")
    with pytest.raises(ValueError, match="folded"):
        par.param_groups(0.1, optimizer="adam")
    with pytest.raises(ValueError, match="roles names"):
        parametrize(_mlp(32), "mup", base_width=8, roles={"9": "output"})


def test_base_model_roles_for_uneven_widths():
    def net(w):
        return nn.Sequential(
            nn.Linear(6, w), nn.ReLU(), nn.Linear(w, 4 * w), nn.ReLU(), nn.Linear(4 * w, 2)
        )

    par = parametrize(net(64), "mup", base_model=net(16), seed=0)
    weights = {s.module: s for s in par.scales if not s.is_bias}
    assert [weights[k].role for k in ("0", "2", "4")] == ["input", "hidden", "output"]
    assert [weights[k].width_mult for k in ("0", "2", "4")] == [4.0, 4.0, 4.0]
