"""The ``ntkit`` command end to end."""

import numpy as np
from sklearn.linear_model import RidgeClassifier
from typer.testing import CliRunner

from ntkit.cli import app
from ntkit.datasets import load_digits


def test_report_command_writes_html_and_beats_a_linear_baseline(tmp_path):
    result = CliRunner().invoke(
        app, ["report", "--out", str(tmp_path), "--n-train", "300", "--n-test", "200"]
    )
    assert result.exit_code == 0, result.output
    html = (tmp_path / "report.html").read_text()
    assert "<img src='data:image/png;base64," in html and "Kernel regression" in html
    acc = float(result.output.split("test accuracy NTK regression")[1].split()[1])
    # a linear classifier on the same split is the baseline a kernel method should match
    data = load_digits(300, 200, seed=0)
    lin = RidgeClassifier(alpha=1.0).fit(data.x_train.numpy(), data.labels_train.numpy())
    lin_acc = float(np.mean(lin.predict(data.x_test.numpy()) == data.labels_test.numpy()))
    assert acc >= lin_acc - 0.02
    assert acc > 0.9


def test_report_rejects_bad_options(tmp_path):
    result = CliRunner().invoke(app, ["report", "--out", str(tmp_path), "--n-train", "5000"])
    assert result.exit_code != 0
    assert "n_train + n_test" in result.output


def test_reproduce_command_writes_html_and_rejects_unknown_names(tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["reproduce", "min-eigenvalue", "--quick", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "min-eigenvalue.html").exists()
    assert "lambda_min" in result.output
    bad = runner.invoke(app, ["reproduce", "nope", "--out", str(tmp_path)])
    assert bad.exit_code != 0
    assert "unknown experiment" in bad.output
