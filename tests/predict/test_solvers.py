"""Preconditioned CG from matrix-free products against direct solves and scipy."""

import pytest
import torch

from ntkit import layers as L
from ntkit.predict import kernel_regression
from ntkit.predict.solvers import (
    BlockKernelOperator,
    DenseOperator,
    FunctionOperator,
    conjugate_gradient,
    kernel_operator,
    nystrom_preconditioner,
)
from tests.predict.helpers import randn, rbf_kernel


def _problem(n=300, m=3, seed=0):
    x = randn(n, 4, seed=seed)
    return x, rbf_kernel(x, x, 1.5), randn(n, m, seed=seed + 1)


@pytest.mark.parametrize("preconditioner", [None, "jacobi", "nystrom"])
@pytest.mark.parametrize("method", ["torch", "scipy"])
def test_cg_matches_direct_solve(preconditioner, method):
    _, k, y = _problem()
    ridge = 1e-2
    ref = torch.linalg.solve(k + ridge * torch.eye(300, dtype=torch.float64), y)
    res = conjugate_gradient(
        k, y, ridge=ridge, preconditioner=preconditioner, method=method, tol=1e-10
    )
    assert res.converged and res.iterations > 1
    assert float(res.residual.max()) < 1e-9
    torch.testing.assert_close(res.solution, ref, atol=1e-7 * float(ref.abs().max()), rtol=0)


def test_torch_and_scipy_methods_take_the_same_path():
    _, k, y = _problem(seed=2)
    opts = {"ridge": 1e-2, "preconditioner": "nystrom", "rank": 30, "tol": 1e-9}
    a = conjugate_gradient(k, y, **opts)
    b = conjugate_gradient(k, y, method="scipy", **opts)
    assert a.converged and b.converged
    # the same recurrence per column: iteration counts agree up to rounding of the stop test
    assert abs(a.iterations - b.iterations) <= 2
    torch.testing.assert_close(
        a.solution, b.solution, atol=1e-6 * float(a.solution.abs().max()), rtol=0
    )


def test_nystrom_preconditioner_helps_and_is_exact_at_full_rank():
    _, k, y = _problem(seed=3)
    plain = conjugate_gradient(k, y, ridge=1e-3, preconditioner=None, tol=1e-8, max_iter=3000)
    nys = conjugate_gradient(k, y, ridge=1e-3, preconditioner="nystrom", rank=60, tol=1e-8)
    assert plain.converged and nys.converged
    assert nys.iterations < plain.iterations / 2.5, (nys.iterations, plain.iterations)
    # rank n: P^{-1} (K + mu I) = (lambda_n + mu) I, so CG needs (almost) one step
    p_inv = nystrom_preconditioner(k, rank=300, ridge=1e-4)
    a = k + 1e-4 * torch.eye(300, dtype=torch.float64)
    pa = p_inv(a)
    c = pa.diagonal().mean()
    torch.testing.assert_close(
        pa, c * torch.eye(300, dtype=torch.float64), atol=1e-6 * float(c), rtol=0
    )


