"""Kernel stores: resume, kill-and-resume, corruption and foreign stores, predict on a store."""

import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from ntkit import layers as L
from ntkit.errors import StoreCorruptError, StoreMismatchError
from ntkit.predict.solvers import conjugate_gradient, kernel_operator
from ntkit.tiling import kernel_matrix, kernel_store, open_store
from tests.tiling.kernels import inputs, rbf, slow_rbf

ROOT = Path(__file__).resolve().parents[2]


def _marks(path) -> int:
    try:
        return int((np.asarray(zarr.open_group(str(path), mode="r")["tiles"][...]) != 0).sum())
    except Exception:  # noqa: BLE001 - not created yet
        return 0


def test_store_result_equals_memory_and_resume_recomputes_nothing(tmp_path):
    net = L.serial(L.Dense(8, b_std=0.1), L.ReLU(), L.Dense(1))
    x = inputs(21, 4)
    store = tmp_path / "k.zarr"
    got = kernel_matrix(net, x, tile=5, store=store, progress=False)
    want = net.kernel(x)
    torch.testing.assert_close(got.ntk, want.ntk, rtol=1e-12, atol=1e-12)
    assert got.cov2 is None and got.x1_is_x2
    handle = open_store(store)
    assert handle.complete and handle.n_tiles == 15 and handle.verify() == []
    assert handle.metadata["tile"] == [5, 5] and handle.metadata["dtype"] == "float64"
    # a rerun resumes: no tile is recomputed (counted through a tile function)
    slow_rbf.tiles = 0
    x = inputs(20, 4)
    kernel_matrix(slow_rbf, x, tile=5, store=tmp_path / "s.zarr", progress=False)
    first = slow_rbf.tiles
    again = kernel_matrix(slow_rbf, x, tile=5, store=tmp_path / "s.zarr", progress=False)
    assert first == 10 and slow_rbf.tiles == first
    torch.testing.assert_close(again, rbf(x, x), rtol=1e-12, atol=1e-12)
    # tile=None adopts the store's tiles
    kernel_matrix(slow_rbf, x, store=tmp_path / "s.zarr", progress=False)
    assert slow_rbf.tiles == first


@pytest.mark.slow  # a subprocess that imports torch: ~15 s on a busy 2-core machine
def test_kill_and_resume(tmp_path):
    """SIGKILL a subprocess part-way; the rerun computes exactly the unfinished tiles."""
    store = tmp_path / "kill.zarr"
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT}", "OMP_NUM_THREADS": "1"}
    code = f"from tests.tiling.kernels import main; main({str(store)!r})"
    child = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env)
    try:
        deadline = time.monotonic() + 120
        while _marks(store) < 8:
            assert child.poll() is None, "the child finished or failed before being killed"
            assert time.monotonic() < deadline, "the child made no progress"
            time.sleep(0.02)
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == -signal.SIGKILL
    finished = _marks(store)
    total = 55  # 40 inputs, 4 x 4 tiles: 10 * 11 / 2 on or above the diagonal
    assert 8 <= finished < total
    slow_rbf.tiles = 0
    handle = kernel_store(slow_rbf, inputs(), store=store, tile=4, progress=False)
    assert slow_rbf.tiles == total - finished  # no finished tile recomputed
    resumed = handle.load()
    uninterrupted = kernel_matrix(slow_rbf, inputs(), tile=4, progress=False)
    assert torch.equal(resumed, uninterrupted)
    torch.testing.assert_close(resumed, rbf(inputs(), inputs()), rtol=1e-12, atol=1e-12)


