"""No silent NaN, Inf or wrong number: one test per class of bad input.

Each test asserts the error's type and that its message names the problem, or the correct
finite value against an independent computation (closed forms, scaling laws, numpy).
"""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch
from torch import nn

import ntkit as nk
from ntkit import layers as L
from ntkit.cli import run
from ntkit.predict import conjugate_gradient, gp_posterior, kernel_regression
from ntkit.settings import parse_bytes

F64 = torch.float64


def _x(n=5, d=4, seed=0):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=F64)


RELU_NET = L.serial(L.Dense(8, 1.5), L.ReLU(), L.Dense(8, 1.2), L.ReLU(), L.Dense(1))


# ----------------------------------------------------------------------------- input scale
@pytest.mark.parametrize("scale", [1e-100, 1e100, 1e150])
def test_homogeneous_network_at_extreme_scales(scale):
    """Dense (no bias) + ReLU is positively homogeneous of degree 2: K(c x) = c^2 K(x)."""
    x = _x()
    ref = RELU_NET.kernel(x)
    got = RELU_NET.kernel(x * scale)
    for a, b in ((got.nngp, ref.nngp), (got.ntk, ref.ntk)):
        torch.testing.assert_close(a / scale**2, b, rtol=1e-12, atol=0)


def test_erf_at_huge_variance_tends_to_the_sign_kernel():
    """Erf's NNGP tends to (2/pi) arcsin(rho), the Sign kernel (closed form), not to 0."""
    x = _x()
    got = L.serial(L.Dense(3), L.Erf(), L.Dense(1)).kernel(x * 1e150).nngp
    ref = L.serial(L.Dense(3), L.Sign(), L.Dense(1)).kernel(x).nngp
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)


def test_erf_large_variance_no_cancellation():
    """At q = 1e20 (no overflow yet) the diagonal NTK factor is (4/pi)/sqrt(1 + 4 q) exactly."""
    q = 1e20
    layer = L.Erf()
    t = torch.tensor([[q]], dtype=F64)
    _, dot = layer.expectations(t, t, t, need_dot=True)
    assert float(dot) == pytest.approx(4 / math.pi / math.sqrt(1 + 4 * q), rel=1e-12)


@pytest.mark.parametrize(
    "x, dtype, match",
    [
        (_x() * 1e-160, F64, r"x1\[\d\] has entries of at most .* loses precision"),
        (_x() * 1e160, F64, r"x1 has entries up to .* overflow"),
        (_x().float() * 1e30, torch.float32, r"overflow torch.float32"),
    ],
)
def test_inputs_outside_the_floating_point_range_raise(x, dtype, match):
    with pytest.raises(ValueError, match=match):
        RELU_NET.kernel(x, dtype=dtype)


# ----------------------------------------------------------------------------- parameters
@pytest.mark.parametrize(
    "make, exc, match",
    [
        (lambda: L.LeakyReLU(float("nan")), ValueError, "LeakyReLU a must be a finite"),
        (lambda: L.Erf(b=float("inf")), ValueError, "Erf b must be a finite"),
        (lambda: L.RBF(-0.5), ValueError, r"RBF gamma must be a finite number > 0"),
        (lambda: L.Dense(3, w_std=float("nan")), ValueError, "w_std"),
        (lambda: L.LayerNorm(eps=-1.0), ValueError, "LayerNorm eps"),
        (lambda: L.Dropout(1.0), ValueError, r"\[0, 1\)"),
        (lambda: L.Sin(a="2"), TypeError, "Sin a must be a real number"),
    ],
)
def test_parameter_domains_checked_in_constructors(make, exc, match):
    with pytest.raises(exc, match=match):
        make()


def test_zero_feature_inputs_refused():
    with pytest.raises(ValueError, match=r"x1 has zero features \(shape \(3, 0\)\)"):
        RELU_NET.kernel(torch.zeros(3, 0))


def test_function_undefined_on_the_gaussian_support_raises():
    with pytest.raises(ValueError, match="not finite"):
        L.serial(L.Dense(2), L.Elementwise(torch.sqrt)).kernel(_x())


def test_non_finite_result_names_the_first_layer():
    net = L.serial(L.Dense(4, w_std=30.0), L.ReLU(), L.Dense(4), L.Exp(), L.Dense(1))
    with pytest.raises(ValueError, match=r"Inf entries.*layer 3 \(Exp\(a=1.0, b=1.0\)\)"):
        net.kernel(_x() * 20)


# ----------------------------------------------------------------------------- max_memory
@pytest.mark.parametrize(
    "value, expected",
    [("2GiB", 2 * 2**30), ("1GB", 10**9), (" 512 MiB", 512 * 2**20), (3e6, 3_000_000)],
)
def test_max_memory_strings(value, expected):
    assert parse_bytes(value) == expected
    k = RELU_NET.kernel(_x(), max_memory=value)
    torch.testing.assert_close(k.nngp, RELU_NET.kernel(_x()).nngp, rtol=0, atol=0)


@pytest.mark.parametrize(
    "value, exc, match",
    [
        ("1XB", ValueError, "string like '2GiB'"),
        (float("nan"), ValueError, "positive, finite"),
        (-5, ValueError, "positive, finite"),
        ([1], TypeError, "number of bytes"),
    ],
)
def test_max_memory_bad_values(value, exc, match):
    with pytest.raises(exc, match=match):
        RELU_NET.kernel(_x(), max_memory=value)


# ----------------------------------------------------------------------------- empirical NTK
class _Centered(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 2)

    def forward(self, x):
        return self.lin(x - x.mean(0))


