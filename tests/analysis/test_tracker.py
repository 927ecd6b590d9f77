"""NTKTracker against kernels computed directly (per-sample autograd loops) at each record."""

import copy
import math

import numpy as np
import pytest
import torch

from ntkit.analysis import NTKTracker


def _model(seed=0, dropout=0.0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(4, 16), torch.nn.Tanh(), torch.nn.Dropout(dropout), torch.nn.Linear(16, 3)
    ).double()


def _brute_kernel(model, x, mode):
    """trace: sum_a grad f_a(x_i) . grad f_a(x_j); sum_logits: (1/O) grad sum_a f_a . (same)."""
    model = copy.deepcopy(model).eval()
    params = list(model.parameters())

    def grad_of(scalar):
        return torch.cat(
            [g.reshape(-1) for g in torch.autograd.grad(scalar, params, retain_graph=True)]
        )

    rows = []
    for xi in x:
        out = model(xi[None])[0]
        if mode == "trace":
            rows.append(torch.stack([grad_of(out[a]) for a in range(out.shape[0])]))
        else:
            rows.append(grad_of(out.sum())[None] / math.sqrt(out.shape[0]))
    j = torch.stack(rows)  # (n, directions, P)
    return torch.einsum("iap,jap->ij", j, j)


def _centered_distance(a, b):
    n = a.shape[0]
    h = np.eye(n) - 1 / n
    a, b = h @ a.numpy() @ h, h @ b.numpy() @ h
    return 1 - (a * b).sum() / (np.linalg.norm(a) * np.linalg.norm(b))


@pytest.mark.parametrize("mode", ["trace", "sum_logits"])
def test_records_match_direct_kernels(mode):
    model = _model(dropout=0.2).train()
    g = torch.Generator().manual_seed(0)
    x, y = (
        torch.randn(32, 4, generator=g, dtype=torch.float64),
        torch.randint(0, 3, (32,), generator=g),
    )
    probe, labels = x[:6], y[:6]
    tracker = NTKTracker(
        model, probe, every=3, mode=mode, labels=labels, keep_kernels=True, top_k=3
    )
    snapshots = {0: copy.deepcopy(model)}
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for step in range(1, 10):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        if tracker.step(step):
            snapshots[step] = copy.deepcopy(model)
        assert model[2].training  # the tracker's eval() is scoped
    assert tracker.history["step"] == [0, 3, 6, 9]
    refs = {s: _brute_kernel(m, probe, mode) for s, m in snapshots.items()}
    for s in snapshots:
        torch.testing.assert_close(tracker.kernels[s], refs[s], rtol=1e-10, atol=1e-12)
    steps = tracker.history["step"]
    for i, s in enumerate(steps):
        assert tracker.history["distance"][i] == pytest.approx(
            _centered_distance(refs[0], refs[s]), rel=1e-8, abs=1e-14
        )
        evals = np.linalg.eigvalsh(refs[s].numpy())[::-1][:3]
        np.testing.assert_allclose(tracker.history["eigenvalues"][i].numpy(), evals, rtol=1e-10)
        if i:
            v = _centered_distance(refs[steps[i - 1]], refs[s]) / (s - steps[i - 1])
            assert tracker.history["velocity"][i] == pytest.approx(v, rel=1e-8)
    assert math.isnan(tracker.history["velocity"][0])
    assert tracker.history["distance"][-1] > 1e-4  # the kernel did move
    assert len(tracker.history["alignment"]) == 4
    fig = tracker.plot("test")
    assert len(fig.axes) == 4


def test_bad_input():
    model = _model()
    x = torch.randn(5, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"probe_x of shape \(5, 7\) does not fit the model"):
        NTKTracker(model, torch.randn(5, 7))
    with pytest.raises(ValueError, match="n >= 2"):
        NTKTracker(model, x[:1])
    with pytest.raises(ValueError, match="mode must be one of"):
        NTKTracker(model, x, mode="full")
    with pytest.raises(ValueError, match="needs labels"):
        NTKTracker(model, x, metrics=["alignment"])
    with pytest.raises(ValueError, match="unknown metrics"):
        NTKTracker(model, x, metrics=["speed"])
    with pytest.raises(ValueError, match=r"shape \(5,\) or \(5, O\)"):
        NTKTracker(model, x, labels=torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="every"):
        NTKTracker(model, x, every=0)
    t = NTKTracker(model, x, every=2, metrics=["distance"])
    assert not t.step(1) and t.step(2) and not t.step(2)
    assert t.history == {"step": [0, 2], "distance": [pytest.approx(0, abs=1e-12)] * 2}
