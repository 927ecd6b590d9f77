"""Gradients of infinite-width kernels: gradcheck (float64 finite differences) for every layer.

Each case differentiates ``nngp`` and ``ntk`` with respect to the inputs (``x1`` and ``x2``
separately, and ``x`` in the symmetric ``kernel(x)`` whose batch diagonal pairs a sample
with itself) and with respect to every float layer parameter passed as a tensor.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.autograd import gradcheck as _gradcheck

from ntkit import layers as L

F64 = torch.float64


def gradcheck(fn, inputs, **kw):
    """``torch.autograd.gradcheck`` in fast mode (random projections of the Jacobian, the
    same finite-difference comparison; the slow-marked conv test uses the full Jacobian)."""
    kw.setdefault("fast_mode", True)
    return _gradcheck(fn, inputs, **kw)


def _t(v):
    return torch.tensor(float(v), dtype=F64, requires_grad=True)


def _outputs(k):
    out = [k.nngp, k.cov1]
    if k.ntk is not None:
        out.append(k.ntk)
    if k.cov2 is not None and k.cov2 is not k.cov1:
        out.append(k.cov2)
    return tuple(out)


def _check_inputs(net, shape, *, seed=0, n1=3, n2=2, symmetric=True, fast=True):
    g = torch.Generator().manual_seed(seed)
    x1 = torch.randn(n1, *shape, generator=g, dtype=F64, requires_grad=True)
    x2 = torch.randn(n2, *shape, generator=g, dtype=F64, requires_grad=True)
    assert gradcheck(lambda a, b: _outputs(net.kernel(a, b)), (x1, x2), fast_mode=fast)
    if symmetric:
        assert gradcheck(lambda a: _outputs(net.kernel(a)), (x1,), fast_mode=fast)


def _check_params(build, values, shape, *, seed=1, n1=3, n2=2, fast=True):
    """``build(*params)`` makes the net; gradcheck with respect to every parameter."""
    g = torch.Generator().manual_seed(seed)
    x1 = torch.randn(n1, *shape, generator=g, dtype=F64)
    x2 = torch.randn(n2, *shape, generator=g, dtype=F64)
    params = tuple(_t(v) for v in values)
    assert gradcheck(lambda *p: _outputs(build(*p).kernel(x1, x2)), params, fast_mode=fast)
    assert gradcheck(lambda *p: _outputs(build(*p).kernel(x1)), params, fast_mode=fast)


def _mlp(act):
    return L.serial(L.Dense(4, w_std=1.3, b_std=0.4), act, L.Dense(1, w_std=1.1))


# (name, activation factory with tensor parameters, parameter values)
ACTIVATIONS = [
    ("ReLU", lambda: L.ReLU(), ()),
    ("LeakyReLU", lambda a: L.LeakyReLU(a), (0.2,)),
    ("ABReLU", lambda a, b: L.ABReLU(a, b), (-0.4, 1.5)),
    ("Abs", lambda: L.Abs(), ()),
    ("Erf", lambda a, b, c: L.Erf(a, b, c), (1.2, 0.7, 0.3)),
    ("GELU", lambda: L.GELU(), ()),
    ("Sin", lambda a, b, c: L.Sin(a, b, c), (1.1, 0.8, 0.2)),
    ("Cos", lambda a, b, c: L.Cos(a, b, c), (0.9, 0.6, 0.4)),
    ("RBF", lambda gamma: L.RBF(gamma), (0.6,)),
    ("Exp", lambda a, b: L.Exp(a, b), (0.8, 0.5)),
    ("Gaussian", lambda a, b: L.Gaussian(a, b), (1.2, -0.6)),
    ("Sign", lambda: L.Sign(), ()),
    ("Polynomial", lambda: L.Polynomial([0.1, 1.0, 0.5, -0.2]), ()),
    ("Monomial", lambda: L.Monomial(3), ()),
    ("Hermite", lambda: L.Hermite(3), ()),
    ("RectifiedMonomial0", lambda: L.RectifiedMonomial(0), ()),
    ("RectifiedMonomial2", lambda: L.RectifiedMonomial(2), ()),
    ("SigmoidLike", lambda: L.SigmoidLike(), ()),
    ("Gabor", lambda: L.Gabor(), ()),
    ("ExpNormalized", lambda g, s: L.ExpNormalized(g, s), (0.7, -0.8)),
    ("ElementwiseTanh", lambda: L.Elementwise(torch.tanh), ()),
    ("ElementwiseGH", lambda: L.Elementwise(torch.tanh, degree=8), ()),
    ("ElementwiseSiLU", lambda: L.Elementwise(torch.nn.functional.silu), ()),
    ("ElementwiseReLU6", lambda: L.Elementwise(torch.nn.functional.relu6), ()),
    (
        "ElementwiseClosedForm",
        lambda: L.Elementwise(
            torch.sin,
            nngp_fn=lambda q12, q11, q22: torch.exp(-(q11 + q22) / 2) * torch.sinh(q12),
        ),
        (),
    ),
]


@pytest.mark.parametrize("name,act,values", ACTIVATIONS, ids=[a[0] for a in ACTIVATIONS])
def test_activation_gradients_inputs(name, act, values):
    _check_inputs(_mlp(act(*values)), (3,))


@pytest.mark.parametrize(
    "name,act,values", [a for a in ACTIVATIONS if a[2]], ids=[a[0] for a in ACTIVATIONS if a[2]]
)
def test_activation_gradients_parameters(name, act, values):
    _check_params(lambda *p: _mlp(act(*p)), values, (3,))


def test_dense_parameters_both_parameterizations():
    for par in ("ntk", "standard"):
        _check_params(
            lambda w1, b1, w2, par=par: L.serial(
                L.Dense(5, w_std=w1, b_std=b1, parameterization=par),
                L.Erf(),
                L.Dense(1, w_std=w2, parameterization=par),
            ),
            (1.4, 0.3, 0.9),
            (3,),
        )


def test_layernorm_and_dropout_parameters():
    _check_params(
        lambda eps, rate: L.serial(
            L.Dense(4, b_std=0.2), L.LayerNorm(eps=eps), L.ReLU(), L.Dropout(rate), L.Dense(1)
        ),
        (0.3, 0.25),
        (3,),
    )
    _check_inputs(
        L.serial(L.Dense(4, b_std=0.2), L.LayerNorm(eps=0.1), L.GELU(), L.Dropout(0.3), L.Dense(1)),
        (3,),
    )


def test_combinators():
    net = L.serial(
        L.Dense(4, b_std=0.1),
        L.FanOut(3),
        L.parallel(L.serial(L.ReLU(), L.Dense(4)), L.Dense(4, w_std=0.7), L.Identity()),
        L.FanInSum(),
        L.FanOut(2),
        L.parallel(L.serial(L.Erf(), L.Dense(3)), L.Dense(5)),
        L.FanInConcat(),
        L.Dense(4),
        L.FanOut(2),
        L.parallel(L.serial(L.Sin(), L.Dense(4)), L.Identity()),
        L.FanInProd(),
        L.Dense(1),
    )
    _check_inputs(net, (3,))


def test_composed_fc_network_inputs_and_all_parameters():
    def build(w1, b1, alpha, w2, b2, eps, w3):
        return L.serial(
            L.Dense(16, w_std=w1, b_std=b1),
            L.LeakyReLU(alpha),
            L.Dense(16, w_std=w2, b_std=b2),
            L.LayerNorm(eps=eps),
            L.Erf(),
            L.Dense(2, w_std=w3),
        )

    values = (1.5, 0.2, 0.1, 1.2, 0.3, 0.05, 0.8)
    _check_params(build, values, (4,), n1=4, n2=3)
    _check_inputs(build(*values), (4,), n1=4, n2=3)


def _cnn(w, b, pool):
    return L.serial(
        L.Conv(3, 3, padding="same", w_std=w, b_std=b),
        L.ReLU(),
        L.Conv(3, 2, padding="valid", w_std=1.1),
        L.Erf(),
        pool,
        L.Dense(1),
    )


@pytest.mark.parametrize(
    "pool",
    [
        lambda: L.Flatten(),
        lambda: L.GlobalAvgPool(),
        lambda: L.serial(L.AvgPool(2), L.Flatten()),
        lambda: L.serial(L.SumPool(2, stride=1), L.GlobalSumPool()),
    ],
    ids=["flatten", "global_avg", "avgpool", "sumpool"],
)
@pytest.mark.slow
def test_composed_conv_network(pool):
    _check_inputs(_cnn(1.3, 0.2, pool()), (2, 4, 4), n1=2, n2=2, fast=False)
    _check_params(lambda w, b: _cnn(w, b, pool()), (1.3, 0.2), (2, 4, 4), n1=2, n2=2, fast=False)


def test_composed_conv_network_quick():
    """The default suite's share of the above: 3 x 3 images, flatten and global pooling."""
    _check_inputs(_cnn(1.3, 0.2, L.GlobalAvgPool()), (1, 3, 3), n1=2, n2=1)
    _check_params(lambda w, b: _cnn(w, b, L.Flatten()), (1.3, 0.2), (1, 3, 3), n1=2, n2=1)


