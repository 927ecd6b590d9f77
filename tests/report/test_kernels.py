"""The report's kernel sections against independent computations."""

import numpy as np
import pytest
import torch

from ntkit.report import ReportConfig, ReportContext
from ntkit.report.kernels import (
    heatmap_points,
    kernel_matrices_section,
    spectrum_section,
    width_convergence_section,
)


@pytest.fixture(scope="module")
def ctx():
    return ReportContext(
        ReportConfig(n_train=150, n_test=50, width=256, n_heatmap=60, widths=(64, 256, 1024))
    )


def test_heatmaps_are_sorted_by_class_and_the_empirical_ntk_is_close(ctx):
    x, labels = heatmap_points(ctx)
    assert bool((labels[1:] >= labels[:-1]).all()) and x.shape[0] == 60
    sec = kernel_matrices_section(ctx)
    assert sec.figures[0].png.startswith(b"\x89PNG") and sec.figures[0].reading
    # brute force: the per-output empirical NTK from one autograd gradient per output
    model = ctx.finite_model()
    params = [p for p in model.parameters()]
    rows = []
    for i in range(x.shape[0]):
        out = model(x[i : i + 1])[0]
        grads = [
            torch.cat([g.reshape(-1) for g in torch.autograd.grad(o, params, retain_graph=True)])
            for o in out
        ]
        rows.append(torch.stack(grads))  # (O, P)
    jac = torch.stack(rows)  # (n, O, P)
    entk = torch.einsum("iap,jap->ij", jac, jac) / jac.shape[1]
    analytic = ctx.net.kernel(x).ntk
    want = float(torch.linalg.norm(entk - analytic) / torch.linalg.norm(analytic))
    assert ctx.results["empirical NTK relative error (init)"] == pytest.approx(want, rel=1e-6)
    assert want < 0.3  # width 256: fluctuations ~ width^-1/2 = 0.06 times an O(1) constant


def test_spectrum_and_label_alignment_match_numpy(ctx):
    sec = spectrum_section(ctx)
    k = ctx.kernel("train_train").ntk.numpy()
    y = ctx.data.y_train.numpy()
    y = y - y.mean(0)
    w, v = np.linalg.eigh(k)
    top = v[:, ::-1][:, :10]
    share = np.sum((top.T @ y) ** 2) / np.sum(y**2)
    assert ctx.results["NTK label share in top 10 eigenvectors"] == pytest.approx(share, rel=1e-9)
    assert float(sec.table_rows[1][1]) == pytest.approx(w[-1], rel=1e-3)
    # ReLU NTK spectra on data decay polynomially
    assert -3 < ctx.results["NTK spectrum decay exponent"] < -0.3


def test_width_convergence_falls_like_inverse_sqrt_width(ctx):
    sec = width_convergence_section(ctx)
    errs = [float(r[1]) for r in sec.table_rows]
    assert errs[0] > errs[1] > errs[2]
    # two networks per width over a 16x range: the fitted slope is -0.5 up to ~0.2
    assert -0.8 < ctx.results["empirical NTK error slope vs width"] < -0.3
    pntk = [float(r[2]) for r in sec.table_rows]
    assert pntk[-1] < pntk[0]