def test_corrupted_tiles_are_detected_and_recomputed(tmp_path):
    x = inputs(12, 3)
    store = tmp_path / "c.zarr"
    kernel_store(slow_rbf, x, store=store, tile=4, progress=False)
    chunk = store / "kernel" / "c" / "0" / "1"  # tile (0, 1)
    data = chunk.read_bytes()
    chunk.write_bytes(data[: len(data) // 2])  # truncated
    mirror = store / "kernel" / "c" / "2" / "0"  # the mirror of tile (0, 2)
    flipped = bytearray(mirror.read_bytes())
    flipped[7] ^= 0x40  # same size, one bit changed
    mirror.write_bytes(bytes(flipped))
    handle = open_store(store)
    assert handle.complete  # both are still marked done ...
    assert sorted(handle.verify()) == [(0, 1), (0, 2)]  # ... but fail their checksums
    with pytest.raises(StoreCorruptError, match=r"\(0, 1\)"):
        handle.load()
    slow_rbf.tiles = 0
    with pytest.warns(UserWarning, match=r"2 tile\(s\) marked done fail their checksum"):
        got = kernel_matrix(slow_rbf, x, store=store, tile=4, progress=False)
    assert slow_rbf.tiles == 2  # exactly the damaged tiles
    torch.testing.assert_close(got, rbf(x, x), rtol=1e-12, atol=1e-12)
    assert open_store(store).verify() == []


def test_foreign_stores_are_refused(tmp_path):
    net = L.serial(L.Dense(8), L.ReLU(), L.Dense(1))
    x = inputs(10, 4)
    store = tmp_path / "k.zarr"
    kernel_store(net, x, store=store, tile=4, progress=False)
    cases = [
        ((net, x + 1e-3), {}, "inputs x1"),
        ((L.serial(L.Dense(8), L.Erf(), L.Dense(1)), x), {}, "kernel function"),
        ((L.serial(L.Dense(8, w_std=1.1), L.ReLU(), L.Dense(1)), x), {}, "kernel function"),
        ((net, x), {"dtype": torch.float32}, "dtype"),
        ((net, x), {"get": "nngp"}, "outputs"),
        ((net, x, inputs(3, 4)), {}, "x2"),
        ((net, x), {"tile": 5}, "tile size"),
    ]
    for args, opts, what in cases:
        with pytest.raises(StoreMismatchError, match=what):
            kernel_matrix(*args, store=store, progress=False, **opts)
    # the refusals left the store as it was
    assert open_store(store).complete and open_store(store).verify() == []


def test_stores_that_are_not_ntkit_stores(tmp_path):
    plain = tmp_path / "plain.zarr"
    zarr.open_group(str(plain), mode="w").create_array("a", shape=(2,), dtype="f8")
    with pytest.raises(StoreMismatchError, match="not an ntkit kernel store"):
        kernel_matrix(rbf, inputs(4, 3), store=plain, progress=False)
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match="no kernel store"):
        kernel_matrix(rbf, inputs(4, 3), store=other, progress=False)


def test_unwritable_store_path(tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a directory")
    with pytest.raises(ValueError, match="cannot create the kernel store"):
        kernel_matrix(rbf, inputs(4, 3), store=blocker / "k.zarr", progress=False)


def test_predict_reads_a_stored_kernel_block_by_block(tmp_path):
    x = inputs(30, 3)
    y = torch.sin(x[:, :1] * 2)
    handle = kernel_store(rbf, x, store=tmp_path / "k.zarr", tile=7, progress=False)
    k = rbf(x, x)
    v = inputs(30, 2, seed=9)
    op = kernel_operator(handle)
    assert op.block_rows % 7 == 0 or op.block_rows == 30
    small = handle.operator(block_rows=7)
    torch.testing.assert_close(op @ v, k @ v, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(small @ v, k @ v, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(small.diagonal(), torch.diagonal(k), rtol=0, atol=0)
    res = conjugate_gradient(handle, y, ridge=1e-1, tol=1e-10, max_iter=500)
    ref = torch.linalg.solve(k + 1e-1 * torch.eye(30, dtype=torch.float64), y)
    torch.testing.assert_close(res.solution, ref, rtol=1e-7, atol=1e-9)
    assert handle.to_dask().shape == (30, 30)
    np.testing.assert_allclose(handle.to_dask()[3:9, 20:].compute(), k[3:9, 20:].numpy())


def test_kernel_store_bounded_memory_and_incomplete_handle(tmp_path):
    x = inputs(40, 3)
    # the whole result (12.5 KiB) exceeds max_memory, the tiles do not
    handle = kernel_store(rbf, x, store=tmp_path / "k.zarr", max_memory=9000, progress=False)
    assert handle.metadata["tile"][0] < 40
    torch.testing.assert_close(handle.load(), rbf(x, x), rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="more than max_memory"):
        kernel_matrix(rbf, x, store=tmp_path / "k.zarr", max_memory=9000, progress=False)
    # an unfinished store cannot be read as a whole
    path = tmp_path / "k.zarr"
    zarr.open_group(str(path), mode="r+")["tiles"][0, 1] = 0
    with pytest.raises(ValueError, match="incomplete"):
        open_store(path).load()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        kernel_store(rbf, x, store=path, max_memory=9000, progress=False)
    assert open_store(path).complete


def test_spatial_kernels_round_trip_through_a_store(tmp_path):
    """No readout: (n, n, H, H', W, W') blocks, mirrored with their location pairs swapped."""
    net = L.serial(L.Conv(3, 3, padding="same"), L.ReLU(), L.Conv(2, 2))
    g = torch.Generator().manual_seed(4)
    x = torch.randn(7, 2, 4, 4, generator=g, dtype=torch.float64)
    x2 = torch.randn(3, 2, 4, 4, generator=g, dtype=torch.float64)
    for i, args in enumerate(((x,), (x, x2))):
        want = net.kernel(*args)
        handle = kernel_store(net, *args, store=tmp_path / f"{i}.zarr", tile=3, progress=False)
        got = handle.load()
        assert got.nngp.shape == want.nngp.shape == (7, len(args[-1]), 3, 3, 3, 3)
        for field in ("nngp", "ntk", "cov1"):
            torch.testing.assert_close(
                getattr(got, field), getattr(want, field), rtol=1e-12, atol=1e-12
            )