def test_conv_1d_circular_standard_parameterization():
    net = L.serial(
        L.Conv(3, 3, padding="circular", stride=2, parameterization="standard", b_std=0.1),
        L.GELU(),
        L.Flatten(),
        L.Dense(1),
    )
    _check_inputs(net, (2, 5))


def test_local_and_transposed_convolutions():
    def build(w1, b1, w2):
        return L.serial(
            L.ConvLocal(2, 2, w_std=w1, b_std=b1),
            L.Erf(),
            L.ConvTranspose(2, 2, stride=2, w_std=w2),
            L.ReLU(),
            L.Flatten(),
            L.Dense(1),
        )

    _check_inputs(build(1.2, 0.3, 0.9), (1, 3), n1=2, n2=2)
    _check_params(build, (1.2, 0.3, 0.9), (1, 3), n1=2, n2=2)


def test_attention():
    def build(qk, ov, b):
        return L.serial(
            L.Conv(3, 1, b_std=0.1),
            L.GlobalSelfAttention(3, qk_std=qk, ov_std=ov, b_std=b),
            L.ReLU(),
            L.GlobalAvgPool(),
            L.Dense(1),
        )

    _check_inputs(build(0.8, 1.1, 0.2), (2, 3), n1=2, n2=2)
    _check_params(build, (0.8, 1.1, 0.2), (2, 3), n1=2, n2=2)


