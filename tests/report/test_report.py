"""``ntkit report`` end to end: options, data and spec files, the self-contained page."""

import base64
import io
import re

import numpy as np
import pytest
import torch
from PIL import Image

from ntkit.cli import run
from ntkit.report import ReportConfig, ReportContext, load_spec

SMALL = ["--n-train", "90", "--n-test", "60", "--max-steps", "30", "--quick", "--no-progress"]


def _blobs(n=150, seed=0):
    """Three well-separated Gaussian classes in 5-D (labels 7, 8, 9)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    centres = 4.0 * np.eye(3, 5)
    return centres[labels] + rng.standard_normal((n, 5)), labels + 7


def test_report_from_csv_and_spec_writes_a_self_contained_page(tmp_path, capsys):
    x, labels = _blobs()
    data = tmp_path / "blobs.csv"
    header = ",".join([f"f{i}" for i in range(5)] + ["label"])
    np.savetxt(data, np.column_stack([x, labels]), delimiter=",", header=header, comments="")
    spec = tmp_path / "net.py"
    spec.write_text(
        "def make_net(width):\n"
        "    return L.serial(L.Dense(width, 1.2, 0.1), L.Erf(), L.Dense(3, 1.2, 0.1))\n"
    )
    code = run(["report", "--out", str(tmp_path), "--data", str(data), "--spec", str(spec), *SMALL])
    out, err = capsys.readouterr()
    assert code == 0, err
    page = (tmp_path / "report.html").read_text()
    assert "src='http" not in page and 'src="http' not in page  # nothing fetched
    images = re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", page)
    assert len(images) == 4
    for data64 in images:
        img = Image.open(io.BytesIO(base64.b64decode(data64)))
        img.load()
        assert min(img.size) > 100
    for title in (
        "Kernel matrices",
        "Kernel spectra",
        "Kernel regression",
        "Training dynamics",
        "Finite against infinite width",
        "Provenance",
    ):
        assert title in page
    assert torch.__version__ in page and "blobs.csv" in page
    # three separated blobs: kernel regression is (nearly) perfect
    acc = float(out.split("test accuracy NTK regression")[1].split()[1])
    assert acc > 0.95


def test_npy_and_npz_data_and_input_shape(tmp_path):
    x, labels = _blobs(120)
    np.save(tmp_path / "d.npy", np.column_stack([x[:, :4], labels]))
    np.savez(tmp_path / "d.npz", x=x[:, :4].reshape(-1, 1, 2, 2), y=labels)
    a = ReportContext(ReportConfig(n_train=80, n_test=40, data=tmp_path / "d.npy"))
    b = ReportContext(
        ReportConfig(n_train=80, n_test=40, data=tmp_path / "d.npz", input_shape=(4,))
    )
    torch.testing.assert_close(a.data.x_train, b.data.x_train)
    assert a.data.n_classes == 3 and a.in_shape == (4,)


def test_spec_with_input_shape_runs_a_cnn_on_digits(tmp_path):
    spec = tmp_path / "cnn.py"
    spec.write_text(
        "input_shape = (1, 8, 8)\n"
        "net = L.serial(L.Conv(16, 3, padding='same'), L.ReLU(), L.Flatten(), L.Dense(10))\n"
    )
    make, shape = load_spec(spec)
    assert shape == (1, 8, 8) and make(None) is make(64)
    ctx = ReportContext(ReportConfig(n_train=50, n_test=20, spec=spec))
    assert ctx.in_shape == (1, 8, 8)
    assert ctx.kernel("test_train").ntk.shape == (20, 50)


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--spec", "nope.py"], "no such file"),
        (["--data", "nope.csv"], "no such file"),
        (["--input-shape", "1,x"], "--input-shape"),
        (["--input-shape", "3,3"], "input_shape (3, 3) has 9 entries"),
        (["--activation", "tanh"], "activation must be one of"),
        (["--n-train", "0"], "'--n-train': n_train must be a positive integer"),
        (["--n-train", "5000"], "n_train + n_test"),
    ],
)
def test_bad_report_options_exit_2_with_one_line(tmp_path, capsys, argv, needle):
    code = run(["report", "--out", str(tmp_path), "--no-progress", *argv])
    err = capsys.readouterr().err
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and needle in err


def test_spec_whose_readout_does_not_match_the_classes(tmp_path, capsys):
    spec = tmp_path / "net.py"
    spec.write_text("net = L.serial(L.Dense(64), L.ReLU(), L.Dense(3))\n")
    code = run(["report", "--out", str(tmp_path), "--spec", str(spec), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "the data has 10 classes" in err
