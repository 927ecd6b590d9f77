"""linearize / taylor_expand: finite differences and the closed-form kernel dynamics."""

import copy

import pytest
import torch
from torch import nn

import ntkit as nk


def _mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(3, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 2)
    ).double()


def _moved(model, delta, eps):
    """A copy of ``model`` with parameters theta0 + eps * delta."""
    m = copy.deepcopy(model)
    with torch.no_grad():
        for n, p in m.named_parameters():
            p.add_(eps * delta[n])
    return m


def _set(lin, model, delta, eps):
    with torch.no_grad():
        for n, p in model.named_parameters():
            lin.params[n.replace(".", "-")].copy_(p + eps * delta[n])


def test_linearize_matches_the_network_to_first_order():
    model = _mlp()
    x = torch.randn(7, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(2)
    delta = {
        n: torch.randn(p.shape, generator=g, dtype=p.dtype) for n, p in model.named_parameters()
    }
    lin = nk.linearize(model)
    assert torch.allclose(lin(x), model(x), atol=0, rtol=0)
    # the first-order term equals a central finite difference of the network
    h = 1e-5
    fd = (_moved(model, delta, h)(x) - _moved(model, delta, -h)(x)) / (2 * h)
    _set(lin, model, delta, 1.0)
    jdelta = lin(x) - model(x)
    assert torch.allclose(jdelta, fd, rtol=1e-7, atol=1e-8)
    # and the remainder is second order: error(eps) / eps^2 stays bounded and nonzero
    errs = []
    for eps in (1e-2, 1e-3):
        _set(lin, model, delta, eps)
        errs.append(float((lin(x) - _moved(model, delta, eps)(x)).detach().abs().max()))
    assert 50 < errs[0] / errs[1] < 200


def test_taylor_expansion_orders():
    model = _mlp(3)
    x = torch.randn(5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    g = torch.Generator().manual_seed(5)
    delta = {
        n: torch.randn(p.shape, generator=g, dtype=p.dtype) for n, p in model.named_parameters()
    }
    for k in (1, 2, 3):
        tk = nk.taylor_expand(model, k)
        errs = []
        for eps in (2e-2, 2e-3):
            _set(tk, model, delta, eps)
            errs.append(float((tk(x) - _moved(model, delta, eps)(x)).detach().abs().max()))
        rate = errs[0] / errs[1]
        assert 10 ** (k + 1) / 3 < rate < 10 ** (k + 1) * 3, (k, rate)


def test_taylor_expansion_of_a_quadratic_model_is_exact_at_degree_two():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2)).double()  # bilinear in params
    x = torch.randn(6, 3, dtype=torch.float64)
    g = torch.Generator().manual_seed(1)
    delta = {
        n: torch.randn(p.shape, generator=g, dtype=p.dtype) for n, p in model.named_parameters()
    }
    t1, t2 = nk.taylor_expand(model, 1), nk.taylor_expand(model, 2)
    _set(t1, model, delta, 0.5)
    _set(t2, model, delta, 0.5)
    want = _moved(model, delta, 0.5)(x)
    assert float((t2(x) - want).detach().abs().max()) < 1e-12
    assert float((t1(x) - want).detach().abs().max()) > 1e-3
    t0 = nk.taylor_expand(model, 0)
    assert torch.equal(t0(x), model(x))


def test_training_the_linearized_model_follows_kernel_dynamics():
    model = _mlp(7)
    g = torch.Generator().manual_seed(8)
    X = torch.randn(6, 3, generator=g, dtype=torch.float64)
    Y = torch.randn(6, 2, generator=g, dtype=torch.float64)
    n, o = Y.shape
    theta = nk.empirical_ntk(model, X, mode="full")  # (n, n, O, O)
    K = theta.permute(0, 2, 1, 3).reshape(n * o, n * o)
    f0 = model(X).detach().reshape(-1)
    y = Y.reshape(-1)
    eta = 0.5 / float(torch.linalg.eigvalsh(K).max())

    lin = nk.linearize(model)
    opt = torch.optim.SGD(lin.parameters(), lr=eta)
    eye = torch.eye(n * o, dtype=torch.float64)
    for t in range(1, 31):
        opt.zero_grad()
        loss = 0.5 * ((lin(X) - Y) ** 2).sum()
        loss.backward()
        opt.step()
        if t in (1, 10, 30):
            ft = lin(X).detach().reshape(-1)
            # discrete gradient descent: f_t = Y + (I - eta Theta)^t (f_0 - Y)
            closed = y + torch.linalg.matrix_power(eye - eta * K, t) @ (f0 - y)
            assert float((ft - closed).abs().max()) < 1e-10, t
    # gradient flow: with a small step, f_t ~ Y + exp(-eta Theta t)(f_0 - Y)
    lin = nk.linearize(model)
    small, steps = eta / 20, 400
    opt = torch.optim.SGD(lin.parameters(), lr=small)
    for _ in range(steps):
        opt.zero_grad()
        (0.5 * ((lin(X) - Y) ** 2).sum()).backward()
        opt.step()
    flow = y + torch.linalg.matrix_exp(-small * steps * K) @ (f0 - y)
    ft = lin(X).detach().reshape(-1)
    assert float((ft - flow).abs().max()) < 2e-2 * float((f0 - y).abs().max())


def test_linearize_subset_function_and_device_moves():
    model = _mlp(1)
    x = torch.randn(4, 3, dtype=torch.float64)
    lin = nk.linearize(model, params=["4.weight", "4.bias"])
    assert sorted(n for n, _ in lin.named_parameters()) == ["params.4-bias", "params.4-weight"]
    assert torch.allclose(lin(x), model(x))

    def f(p, x):
        return torch.tanh(x @ p["w"]) @ p["v"]

    p = {"w": torch.randn(3, 5, dtype=torch.float64), "v": torch.randn(5, 2, dtype=torch.float64)}
    lin_f = nk.linearize(f, params=p)
    assert torch.allclose(lin_f(x), f(p, x))


def test_linearize_errors():
    bn = nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3))
    with pytest.raises(ValueError, match="eval"):
        nk.linearize(bn)
    with pytest.raises(ValueError, match="degree"):
        nk.taylor_expand(_mlp(), -1)
    with pytest.raises(ValueError, match="not parameters"):
        nk.linearize(_mlp(), params=["nope"])
    with pytest.raises(TypeError):
        nk.linearize(3)
