"""The report's inference and training-dynamics sections on a small configuration."""

import torch

from ntkit.predict import kernel_regression
from ntkit.report import ReportConfig, ReportContext
from ntkit.report.sections import DEFAULT_SECTIONS
from ntkit.report.training import gp_section, training_curve_section


def _ctx():
    return ReportContext(ReportConfig(n_train=200, n_test=100, width=256, seed=1))


def test_gp_section_reports_accurate_posteriors():
    ctx = _ctx()
    sec = gp_section(ctx)
    assert [r[0] for r in sec.table_rows] == [
        "NNGP posterior",
        "NTK-GP posterior",
        "NTK ensemble, t = inf",
    ]
    acc = ctx.results["test accuracy NNGP posterior"]
    assert acc > 0.85
    # the reported accuracy is that of kernel ridge regression with the same noise
    k, kt, d = ctx.kernel("train_train").nngp, ctx.kernel("test_train").nngp, ctx.data
    ridge = 1e-3 * float(k.diagonal().mean())
    ref = kernel_regression(k, d.y_train, kt, ridge=ridge)
    assert acc == float((ref.argmax(1) == d.labels_test).double().mean())
    for row in sec.table_rows:
        assert all(torch.isfinite(torch.tensor(float(v))) for v in row[1:])


def test_training_curve_section_plots_network_and_prediction():
    ctx = _ctx()
    sec = training_curve_section(ctx)
    assert sec.figures and sec.figures[0].png.startswith(b"\x89PNG")
    (net_row, pred_row) = sec.table_rows
    init_loss = 0.5  # a one-hot target against outputs of unit scale: loss is O(1) at t=0
    for row in (net_row, pred_row):
        assert float(row[1]) < init_loss  # training loss went down
    # width 256: finite network and prediction agree to within ~width^-1/2 scale
    assert ctx.results["GD relative test output gap"] < 0.3
    assert (
        abs(ctx.results["GD network test accuracy"] - ctx.results["GD predicted test accuracy"])
        < 0.1
    )


def test_sections_are_registered_in_the_default_report():
    names = [f.__name__ for f in DEFAULT_SECTIONS]
    assert names.index("gp_section") < names.index("training_curve_section")
    assert names.index("training_curve_section") < names.index("timing_section")
