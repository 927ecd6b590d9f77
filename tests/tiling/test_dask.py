"""Dask execution: a 2-process LocalCluster equals in-process, survives a killed worker."""

import logging
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from ntkit import layers as L
from ntkit.errors import NotPicklableError
from ntkit.tiling import kernel_matrix, kernel_store
from tests.tiling.kernels import inputs, rbf, slow_rbf

ROOT = Path(__file__).resolve().parents[2]


def test_unreachable_scheduler_fails_within_the_timeout():
    start = time.monotonic()
    with pytest.raises(ConnectionError, match="cannot reach the Dask scheduler"):
        kernel_matrix(rbf, inputs(6, 3), executor="tcp://127.0.0.1:9", timeout=1, progress=False)
    assert time.monotonic() - start < 20


def test_unpicklable_function_is_refused_before_connecting():
    lock = threading.Lock()

    def locked(a, b):
        with lock:
            return rbf(a, b)

    start = time.monotonic()
    with pytest.raises(NotPicklableError, match="cannot be sent to Dask workers"):
        kernel_matrix(locked, inputs(6, 3), executor="tcp://127.0.0.1:9", timeout=30)
    assert time.monotonic() - start < 10  # no connection attempt
    # in this process the same function is fine
    torch.testing.assert_close(
        kernel_matrix(locked, inputs(6, 3), progress=False), rbf(*[inputs(6, 3)] * 2)
    )


def test_bad_executor():
    with pytest.raises(TypeError, match="executor must be"):
        kernel_matrix(rbf, inputs(6, 3), executor=3, progress=False)


@pytest.fixture(scope="module")
def client():
    distributed = pytest.importorskip("distributed")
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), str(ROOT)])
    try:
        cluster = distributed.LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            silence_logs=logging.ERROR,
        )
    finally:
        if old is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = old
    c = distributed.Client(cluster)
    yield c
    c.close()
    cluster.close()


@pytest.mark.slow
def test_two_worker_processes_equal_in_process(client, tmp_path):
    assert len(client.scheduler_info()["workers"]) == 2
    net = L.serial(L.Conv(4, 3, padding="same"), L.ReLU(), L.GlobalAvgPool(), L.Dense(1))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(14, 2, 5, 5, generator=g, dtype=torch.float64)
    x2 = torch.randn(6, 2, 5, 5, generator=g, dtype=torch.float64)
    for args in ((x,), (x, x2)):
        here = kernel_matrix(net, *args, tile=4, progress=False)
        there = kernel_matrix(net, *args, tile=4, executor=client, progress=False)
        assert torch.equal(there.ntk, here.ntk) and torch.equal(there.nngp, here.nngp)
        torch.testing.assert_close(there.ntk, net.kernel(*args).ntk, rtol=1e-12, atol=1e-12)
    # workers write straight to the store
    handle = kernel_store(net, x, tile=4, store=tmp_path / "k.zarr", executor=client)
    assert handle.verify() == []
    assert torch.equal(handle.load().ntk, kernel_matrix(net, x, tile=4, progress=False).ntk)


@pytest.mark.slow
def test_a_killed_worker_does_not_corrupt_the_result(client, tmp_path):
    store = tmp_path / "k.zarr"
    pids = client.run(os.getpid)
    victim = next(iter(pids.values()))
    killed = threading.Event()

    def kill_when_started():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                marks = np.asarray(zarr.open_group(str(store), mode="r")["tiles"][...])
                if (marks != 0).sum() >= 6:
                    os.kill(victim, signal.SIGKILL)
                    killed.set()
                    return
            except Exception:  # noqa: BLE001 - store not created yet
                pass
            time.sleep(0.02)

    killer = threading.Thread(target=kill_when_started)
    killer.start()
    handle = kernel_store(slow_rbf, inputs(), store=store, tile=4, executor=client)
    killer.join()
    assert killed.is_set(), "the run ended before a worker could be killed"
    assert victim not in client.run(os.getpid).values()  # that process is gone
    assert handle.complete and handle.verify() == []
    got = handle.load()
    assert torch.equal(got, kernel_matrix(slow_rbf, inputs(), tile=4, progress=False))
    torch.testing.assert_close(got, rbf(inputs(), inputs()), rtol=1e-12, atol=1e-12)


@pytest.mark.slow
def test_local_cluster_executor():
    x = inputs(12, 3)
    got = kernel_matrix(rbf, x, tile=5, executor="local", progress=False)
    torch.testing.assert_close(got, rbf(x, x), rtol=1e-12, atol=1e-12)
