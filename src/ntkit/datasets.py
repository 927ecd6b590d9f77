"""Small datasets that ship with installed packages, and synthetic ones."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["Split", "load_digits", "one_hot"]


@dataclass(frozen=True)
class Split:
    """A train/test split with one-hot targets.

    Attributes:
        x_train: ``(n_train, d)`` float64 inputs.
        y_train: ``(n_train, n_classes)`` one-hot targets.
        labels_train: ``(n_train,)`` integer labels.
        x_test: ``(n_test, d)`` float64 inputs.
        y_test: ``(n_test, n_classes)`` one-hot targets.
        labels_test: ``(n_test,)`` integer labels.
        name: Dataset name.
    """

    x_train: torch.Tensor
    y_train: torch.Tensor
    labels_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    labels_test: torch.Tensor
    name: str

    @property
    def n_classes(self) -> int:
        """Number of classes (columns of the one-hot targets)."""
        return int(self.y_train.shape[1])


def one_hot(labels: torch.Tensor, n_classes: int, dtype=torch.float64) -> torch.Tensor:
    """One-hot encoding ``(n,) -> (n, n_classes)``."""
    return torch.nn.functional.one_hot(labels.long(), n_classes).to(dtype)


def load_digits(n_train: int = 1000, n_test: int = 500, *, seed: int = 0) -> Split:
    """scikit-learn's bundled 8x8 handwritten digits (1797 images, 10 classes), split at random.

    Pixels (0..16) are standardized with the training set's per-pixel mean and standard
    deviation (constant pixels become 0), so that the input kernel ``x.x'/d`` is O(1).

    Args:
        n_train: Training examples.
        n_test: Test examples (disjoint from training).
        seed: Seed of the random split.

    Returns:
        A :class:`Split` with inputs of dimension 64.

    Raises:
        ValueError: ``n_train + n_test`` exceeds 1797 or either is < 1.
    """
    from sklearn.datasets import load_digits as _sk_load_digits

    data = _sk_load_digits()
    x = data.data.astype(np.float64)
    labels = data.target.astype(np.int64)
    n = x.shape[0]
    if n_train < 1 or n_test < 1 or n_train + n_test > n:
        raise ValueError(
            f"need 1 <= n_train, 1 <= n_test and n_train + n_test <= {n}; "
            f"got n_train={n_train}, n_test={n_test}."
        )
    order = np.random.default_rng(seed).permutation(n)
    tr, te = order[:n_train], order[n_train : n_train + n_test]
    mean = x[tr].mean(0)
    std = x[tr].std(0)
    std[std == 0] = 1.0
    x = (x - mean) / std
    xt = torch.from_numpy(x)
    lt = torch.from_numpy(labels)
    return Split(
        x_train=xt[tr],
        y_train=one_hot(lt[tr], 10),
        labels_train=lt[tr],
        x_test=xt[te],
        y_test=one_hot(lt[te], 10),
        labels_test=lt[te],
        name="digits",
    )
