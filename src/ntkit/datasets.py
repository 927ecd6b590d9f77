"""Small datasets that ship with installed packages, and synthetic ones."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["Split", "load_digits", "one_hot", "small_world_graphs"]


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


def small_world_graphs(n: int, *, nodes: int = 16, max_degree: int = 9, seed: int = 0):
    """Synthetic graph classification: small-world lattices vs the same graphs rewired.

    Class 0: Watts-Strogatz graphs (``nodes`` nodes on a ring, each joined to its 4 nearest
    neighbours, 5% of the edges rewired): clustered, lattice-like. Class 1: the same kind of
    graph after ``2 E`` degree-preserving double edge swaps, which keeps every node's degree
    and destroys the lattice. The degree histograms of the two classes are identical in
    distribution, so a classifier of degree counts is at chance; telling them apart needs
    the neighbourhood structure. Classes alternate (``labels[i] = i % 2``).

    Args:
        n: Number of graphs.
        nodes: Nodes per graph.
        max_degree: Node features are one-hot degrees, capped at this value.
        seed: Seed of the graph draws.

    Returns:
        ``(graphs, labels, degree_histograms)``: :class:`ntkit.layers.Graphs` with features
        ``(n, max_degree + 1, nodes)`` and adjacency ``(n, nodes, nodes)`` including self
        loops (``A + I``, the GNTK's aggregation), integer ``labels`` ``(n,)``, and the
        per-graph degree histograms ``(n, max_degree + 1)`` (fractions) for baselines.
    """
    import networkx as nx

    from ntkit.layers.graph import Graphs

    if n < 1 or nodes < 5 or max_degree < 1:
        raise ValueError(
            f"need n >= 1, nodes >= 5 and max_degree >= 1; got n={n}, nodes={nodes}, "
            f"max_degree={max_degree}."
        )
    rng = np.random.default_rng(seed)
    adjacency, features, histograms = [], [], []
    for g in range(n):
        graph = nx.watts_strogatz_graph(nodes, 4, 0.05, seed=int(rng.integers(2**31)))
        if g % 2:
            swaps = 2 * graph.number_of_edges()
            nx.double_edge_swap(
                graph, nswap=swaps, max_tries=100 * swaps, seed=int(rng.integers(2**31))
            )
        a = nx.to_numpy_array(graph, nodelist=range(nodes))
        degree = np.minimum(a.sum(1).astype(np.int64), max_degree)
        adjacency.append(a + np.eye(nodes))
        features.append(np.eye(max_degree + 1)[degree].T)
        histograms.append(np.bincount(degree, minlength=max_degree + 1) / nodes)
    graphs = Graphs(torch.tensor(np.stack(features)), torch.tensor(np.stack(adjacency)))
    labels = torch.arange(n) % 2
    return graphs, labels, torch.tensor(np.stack(histograms))