def test_block_operator_matches_dense_and_net_kernel():
    # Erf: smooth, so blocks K(x[rows], x) equal the symmetric K(x) path to rounding (ReLU's
    # arccos at the diagonal amplifies rounding to ~1e-8 between the two paths)
    net = L.serial(L.Dense(32, 1.5, 0.1), L.Erf(), L.Dense(1, 1.5, 0.1))
    x, xs = randn(50, 3, seed=4), randn(7, 3, seed=5)
    op = kernel_operator(net, x, block_size=13)
    k = net.kernel(x).ntk
    v = randn(50, 2, seed=6)
    torch.testing.assert_close(op @ v, k @ v, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(op.diagonal(), k.diagonal())
    torch.testing.assert_close(op.to_dense(), k)
    cross = kernel_operator(net, xs, x, get="nngp", block_size=3)
    torch.testing.assert_close(cross.to_dense(), net.kernel(xs, x).nngp)
    # regression through the matrix-free path equals the direct one
    y = randn(50, 2, seed=7)
    res = conjugate_gradient(op, y, ridge_relative=1e-3, tol=1e-10, rank=20, max_iter=500)
    assert res.converged
    ridge = 1e-3 * float(k.diagonal().mean())
    direct = kernel_regression(k, y, net.kernel(xs, x).ntk, ridge=ridge)
    pred = kernel_operator(net, xs, x) @ res.solution
    torch.testing.assert_close(pred, direct, atol=1e-7, rtol=1e-7)


def test_function_operator_and_vector_rhs():
    _, k, y = _problem(n=80, seed=8)
    op = FunctionOperator(lambda v: k @ v, 80, diagonal=k.diagonal())
    res = conjugate_gradient(op, y[:, 0], ridge=0.1, preconditioner="jacobi")
    assert res.solution.shape == (80,) and res.residual.shape == (1,)
    ref = torch.linalg.solve(k + 0.1 * torch.eye(80, dtype=torch.float64), y[:, 0])
    torch.testing.assert_close(res.solution, ref, atol=1e-6, rtol=1e-6)
    with pytest.raises(NotImplementedError, match="diagonal"):
        conjugate_gradient(FunctionOperator(lambda v: k @ v, 80), y, preconditioner="jacobi")


def test_warm_start_needs_fewer_iterations():
    _, k, y = _problem(seed=9)
    cold = conjugate_gradient(k, y, ridge=1e-2, preconditioner=None, tol=1e-8, max_iter=3000)
    start = cold.solution * (1 + 1e-5)
    warm = conjugate_gradient(k, y, ridge=1e-2, preconditioner=None, tol=1e-8, x0=start)
    assert cold.converged and warm.converged
    assert warm.iterations < cold.iterations


def test_singular_kernel_without_ridge():
    phi = randn(60, 5, seed=10)
    k = phi @ phi.T  # rank 5
    in_range = phi @ randn(5, 2, seed=11)
    res = conjugate_gradient(k, in_range, preconditioner=None, tol=1e-10)
    assert res.converged
    torch.testing.assert_close(res.solution, torch.linalg.pinv(k) @ in_range, atol=1e-8, rtol=1e-6)
    outside = randn(60, 1, seed=12)
    with pytest.warns(UserWarning, match="stopped after"):
        res = conjugate_gradient(k, outside, preconditioner=None, max_iter=50)
    assert not res.converged and torch.isfinite(res.solution).all()
    assert float(res.residual[0]) > 0.1  # documented: the residual outside range(K) stays


@pytest.mark.parametrize(
    "call, exc, match",
    [
        (lambda k, y: conjugate_gradient(k[:, :5], y), ValueError, "square"),
        (lambda k, y: conjugate_gradient(k, y[:5]), ValueError, r"b must be \(20,\)"),
        (lambda k, y: conjugate_gradient(k, y, preconditioner="ilu"), ValueError, "preconditioner"),
        (lambda k, y: conjugate_gradient(k, y, method="gmres"), ValueError, "method"),
        (lambda k, y: conjugate_gradient(k, y, ridge=-1.0), ValueError, "ridge"),
        (lambda k, y: conjugate_gradient("k", y), TypeError, "operator must be"),
        (lambda k, y: conjugate_gradient(k, y * torch.nan), ValueError, "NaN"),
        (
            lambda k, y: BlockKernelOperator(lambda a, b: a @ b.T, y, block_size=0),
            ValueError,
            "block_size",
        ),
        (lambda k, y: DenseOperator(torch.ones(3)), ValueError, "matrix"),
    ],
)
def test_bad_arguments_raise_clear_errors(call, exc, match):
    _, k, y = _problem(n=20, seed=13)
    with pytest.raises(exc, match=match):
        call(k, y)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cg_on_gpu_matches_cpu():
    x, k, y = _problem(seed=14)
    cpu = conjugate_gradient(k, y, ridge=1e-3)
    op = kernel_operator(lambda a, b: rbf_kernel(a, b, 1.5), x.cuda(), block_size=100)
    gpu = conjugate_gradient(op, y.cuda(), ridge=1e-3)
    assert gpu.solution.device.type == "cuda"
    torch.testing.assert_close(gpu.solution.cpu(), cpu.solution, atol=1e-7, rtol=1e-6)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_cg_on_the_matrix_free_empirical_ntk_equals_full_kernel_regression():
    import ntkit as nk
    from ntkit.predict.solvers import empirical_ntk_operator

    net = L.serial(L.Dense(24, 1.5, 0.1), L.Erf(), L.Dense(2, 1.5, 0.1))
    model = net.module((3,), seed=3, dtype=torch.float64)
    x, xs, y = randn(30, 3, seed=15), randn(5, 3, seed=16), randn(30, 2, seed=17)
    ridge = 0.05
    op = empirical_ntk_operator(model, x)
    assert op.shape == (60, 60)
    res = conjugate_gradient(op, y.reshape(-1), ridge=ridge, rank=20, tol=1e-11, max_iter=500)
    assert res.converged
    pred = nk.ntk_vp(model, xs, x, res.solution.reshape(30, 2))
    k = nk.empirical_ntk(model, x, mode="full")
    kt = nk.empirical_ntk(model, xs, x, mode="full")
    torch.testing.assert_close(pred, kernel_regression(k, y, kt, ridge=ridge), atol=1e-8, rtol=1e-8)
