"""``ntkit kernel SPEC INPUTS --out k.zarr``: JSON/YAML/module specs, resume, bad input."""

import json

import numpy as np
import torch
from typer.testing import CliRunner

from ntkit import layers as L
from ntkit.cli import app
from ntkit.tiling import open_store
from tests.tiling.kernels import inputs, rbf


def test_json_spec_npy_inputs_and_resume(tmp_path):
    spec = tmp_path / "net.json"
    spec.write_text(json.dumps([{"Dense": [16, 1.5, 0.1]}, "ReLU", {"Dense": {"out_features": 1}}]))
    x = inputs(13, 4).numpy()
    np.save(tmp_path / "x.npy", x)
    x2 = inputs(5, 4, seed=3).numpy()
    np.savez(tmp_path / "x2.npz", x=x2)
    out = tmp_path / "k.zarr"
    args = ["kernel", str(spec), str(tmp_path / "x.npy"), "--out", str(out), "--tile", "4"]
    result = CliRunner().invoke(app, [*args, "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "10/10" in result.output  # 4 x 4 tiles of 13: 4 * 5 / 2 on or above the diagonal
    net = L.serial(L.Dense(16, 1.5, 0.1), L.ReLU(), L.Dense(1))
    got = open_store(out).load()
    torch.testing.assert_close(got.ntk, net.kernel(torch.from_numpy(x)).ntk, rtol=1e-12, atol=0)
    stamp = sorted(p.stat().st_mtime_ns for p in out.rglob("c/*/*"))  # every chunk file
    again = CliRunner().invoke(app, [*args, "--no-progress"])  # resumes: nothing rewritten
    assert again.exit_code == 0, again.output
    assert sorted(p.stat().st_mtime_ns for p in out.rglob("c/*/*")) == stamp
    # explicit x2 from an .npz, NNGP only
    out2 = tmp_path / "k2.zarr"
    more = ["--x2", str(tmp_path / "x2.npz"), "--get", "nngp", "--no-progress"]
    result = CliRunner().invoke(
        app, ["kernel", str(spec), str(tmp_path / "x.npy"), "--out", str(out2), *more]
    )
    assert result.exit_code == 0, result.output
    want = net.kernel(torch.from_numpy(x), torch.from_numpy(x2), get="nngp").nngp
    torch.testing.assert_close(open_store(out2).load().nngp, want, rtol=1e-12, atol=0)


def test_yaml_and_module_specs_with_csv_inputs(tmp_path):
    x = inputs(9, 3)
    np.savetxt(tmp_path / "x.csv", x.numpy(), delimiter=",", fmt="%.17g")
    spec = tmp_path / "net.yaml"
    spec.write_text("- Dense: [8]\n- Erf\n- Dense: {out_features: 1}\n")
    out = tmp_path / "a.zarr"
    result = CliRunner().invoke(
        app, ["kernel", str(spec), str(tmp_path / "x.csv"), "--out", str(out), "--no-progress"]
    )
    assert result.exit_code == 0, result.output
    net = L.serial(L.Dense(8), L.Erf(), L.Dense(1))
    torch.testing.assert_close(open_store(out).load().ntk, net.kernel(x).ntk, rtol=1e-12, atol=0)
    py = tmp_path / "net.py"
    py.write_text("net = L.serial(L.Dense(8), L.Erf(), L.Dense(1))\n")
    result = CliRunner().invoke(
        app, ["kernel", str(py), str(tmp_path / "x.csv"), "--out", str(tmp_path / "p.zarr")]
    )
    assert result.exit_code == 0, result.output
    torch.testing.assert_close(
        open_store(tmp_path / "p.zarr").load().ntk, net.kernel(x).ntk, rtol=1e-12, atol=0
    )
    out = tmp_path / "b.zarr"
    result = CliRunner().invoke(
        app,
        ["kernel", "tests.tiling.kernels:rbf", str(tmp_path / "x.csv"), "--out", str(out)],
    )
    assert result.exit_code == 0, result.output
    torch.testing.assert_close(open_store(out).load(), rbf(x, x), rtol=1e-12, atol=0)


def _text(output: str) -> str:
    """The words of a CLI message, without the error box's borders and line breaks.

    Long paths (pytest-xdist's temporary folders) make the box wrap a message anywhere.
    """
    return " ".join(output.translate({ord(c): " " for c in "│╭╮╰╯─"}).split())


def test_bad_cli_input(tmp_path):
    np.save(tmp_path / "x.npy", inputs(4, 3).numpy())
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(["Dense"]))  # missing its width
    cases = [
        (["nosuchmodule:thing"], "cannot import"),
        (["tests.tiling.kernels:nothing"], "no attribute"),
        ([str(bad)], "bad arguments for Dense"),
        (["spec.txt"], "SPEC must be"),
    ]
    for spec, message in cases:
        result = CliRunner().invoke(
            app, ["kernel", *spec, str(tmp_path / "x.npy"), "--out", str(tmp_path / "k.zarr")]
        )
        assert result.exit_code != 0 and message in _text(result.output), result.output
    result = CliRunner().invoke(
        app, ["kernel", "tests.tiling.kernels:rbf", str(tmp_path / "x.txt"), "--out", "k.zarr"]
    )
    assert result.exit_code != 0 and "does not exist" in _text(result.output), result.output