def test_empirical_batch_coupled_model_refused():
    with pytest.raises(ValueError, match="depends on the other samples in the batch"):
        nk.empirical_ntk(_Centered(), torch.randn(4, 3))


@pytest.mark.parametrize(
    "model, x1, x2, match",
    [
        (nn.Linear(4, 2), torch.randn(3, 3), None, r"forward pass failed on x1 \(shape \(3, 3\)"),
        (
            nn.Linear(3, 2),
            torch.ones(2, 3, dtype=torch.long),
            None,
            r"forward pass failed on x1 .*torch.int64",
        ),
        (nn.Embedding(5, 2), torch.tensor([[1], [7]]), None, "x1.*index out of range"),
        (nn.Embedding(5, 2), torch.tensor([[1]]), torch.tensor([[9]]), "x2.*index out of range"),
    ],
)
def test_empirical_forward_errors_name_the_argument(model, x1, x2, match):
    with pytest.raises(ValueError, match=match):
        nk.empirical_ntk(model, x1, x2)


# ----------------------------------------------------------------------------- predict
def _psd(n=6, seed=0):
    a = _x(n, n, seed)
    return a @ a.T / n


def test_predict_refuses_indefinite_kernels():
    k = _psd()
    k_bad = k - 2.0 * torch.eye(6, dtype=F64) * float(torch.linalg.eigvalsh(k)[0] + 1.0)
    lam_min = float(torch.linalg.eigvalsh(k_bad)[0])
    y = _x(6, 1, 3)
    for fn in (kernel_regression, lambda *a, **kw: gp_posterior(*a, **kw).mean):
        with pytest.raises(ValueError, match=f"most negative eigenvalue is {lam_min:.3g}"):
            fn(k_bad, y, k_bad[:2])
    # explicit projection: the pseudo-inverse of the positive part (numpy reference)
    w, v = np.linalg.eigh(k_bad.numpy())
    keep = w > 1e-12 * w.max()
    ref = k_bad[:2].numpy() @ (v[:, keep] / w[keep]) @ v[:, keep].T @ y.numpy()
    got = kernel_regression(k_bad, y, k_bad[:2], repair="project")
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-8, atol=1e-10)


def test_predict_refuses_non_symmetric_kernels():
    k = _psd()
    k_bad = k.clone()
    k_bad[0, 3] += 0.1
    y = _x(6, 1, 3)
    for fn in (kernel_regression, lambda *a, **kw: gp_posterior(*a, **kw).mean):
        with pytest.raises(ValueError, match=r"not symmetric: \|K\[0, 3\] - K\[3, 0\]\| = 0.1"):
            fn(k_bad, y, k[:2])
    got = kernel_regression(k_bad, y, k[:2], repair="symmetrize")
    sym = (k_bad + k_bad.T) / 2
    ref = k[:2] @ torch.linalg.solve(sym, y)
    torch.testing.assert_close(got, ref, rtol=1e-8, atol=1e-10)


def test_conjugate_gradient_indefinite_operator():
    k = torch.diag(torch.tensor([3.0, 1.0, -2.0, 0.5], dtype=F64))
    with pytest.raises(ValueError, match="not positive semi-definite.*negative curvature"):
        conjugate_gradient(k, torch.ones(4, dtype=F64), preconditioner=None)


def test_conjugate_gradient_minimum_norm_without_preconditioner():
    """The docstring's claim: ridgeless, singular K, b in range(K), no preconditioner."""
    phi = _x(8, 3, 5)
    k = phi @ phi.T
    b = k @ _x(8, 1, 6)
    res = conjugate_gradient(k, b, preconditioner=None, tol=1e-12)
    ref = np.linalg.pinv(k.numpy()) @ b.numpy()
    np.testing.assert_allclose(res.solution.numpy(), ref, rtol=1e-6, atol=1e-8)


# ----------------------------------------------------------------------------- CLI
@pytest.mark.parametrize(
    "argv, needle",
    [
        (["report", "--seed", "-1"], "'--seed'"),
        (["reproduce", "pntk", "--seed", "-3"], "'--seed'"),
    ],
)
def test_cli_bad_options_exit_2_naming_the_option(capsys, argv, needle):
    assert run(argv) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1 and "Traceback" not in err


def test_cli_out_checked_before_any_work(capsys, tmp_path):
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    assert run(["report", "--out", str(a_file), "--n-train", "20", "--n-test", "5"]) == 2
    err = capsys.readouterr().err.strip()
    assert "'--out'" in err and "is not a folder" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "report.html").exists()
    # a folder that cannot be created, even by root: its parent is a file
    assert run(["reproduce", "pntk", "--quick", "--out", str(a_file / "sub")]) == 2
    err = capsys.readouterr().err.strip()
    assert "'--out'" in err and "cannot create folder" in err and len(err.splitlines()) == 1


def test_cli_out_not_writable_refused(capsys, tmp_path, monkeypatch):
    import ntkit.cli

    folder = tmp_path / "locked"
    folder.mkdir()
    # root ignores folder permissions, so the permission check is made to answer "no"
    # for this folder only, as it does for an ordinary user on a folder of mode 0o500
    real_access = ntkit.cli.os.access
    monkeypatch.setattr(
        ntkit.cli.os,
        "access",
        lambda p, mode: False if str(p) == str(folder) and mode & os.W_OK else real_access(p, mode),
    )
    assert run(["reproduce", "pntk", "--quick", "--out", str(folder)]) == 2
    err = capsys.readouterr().err.strip()
    assert "'--out'" in err and "not writable" in err and len(err.splitlines()) == 1