def test_nngp_only_and_float32_inputs_upcast():
    net = _mlp(L.ReLU())
    x = torch.randn(3, 3, dtype=torch.float32, requires_grad=True)
    k = net.kernel(x, get="nngp")
    assert k.ntk is None
    k.nngp.sum().backward()
    assert x.grad is not None and x.grad.dtype == torch.float32
    # the same gradient as in float64 (the kernel is computed in float64 either way)
    x64 = x.detach().double().requires_grad_(True)
    net.kernel(x64, get="nngp").nngp.sum().backward()
    torch.testing.assert_close(x.grad.double(), x64.grad, rtol=1e-6, atol=1e-6)


def test_values_with_grad_equal_values_without():
    net = L.serial(L.Dense(6, w_std=_t(1.4), b_std=0.3), L.ReLU(), L.Dense(6), L.Erf(), L.Dense(1))
    x = torch.randn(7, 3, dtype=F64)
    with torch.no_grad():
        ref = net.kernel(x)
    k = net.kernel(x.clone().requires_grad_(True))
    assert k.ntk.grad_fn is not None
    torch.testing.assert_close(k.nngp.detach(), ref.nngp, rtol=0, atol=0)
    torch.testing.assert_close(k.ntk.detach(), ref.ntk, rtol=0, atol=0)


