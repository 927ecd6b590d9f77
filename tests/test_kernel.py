"""The Kernel record: typed accessors."""

import pytest
import torch

from ntkit import layers as L


def test_get_ntk_returns_the_ntk_or_says_it_was_not_computed():
    net = L.serial(L.Dense(8), L.ReLU(), L.Dense(1))
    x = torch.randn(4, 3, dtype=torch.float64)
    k = net.kernel(x)
    assert k.get_ntk() is k.ntk and k.ntk is not None
    only = net.kernel(x, get="nngp")
    assert only.ntk is None
    with pytest.raises(ValueError, match="no NTK: it was computed with get='nngp'"):
        only.get_ntk()


def test_mypy_accepts_the_public_api_and_typed_user_code():
    api = pytest.importorskip("mypy.api")
    out, err, status = api.run([])  # files and settings: [tool.mypy] in pyproject.toml
    assert status == 0, out + err
