"""The ``ntkit`` command end to end: every command, bad arguments, exit statuses."""

import ast
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.linear_model import RidgeClassifier

import ntkit
from ntkit.cli import run
from ntkit.datasets import load_digits

SRC = Path(ntkit.__file__).resolve().parent


def _run(capsys, *argv):
    code = run(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_help_and_version_do_not_import_torch():
    code = (
        "import sys\n"
        "from ntkit.cli import run\n"
        "assert run(['--help']) == 0 and run(['report', '--help']) == 0\n"
        "assert run(['--version']) == 0\n"
        "print('TORCH', 'torch' in sys.modules)\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=_env(), check=True
    )
    assert "TORCH False" in res.stdout
    assert f"ntkit {ntkit.__version__}" in res.stdout
    assert "--n-train" in res.stdout


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = str(SRC.parent) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def test_python_dash_m_runs_the_command():
    res = subprocess.run(
        [sys.executable, "-m", "ntkit", "--version"], capture_output=True, text=True, env=_env()
    )
    assert res.returncode == 0 and res.stdout.strip() == f"ntkit {ntkit.__version__}"
    res = subprocess.run(
        [sys.executable, "-m", "ntkit"], capture_output=True, text=True, env=_env()
    )
    assert res.returncode == 0 and "reproduce" in res.stdout  # no arguments: the help


def test_info_reports_versions_threads_and_memory(capsys):
    code, out, _ = _run(capsys, "info")
    assert code == 0
    assert torch.__version__ in out and np.__version__ in out
    assert f"{torch.get_num_threads()} intra-op" in out
    assert "max_memory" in out and "GiB" in out


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["report", "--n-train", "abc"], "'--n-train'"),
        (["report", "--no-such-option"], "--no-such-option"),
        (["reproduce", "nope"], "unknown experiment 'nope'"),
        (["frobnicate"], "frobnicate"),
    ],
)
def test_usage_errors_exit_2_with_one_line(capsys, argv, needle):
    code, out, err = _run(capsys, *argv)
    assert code == 2
    assert out == ""
    assert len(err.strip().splitlines()) == 1 and needle in err and "error" in err


def test_failures_exit_1_with_one_line(capsys, tmp_path, monkeypatch):
    import ntkit.reproduce as rep

    def broken(**_):
        raise RuntimeError("the kernel\nwent away")

    monkeypatch.setitem(rep.EXPERIMENTS, "broken", type("M", (), {"run": staticmethod(broken)}))
    code, _, err = _run(capsys, "reproduce", "broken", "--out", str(tmp_path))
    assert code == 1
    assert err.strip() == (
        "ntkit reproduce: error: RuntimeError: the kernel went away "
        "(NTKIT_TRACEBACK=1 shows the traceback)"
    )
    monkeypatch.setenv("NTKIT_TRACEBACK", "1")
    with pytest.raises(RuntimeError, match="went away"):
        run(["reproduce", "broken", "--out", str(tmp_path)])


def test_lazy_public_names_match_the_type_checking_imports():
    tree = ast.parse((SRC / "__init__.py").read_text())
    block = next(n for n in tree.body if isinstance(n, ast.If))  # if TYPE_CHECKING:
    typed = {}
    for node in block.body:
        for alias in node.names:
            typed[alias.name] = node.module
    exports = {k: v for k, v in typed.items() if v != "ntkit"}
    assert exports == ntkit._EXPORTS
    assert {k for k, v in typed.items() if v == "ntkit"} == set(ntkit._SUBMODULES)
    for name in [*ntkit.__all__, *ntkit._SUBMODULES]:
        assert getattr(ntkit, name) is not None
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = ntkit.nope


def test_report_command_writes_html_and_beats_a_linear_baseline(capsys, tmp_path):
    code, out, err = _run(
        capsys,
        "report",
        "--out",
        str(tmp_path),
        "--n-train",
        "300",
        "--n-test",
        "200",
        "--quick",
        "--no-progress",
    )
    assert code == 0, err
    html = (tmp_path / "report.html").read_text()
    assert "<img src='data:image/png;base64," in html and "Kernel regression" in html
    acc = float(out.split("test accuracy NTK regression")[1].split()[1])
    # a linear classifier on the same split is the baseline a kernel method should match
    data = load_digits(300, 200, seed=0)
    lin = RidgeClassifier(alpha=1.0).fit(data.x_train.numpy(), data.labels_train.numpy())
    lin_acc = float(np.mean(lin.predict(data.x_test.numpy()) == data.labels_test.numpy()))
    assert acc >= lin_acc - 0.02
    assert acc > 0.9


def test_report_rejects_bad_options(capsys, tmp_path):
    code, _, err = _run(capsys, "report", "--out", str(tmp_path), "--n-train", "5000")
    assert code != 0
    assert "n_train + n_test" in err


def test_reproduce_command_writes_html(capsys, tmp_path):
    code, out, err = _run(capsys, "reproduce", "min-eigenvalue", "--quick", "--out", str(tmp_path))
    assert code == 0, err
    assert (tmp_path / "min-eigenvalue.html").exists()
    assert "lambda_min" in out
