"""The kernel driver's parts: planner, pure tile function, sink, scoped settings, pickling."""

import pickle
import threading

import cloudpickle
import pytest
import torch

import ntkit.errors
import ntkit.layers.base
from ntkit import layers as L
from ntkit import settings
from ntkit.layers._footprint import record_footprint, recording
from ntkit.layers._planner import TilePlan, count_tiles, prepare, tile_ranges
from ntkit.layers._sink import MemorySink
from ntkit.layers._tile import kernel_tile


def _cnn():
    return L.serial(
        L.Conv(4, 3, padding="same"), L.ReLU(), L.AvgPool(2), L.Conv(3, 2), L.Erf(), L.Flatten()
    )


def _mlp():
    return L.serial(L.Dense(8, b_std=0.1), L.ReLU(), L.Dropout(0.8), L.Dense(4), L.GELU())


@pytest.mark.parametrize("make,shape", [(_mlp, (6,)), (_cnn, (2, 5, 5))])
@pytest.mark.parametrize("symmetric", [True, False])
def test_hand_driven_tiles_equal_the_driver(make, shape, symmetric):
    """Planner + kernel_tile + MemorySink over ragged 3 x 5 tiles reproduce net.kernel."""
    net = make()
    g = torch.Generator().manual_seed(0)
    x1 = torch.randn(11, *shape, generator=g, dtype=torch.float64)
    x2 = None if symmetric else torch.randn(7, *shape, generator=g, dtype=torch.float64)
    want = net.kernel(x1, x2)
    problem = prepare(net, x1, x2)
    sink = MemorySink(problem)
    n1, n2 = problem.n1, problem.n2
    plan = TilePlan(3, 5, count_tiles(n1, n2, 3, 5, symmetric), 1)
    ranges = list(tile_ranges(n1, n2, plan, symmetric))
    assert len(ranges) == plan.n_tiles
    covered = torch.zeros(n1, n2, dtype=torch.int64)
    for a0, a1, j0, j1 in ranges:
        covered[a0:a1, j0:j1] += 1
        block = kernel_tile(
            net, problem.x1[a0:a1], problem.x2[j0:j1], problem.layout, shift=a0 - j0
        )
        sink.write(a0, a1, j0, j1, block)
    assert covered.max() == 1  # no entry computed twice
    if symmetric:  # every pair reached directly or by mirroring; strict lower blocks skipped
        assert bool(((covered + covered.T) >= 1).all())
        assert covered.tril(-3).sum() == 0
    else:
        assert torch.equal(covered, torch.ones(n1, n2, dtype=torch.int64))
    got = sink.result()
    for a, b in ((got.nngp, want.nngp), (got.ntk, want.ntk), (got.cov1, want.cov1)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    if symmetric:
        assert torch.equal(got.nngp, got.nngp.T) and torch.equal(got.ntk, got.ntk.T)
        assert got.cov2 is None
    else:
        torch.testing.assert_close(got.cov2, want.cov2, rtol=1e-12, atol=1e-14)


def test_footprints_are_scoped_to_one_call():
    net = _mlp()
    x = torch.randn(4, 6, dtype=torch.float64)
    record_footprint(L.ReLU(), None)  # outside any recording: a no-op (would fail on None)
    with recording() as outer:
        problem = prepare(net, x)  # records into its own list, not the caller's
        net.kernel(x)  # its probe and its tiles record nothing here
    assert outer == []
    names = [name for *_, name in problem.footprints]
    assert names[0].startswith("serial(") and len(names) == 1 + len(net.layers)

    seen = {}

    def other_thread():
        with recording() as mine:
            L.ReLU().apply_kernel(problem.probe.replace(is_gaussian=True))
        seen["other"] = mine

    with recording() as main:
        t = threading.Thread(target=other_thread)
        t.start()
        t.join()
    assert main == [] and len(seen["other"]) == 1


def test_host_switches_are_scoped_and_restored():
    net = _cnn()
    x = torch.randn(9, 2, 5, 5, dtype=torch.float64)
    threads = torch.get_num_threads()
    base = net.kernel(x)
    assert torch.get_num_threads() == threads
    assert settings.parallel_tiles_enabled() and settings.retain_heap_enabled()
    with settings.parallel_tiles(False), settings.retain_heap(False):
        assert not settings.parallel_tiles_enabled() and not settings.retain_heap_enabled()
        serial = net.kernel(x, max_memory=2_000_000)
    assert settings.parallel_tiles_enabled() and settings.retain_heap_enabled()
    assert torch.get_num_threads() == threads
    torch.testing.assert_close(serial.ntk, base.ntk, rtol=1e-12, atol=1e-14)


def _cubic(x):
    return x**3 - x


def test_layers_pickle_and_give_the_same_kernel():
    x = torch.randn(5, 2, 5, 5, dtype=torch.float64)
    net = L.serial(_cnn(), L.Dense(3), L.Elementwise(_cubic, degree=8), L.Dense(1))
    want = net.kernel(x)
    got = pickle.loads(pickle.dumps(net)).kernel(x)
    assert torch.equal(got.ntk, want.ntk)

    with_lambda = L.serial(L.Dense(3), L.Elementwise(lambda t: t**3 - t, degree=8))
    with pytest.raises((pickle.PicklingError, AttributeError), match="lambda"):
        pickle.dumps(with_lambda)
    # cloudpickle (what Dask uses) sends the lambda by value
    v = torch.randn(4, 6, dtype=torch.float64)
    clone = cloudpickle.loads(cloudpickle.dumps(with_lambda))
    assert torch.equal(clone.kernel(v).ntk, with_lambda.kernel(v).ntk)


def test_layer_spec_error_lives_in_errors():
    assert ntkit.layers.base.LayerSpecError is ntkit.errors.LayerSpecError
    assert L.LayerSpecError is ntkit.errors.LayerSpecError
    with pytest.raises(ntkit.errors.LayerSpecError, match="Gaussian"):
        L.serial(L.ReLU(), L.Dense(1)).kernel(torch.randn(3, 4))
