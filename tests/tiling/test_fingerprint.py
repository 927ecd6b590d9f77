"""Store fingerprints: equal content gives equal hashes, any change gives another."""

import functools
import threading

import pytest
import torch

from ntkit import layers as L
from ntkit.errors import NotPicklableError
from ntkit.tiling._fingerprint import fingerprint, tensor_fingerprint
from tests.tiling.kernels import inputs, rbf


def _scaled(scale):
    def k(a, b):
        return scale * rbf(a, b)

    return k


def test_layers_hash_by_parameters_not_identity():
    a = L.serial(L.Conv(4, 3, padding="same"), L.ReLU(), L.GlobalAvgPool(), L.Dense(1))
    b = L.serial(L.Conv(4, 3, padding="same"), L.ReLU(), L.GlobalAvgPool(), L.Dense(1))
    c = L.serial(L.Conv(4, 3, padding="valid"), L.ReLU(), L.GlobalAvgPool(), L.Dense(1))
    before = fingerprint(a)
    a.kernel(torch.randn(2, 1, 5, 5))  # fills a per-input-size window cache
    assert fingerprint(a) == before == fingerprint(b) != fingerprint(c)
    assert fingerprint(a.kernel) == fingerprint(b.kernel) != fingerprint(c.kernel)
    d = L.serial(L.Dense(3, w_std=1.0), L.Erf())
    e = L.serial(L.Dense(3, w_std=1.0 + 1e-12), L.Erf())
    assert fingerprint(d) != fingerprint(e)


def test_functions_hash_by_code_closure_and_globals():
    assert fingerprint(_scaled(2.0)) == fingerprint(_scaled(2.0)) != fingerprint(_scaled(3.0))
    assert fingerprint(lambda a, b: a @ b.T) != fingerprint(lambda a, b: 2 * a @ b.T)
    p1 = functools.partial(rbf)
    assert fingerprint(p1) == fingerprint(functools.partial(rbf))
    m1 = torch.nn.Linear(3, 2)
    m2 = torch.nn.Linear(3, 2)
    with torch.no_grad():
        m2.load_state_dict(m1.state_dict())
    assert fingerprint(m1) == fingerprint(m2)
    with torch.no_grad():
        m2.weight[0, 0] += 1e-6
    assert fingerprint(m1) != fingerprint(m2)


def test_inputs_hash_by_values_and_dtype():
    x = inputs(5, 3)
    assert tensor_fingerprint(x) == tensor_fingerprint(x.clone())
    assert tensor_fingerprint(x) != tensor_fingerprint(x.float())
    y = x.clone()
    y[4, 2] += 1e-15
    assert tensor_fingerprint(x) != tensor_fingerprint(y)


def test_objects_without_stable_content_are_refused():
    lock = threading.Lock()
    with pytest.raises(NotPicklableError, match="stable content"):
        fingerprint(lambda a, b: (lock, rbf(a, b))[1])
