"""FGSM and PGD against closed forms on linear models, and their guarantees on an MLP."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ntkit.attacks import fgsm, pgd


def _mlp(seed=0, d=6, classes=3):
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(d, 32), torch.nn.Tanh(), torch.nn.Linear(32, classes)
    ).double()


def _data(seed=1, n=16, d=6, classes=3):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, d, generator=g, dtype=torch.float64)
    y = torch.randint(0, classes, (n,), generator=g)
    return x, y


def test_fgsm_linf_matches_hand_gradient_on_linear_mse():
    # f(x) = W x + b, loss 0.5 ||f(x) - y||^2: gradient W^T (W x + b - y) by hand in numpy
    rng = np.random.default_rng(0)
    W, b = rng.standard_normal((3, 5)), rng.standard_normal(3)
    x, y = rng.standard_normal((8, 5)), rng.standard_normal((8, 3))
    lin = torch.nn.Linear(5, 3).double()
    with torch.no_grad():
        lin.weight.copy_(torch.from_numpy(W))
        lin.bias.copy_(torch.from_numpy(b))
    grad = (x @ W.T + b - y) @ W
    for norm, step in (
        ("linf", np.sign(grad)),
        ("l2", grad / np.linalg.norm(grad, axis=1, keepdims=True)),
    ):
        got = fgsm(lin, torch.from_numpy(x), torch.from_numpy(y), eps=0.3, norm=norm, loss="mse")
        np.testing.assert_allclose(got.numpy(), x + 0.3 * step, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_pgd_reaches_closed_form_maximum_for_scalar_linear_model(norm):
    # f(x) = w.x, loss 0.5 (w.x + w.d - y)^2 over the ball ||d|| <= eps is maximised at
    # d = eps sign(r) w/||w||_2 (l2) or eps sign(r) sign(w) (linf), r = w.x - y:
    # max loss 0.5 (|r| + eps ||w||_dual)^2 with the dual norm l2 resp. l1.
    rng = np.random.default_rng(1)
    w = rng.standard_normal(7)
    x, y = rng.standard_normal((10, 7)), rng.standard_normal(10)
    eps = 0.2
    wt = torch.from_numpy(w)
    got = pgd(
        lambda z: z @ wt,
        torch.from_numpy(x),
        torch.from_numpy(y),
        eps=eps,
        steps=20,
        norm=norm,
        loss="mse",
    ).numpy()
    r = x @ w - y
    dual = np.linalg.norm(w) if norm == "l2" else np.abs(w).sum()
    loss = 0.5 * (got @ w - y) ** 2
    np.testing.assert_allclose(loss, 0.5 * (np.abs(r) + eps * dual) ** 2, rtol=1e-10)


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("random_start", [False, True])
def test_pgd_increases_loss_inside_ball_and_range(norm, random_start):
    model = _mlp()
    x, y = _data()
    eps = 0.1 if norm == "linf" else 0.3
    before = [p.grad for p in model.parameters()]
    x_adv = pgd(
        model,
        x,
        y,
        eps=eps,
        steps=10,
        norm=norm,
        clamp=(0.0, 1.0),
        random_start=random_start,
        seed=3,
    )
    assert all(p.grad is None for p in model.parameters()) and all(b is None for b in before)
    delta = (x_adv - x).reshape(len(x), -1)
    size = delta.abs().max(1).values if norm == "linf" else delta.norm(dim=1)
    assert float(size.max()) <= eps * (1 + 1e-12)
    assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
    with torch.no_grad():
        clean = F.cross_entropy(model(x), y, reduction="none")
        adv = F.cross_entropy(model(x_adv), y, reduction="none")
        one_step = F.cross_entropy(
            model(fgsm(model, x, y, eps=eps, norm=norm, clamp=(0.0, 1.0))), y, reduction="none"
        )
    # every sample's loss strictly increases (the gradient is nonzero at every clean input)
    assert bool((adv > clean + 1e-3).all())
    assert float(adv.mean()) >= float(one_step.mean()) * 0.999  # 10 steps beat one


def test_fgsm_respects_range_and_increases_loss():
    model = _mlp(seed=2)
    x, y = _data(seed=4)
    x_adv = fgsm(model, x, y, eps=0.05, clamp=(0.0, 1.0))
    assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
    assert float((x_adv - x).abs().max()) <= 0.05 + 1e-15
    with torch.no_grad():
        assert F.cross_entropy(model(x_adv), y) > F.cross_entropy(model(x), y)


def test_custom_loss_and_eps_zero():
    model = _mlp()
    x, y = _data()
    margin = lambda out, t: -out.gather(1, t[:, None])[:, 0]  # noqa: E731
    x_adv = pgd(model, x, y, eps=0.1, steps=5, loss=margin)
    with torch.no_grad():
        assert bool((margin(model(x_adv), y) >= margin(model(x), y)).all())
    assert torch.equal(pgd(model, x, y, eps=0.0, steps=3), x)


def test_bad_input():
    model = _mlp()
    x, y = _data()
    with pytest.raises(ValueError, match="eps"):
        fgsm(model, x, y, eps=-1)
    with pytest.raises(ValueError, match="norm"):
        fgsm(model, x, y, eps=0.1, norm="l1")
    with pytest.raises(ValueError, match="loss"):
        fgsm(model, x, y, eps=0.1, loss="hinge")
    with pytest.raises(ValueError, match="integer class labels"):
        fgsm(model, x, y.double(), eps=0.1)
    with pytest.raises(ValueError, match="labels must lie"):
        fgsm(model, x, y + 3, eps=0.1)
    with pytest.raises(ValueError, match="y's shape"):
        fgsm(model, x, torch.zeros(len(x), 5), eps=0.1, loss="mse")
    with pytest.raises(ValueError, match="outside clamp"):
        fgsm(model, x + 2, y, eps=0.1, clamp=(0, 1))
    with pytest.raises(ValueError, match="one entry per sample"):
        fgsm(model, x, y[:3], eps=0.1)
    with pytest.raises(ValueError, match="does not depend on the input"):
        fgsm(lambda z: torch.zeros(len(z), 3, dtype=z.dtype), x, y, eps=0.1)
    with pytest.raises(ValueError, match="steps"):
        pgd(model, x, y, eps=0.1, steps=0)
    with pytest.raises(TypeError, match="callable"):
        pgd(3, x, y, eps=0.1)
    with pytest.raises(ValueError, match="NaN"):
        fgsm(model, x.masked_fill(x > 0.9, float("nan")), y, eps=0.1)
