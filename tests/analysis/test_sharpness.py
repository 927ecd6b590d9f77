"""Sharpness against the eigenvalues of the dense Hessian (torch.autograd.functional.hessian)."""

import pytest
import torch
from torch.func import functional_call

from ntkit.analysis import hessian_trace, hessian_vector_product, sharpness


def _model(seed=0, d=3, width=5, out=2):
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(d, width), torch.nn.Tanh(), torch.nn.Linear(width, out)
    ).double()


def _data(n=12, d=3, out=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(n, d, generator=g, dtype=torch.float64),
        torch.randn(n, out, generator=g, dtype=torch.float64),
    )


def _dense_hessian(model, loss_fn, x, y):
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    flat0 = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def loss_of(flat):
        parts = torch.split(flat, [s.numel() for s in shapes])
        p = {n: t.reshape(s) for n, t, s in zip(names, parts, shapes, strict=True)}
        return loss_fn(functional_call(model, p, (x,)), y)

    return torch.autograd.functional.hessian(loss_of, flat0)


def _anti_mse(out, t):
    # concave in the outputs: the Gauss-Newton part is negative semi-definite, the
    # second-order part indefinite, so the Hessian's largest-magnitude eigenvalue is negative
    return ((out - t) ** 2).mean() - 4 * (out**2).mean()


@pytest.mark.parametrize("method", ["lanczos", "scipy", "dense"])
@pytest.mark.parametrize("loss", ["mse", "indefinite"])
def test_top_eigenvalues_match_dense_hessian(method, loss):
    model = _model()
    x, y = _data()
    loss_fn = torch.nn.MSELoss() if loss == "mse" else _anti_mse
    ref = torch.linalg.eigvalsh(_dense_hessian(model, loss_fn, x, y)).flip(0)
    if loss == "indefinite":
        assert ref[-1] < -2 * abs(ref[0])  # power iteration would return ref[-1]
    got = sharpness(model, loss_fn, x, y, k=3, method=method, tol=1e-9)
    assert got.shape == (3,) and got.dtype == torch.float64
    torch.testing.assert_close(got, ref[:3], rtol=1e-6, atol=1e-9 * float(ref.abs().max()))


def test_chunks_add_up_for_mean_and_sum_losses():
    model = _model(seed=2)
    x, y = _data(n=10)
    ref = torch.linalg.eigvalsh(_dense_hessian(model, torch.nn.MSELoss(), x, y)).flip(0)[:2]
    got = sharpness(model, torch.nn.MSELoss(), x, y, k=2, batch_size=3, tol=1e-9)
    torch.testing.assert_close(got, ref, rtol=1e-6, atol=0)
    summed = torch.nn.MSELoss(reduction="sum")
    ref_sum = torch.linalg.eigvalsh(_dense_hessian(model, summed, x, y)).flip(0)[:2]
    got_sum = sharpness(model, summed, x, y, k=2, reduction="sum", batch_size=4, tol=1e-9)
    torch.testing.assert_close(got_sum, ref_sum, rtol=1e-6, atol=0)
    # a tight memory budget plans chunks too, with the same answer
    small = sharpness(model, torch.nn.MSELoss(), x, y, k=2, tol=1e-9, max_memory=60_000)
    torch.testing.assert_close(small, ref, rtol=1e-6, atol=0)


def test_hvp_and_hutchinson_trace():
    model = _model(seed=3)
    x, y = _data()
    h = _dense_hessian(model, torch.nn.MSELoss(), x, y)
    v = torch.randn(h.shape[0], dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    hv = hessian_vector_product(model, torch.nn.MSELoss(), x, y, v, batch_size=5)
    torch.testing.assert_close(hv, h @ v, rtol=1e-10, atol=1e-12)
    est = hessian_trace(model, torch.nn.MSELoss(), x, y, samples=400, seed=1)
    # Hutchinson is unbiased; its standard error comes from the same 400 probes, so a
    # 4-sigma band fails with probability ~6e-5
    assert abs(est.value - float(torch.trace(h))) <= 4 * est.stderr
    assert est.stderr < 0.2 * abs(float(torch.trace(h)))


def test_float32_model_and_zero_hessian():
    model = _model(seed=4).float()
    x, y = _data()
    ref = torch.linalg.eigvalsh(_dense_hessian(model.double(), torch.nn.MSELoss(), x, y)).flip(0)[0]
    got = sharpness(model.float(), torch.nn.MSELoss(), x.float(), y.float(), tol=1e-5)
    assert got.dtype == torch.float32
    assert float(got[0]) == pytest.approx(float(ref), rel=1e-4)
    lin = torch.nn.Linear(3, 1).double()
    every = sharpness(lin, torch.nn.MSELoss(), x, y[:, :1], k=4)  # k = P: whole spectrum
    ref_lin = torch.linalg.eigvalsh(_dense_hessian(lin, torch.nn.MSELoss(), x, y[:, :1]))
    torch.testing.assert_close(every, ref_lin.flip(0), rtol=1e-10, atol=1e-12)
    zero = sharpness(lin, lambda out, t: out.sum(), x, y[:, :1])  # linear in the parameters
    assert float(zero[0]) == 0.0


def test_bad_input():
    model = _model()
    x, y = _data()
    n_params = sum(p.numel() for p in model.parameters())
    with pytest.raises(ValueError, match="does not depend on the parameters"):
        sharpness(model, lambda out, t: (t**2).sum(), x, y)
    with pytest.raises(ValueError, match=rf"k must be an integer in \[1, P\] with P = {n_params}"):
        sharpness(model, torch.nn.MSELoss(), x, y, k=n_params + 1)
    with pytest.raises(ValueError, match="one entry per input"):
        sharpness(model, torch.nn.MSELoss(), x, y[:3])
    with pytest.raises(ValueError, match="method"):
        sharpness(model, torch.nn.MSELoss(), x, y, method="power")
    with pytest.raises(ValueError, match="scalar"):
        sharpness(model, lambda out, t: out - t, x, y)
    with pytest.raises(ValueError, match="did not converge"):
        sharpness(model, torch.nn.MSELoss(), x, y, k=2, max_iter=3)
    with pytest.raises(ValueError, match="max_memory"):
        sharpness(model, torch.nn.MSELoss(), x, y, max_memory=1000)