def test_many_tiles_match_one_tile(monkeypatch):
    """The backward pass's tiling (many small tiles here) does not change the gradient."""
    from ntkit.layers import _autograd

    net = L.serial(L.Dense(8, b_std=0.2), L.ReLU(), L.Dense(8), L.Erf(), L.Dense(1))
    g = torch.Generator().manual_seed(3)
    x1 = torch.randn(11, 4, generator=g, dtype=F64)
    x2 = torch.randn(9, 4, generator=g, dtype=F64)
    w = torch.randn(11, 11, generator=g, dtype=F64)

    def grads():
        a = x1.clone().requires_grad_(True)
        b = x2.clone().requires_grad_(True)
        loss = (net.kernel(a).ntk * w).sum() + net.kernel(a, b).nngp.square().sum()
        return torch.autograd.grad(loss, (a, b))

    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        ref = grads()
        monkeypatch.setattr(_autograd, "BACKWARD_TILE_ENTRIES", 4)
        tiled = grads()
        torch.set_num_threads(2)  # tiles in two worker threads
        parallel = grads()
    finally:
        torch.set_num_threads(threads)
    for r, t, p in zip(ref, tiled, parallel):
        torch.testing.assert_close(t, r, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(p, r, rtol=1e-12, atol=1e-12)


def test_gradient_against_closed_form_relu_diagonal():
    """d/dx of the ReLU NNGP on the diagonal: K(x, x) = w^2 |x|^2 / (2 d) is smooth."""
    net = L.serial(L.Dense(4, w_std=1.5), L.ReLU())
    x = torch.randn(3, 5, dtype=F64, requires_grad=True)
    k = net.kernel(x)
    torch.diagonal(k.nngp).sum().backward()
    torch.testing.assert_close(x.grad, 1.5**2 * x.detach() / 5, rtol=1e-12, atol=1e-12)


def test_hyperparameter_through_a_reparameterization():
    """A non-leaf tensor parameter (exp of a log-parameter) receives its gradient."""
    log_w = torch.tensor(math.log(1.5), dtype=F64, requires_grad=True)
    x = torch.randn(4, 3, dtype=F64)
    net = L.serial(L.Dense(3, w_std=log_w.exp(), b_std=0.1), L.Erf(), L.Dense(1))
    net.kernel(x).ntk.sum().backward()
    with torch.no_grad():
        eps = 1e-6
        up = L.serial(L.Dense(3, w_std=math.exp(log_w + eps), b_std=0.1), L.Erf(), L.Dense(1))
        dn = L.serial(L.Dense(3, w_std=math.exp(log_w - eps), b_std=0.1), L.Erf(), L.Dense(1))
        fd = (up.kernel(x).ntk.sum() - dn.kernel(x).ntk.sum()) / (2 * eps)
    torch.testing.assert_close(log_w.grad, fd, rtol=1e-7, atol=1e-9)


def test_second_derivative_refused_clearly():
    x = torch.randn(3, 2, dtype=F64, requires_grad=True)
    k = _mlp(L.Erf()).kernel(x)
    with pytest.raises(RuntimeError, match="first derivatives only"):
        torch.autograd.grad(k.ntk.sum(), x, create_graph=True)


def test_parameter_validation_for_tensors():
    with pytest.raises(ValueError, match="w_std must be a finite non-negative number; got -1.0"):
        L.Dense(3, w_std=torch.tensor(-1.0))
    with pytest.raises(TypeError, match="one-element floating tensor"):
        L.Dense(3, w_std=torch.ones(2))
    with pytest.raises(ValueError, match="finite"):
        L.Erf(b=torch.tensor(float("inf")))
