"""The report's inference and training-dynamics sections on a small configuration."""

import torch

from ntkit.predict import kernel_regression
from ntkit.report import ReportConfig, ReportContext
from ntkit.report.sections import DEFAULT_SECTIONS
from ntkit.report.training import gp_section, training_curve_section


def _ctx(**kw):
    return ReportContext(ReportConfig(n_train=200, n_test=100, width=256, seed=1, **kw))


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
    ctx = _ctx(max_steps=300)
    sec = training_curve_section(ctx)
    assert sec.figures and sec.figures[0].png.startswith(b"\x89PNG")
    (net_row, pred_row) = sec.table_rows
    init_loss = 0.5  # a one-hot target against outputs of unit scale: loss is O(1) at t=0
    for row in (net_row, pred_row):
        assert float(row[1]) < init_loss  # training loss went down
    # width 256: finite network and prediction agree to within ~width^-1/2 scale
    assert ctx.results["GD relative test output gap"] < 0.3
    # 100 test points: an accuracy is +-0.05 (binomial); the two predictors also differ by
    # the output gap above, so their accuracies may differ by a few of those
    assert (
        abs(ctx.results["GD network test accuracy"] - ctx.results["GD predicted test accuracy"])
        < 0.15
    )
    assert ctx.results["GD steps trained"] <= 300


def test_training_stops_where_the_prediction_has_converged():
    import math

    from ntkit.predict import gradient_descent_mse, max_learning_rate
    from ntkit.report.training import CONVERGED, LR_FRACTION

    ctx = _ctx(max_steps=100_000)
    training_curve_section(ctx)
    stop = int(ctx.results["GD steps trained"])
    assert stop < 100_000
    # independently: the discrete closed form at `stop` and one step before it
    d, k = ctx.data, ctx.kernel("train_train").ntk
    kx = ctx.kernel("test_train").ntk
    lr = LR_FRACTION * max_learning_rate(k, n_outputs=10, reduction="mean")
    model = ctx.net.module(ctx.in_shape, seed=1, dtype=torch.float32)
    with torch.no_grad():
        f0, ft0 = model(d.x_train.float()).double(), model(d.x_test.float()).double()
    p = gradient_descent_mse(k, d.y_train, learning_rate=lr, reduction="mean", discrete=True)
    start = dict(fx_train_0=f0, fx_test_0=ft0, k_test_train=kx)
    limit = p(math.inf, **start).test
    dist = [float(torch.linalg.norm(p(t, **start).test - limit)) for t in (0, stop)]
    assert dist[1] <= CONVERGED * dist[0] * (1 + 1e-6)
    # the log-spaced search grid is at most ~17% coarse: 0.8 * stop has not converged yet
    early = float(torch.linalg.norm(p(int(0.8 * stop), **start).test - limit))
    assert early > CONVERGED * dist[0]


def test_sections_are_registered_in_the_default_report():
    names = [f.__name__ for f in DEFAULT_SECTIONS]
    assert names.index("gp_section") < names.index("training_curve_section")
    assert names.index("training_curve_section") < names.index("timing_section")
