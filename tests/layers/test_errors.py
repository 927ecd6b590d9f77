"""Bad input raises a clear error naming what was expected and what came."""

import numpy as np
import pytest
import torch

import ntkit as nk
from ntkit import layers as L

MLP = L.serial(L.Dense(4), L.ReLU(), L.Dense(1))


def _x(n=3, d=5):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_inputs(bad):
    x = _x()
    x[1, 2] = bad
    with pytest.raises(ValueError, match=r"x1 contains .* \(first at index \(1, 2\)\)"):
        MLP.kernel(x)
    with pytest.raises(ValueError, match="x2 contains"):
        MLP.kernel(_x(), x)


def test_wrong_rank_and_types():
    with pytest.raises(ValueError, match=r"at least 2 axes.*got shape \(5,\)"):
        MLP.kernel(torch.ones(5))
    with pytest.raises(ValueError, match=r"Dense expects inputs of shape \(n, features\).*Flatten"):
        MLP.kernel(torch.ones(2, 3, 4))
    with pytest.raises(TypeError, match="torch.Tensor or numpy.ndarray"):
        MLP.kernel([[1.0, 2.0]])
    with pytest.raises(TypeError, match="real-valued"):
        MLP.kernel(torch.ones(2, 3, dtype=torch.complex64))


def test_mismatched_features_and_empty_batches():
    with pytest.raises(ValueError, match=r"same per-sample shape.*\(3, 5\).*\(2, 4\)"):
        MLP.kernel(_x(), _x(2, 4))
    with pytest.raises(ValueError, match="empty batch"):
        MLP.kernel(torch.ones(0, 5))
    with pytest.raises(ValueError, match="empty batch"):
        MLP.kernel(_x(), np.ones((0, 5)))


def test_non_gaussian_inputs_to_activations():
    with pytest.raises(ValueError, match=r"layer 2 \(Erf.*needs Gaussian pre-activations"):
        L.serial(L.Dense(3), L.ReLU(), L.Erf(), L.Dense(1)).kernel(_x())
    with pytest.raises(ValueError, match="ReLU needs Gaussian"):
        L.serial(L.ReLU(), L.Dense(1)).kernel(_x())  # the input itself is not Gaussian
    with pytest.raises(ValueError, match="GELU needs Gaussian"):
        L.serial(
            L.Dense(3), L.FanOut(2), L.parallel(L.Dense(3), L.Dense(3)), L.FanInProd(), L.GELU()
        ).kernel(_x())


def test_correlated_fan_in_branches_are_refused():
    with pytest.raises(ValueError, match=r"branches \[0, 1\] are correlated"):
        L.serial(
            L.Dense(3), L.FanOut(2), L.parallel(L.Identity(), L.Identity()), L.FanInSum()
        ).kernel(_x())
    with pytest.raises(ValueError, match="correlated"):  # ReLU shifts the mean
        L.serial(
            L.Dense(3),
            L.FanOut(2),
            L.parallel(L.ReLU(), L.serial(L.Dense(3), L.ReLU())),
            L.FanInSum(),
        ).kernel(_x())
    with pytest.raises(ValueError, match="product of their kernels"):  # no own weights
        L.serial(L.Dense(3), L.FanOut(2), L.parallel(L.ReLU(), L.Erf()), L.FanInProd()).kernel(_x())
    # a product needs independence, not zero mean: ReLU-ended fresh branches are allowed
    L.serial(
        L.Dense(3),
        L.FanOut(2),
        L.parallel(L.ReLU(), L.serial(L.Dense(3), L.ReLU())),
        L.FanInProd(),
    ).kernel(_x())
    # odd activations keep fresh branches zero-mean: allowed
    L.serial(
        L.Dense(3),
        L.FanOut(2),
        L.parallel(L.Identity(), L.serial(L.Dense(3), L.Erf())),
        L.FanInSum(),
    ).kernel(_x())


def test_stream_count_errors():
    with pytest.raises(ValueError, match="ends with 2 streams"):
        L.serial(L.Dense(3), L.FanOut(2)).kernel(_x())
    with pytest.raises(ValueError, match="expects 3 streams; got 2"):
        L.serial(L.FanOut(2), L.parallel(L.Dense(1), L.Dense(1), L.Dense(1))).kernel(_x())
    with pytest.raises(ValueError, match="equal shapes"):
        L.serial(L.FanOut(2), L.parallel(L.Dense(2), L.Dense(3)), L.FanInSum()).kernel(_x())


def test_bad_layer_arguments():
    with pytest.raises(TypeError, match="received the class ReLU.*ReLU\\(\\)"):
        L.serial(L.Dense(3), L.ReLU)
    with pytest.raises(TypeError, match="expects ntkit layers"):
        L.serial(L.Dense(3), torch.nn.ReLU())
    with pytest.raises(ValueError, match="parameterization must be one of"):
        L.Dense(3, parameterization="mean-field")
    with pytest.raises(ValueError, match="no infinite-width NTK under muP"):
        L.Conv(3, 3, parameterization="mup")
    with pytest.raises(ValueError, match="w_std must be a finite non-negative"):
        L.Dense(3, w_std=-1.0)
    with pytest.raises(ValueError, match="positive integer"):
        L.Dense(0)
    with pytest.raises(ValueError, match="get must be"):
        MLP.kernel(_x(), get="ntkk")


def test_impossible_memory_budget_reports_the_estimate():
    with pytest.raises(ValueError, match=r"max_memory=1000 B cannot hold.*result needs 1.56 KiB"):
        MLP.kernel(_x(10), _x(10), max_memory=1000)


def test_monte_carlo_argument_errors():
    with pytest.raises(ValueError, match="positive integer"):
        nk.monte_carlo_kernel(MLP, _x(), n_samples=0)
    with pytest.raises(ValueError, match="vector outputs"):
        nk.monte_carlo_kernel(L.serial(L.Dense(3), L.FanOut(2)), _x())
