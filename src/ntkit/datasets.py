"""Small datasets that ship with installed packages, and synthetic ones."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "Split",
    "load_array",
    "load_digits",
    "one_hot",
    "small_world_graphs",
    "split_standardized",
]


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
    return split_standardized(
        data.data.astype(np.float64), data.target, n_train, n_test, seed=seed, name="digits"
    )


def split_standardized(
    x: np.ndarray,
    labels: np.ndarray,
    n_train: int,
    n_test: int,
    *,
    seed: int = 0,
    name: str = "data",
) -> Split:
    """Random disjoint train/test split of ``(n, ...)`` inputs, standardized per feature.

    Every feature is shifted and scaled by the training set's mean and standard deviation
    (constant features become 0). Labels may be any values; they are mapped to
    ``0..n_classes-1`` in sorted order.

    Raises:
        ValueError: shapes disagree, inputs are not finite, or the sizes do not fit.
    """
    x = np.asarray(x, dtype=np.float64)
    labels = np.asarray(labels)
    n = x.shape[0]
    if x.ndim < 2 or labels.shape != (n,):
        raise ValueError(
            f"expected inputs (n, features...) and labels (n,); got {x.shape} and {labels.shape}."
        )
    if not np.isfinite(x).all():
        raise ValueError(f"{name}: the inputs contain NaN or Inf.")
    if n_train < 1 or n_test < 1 or n_train + n_test > n:
        raise ValueError(
            f"need 1 <= n_train, 1 <= n_test and n_train + n_test <= {n}; "
            f"got n_train={n_train}, n_test={n_test}."
        )
    classes, index = np.unique(labels, return_inverse=True)
    order = np.random.default_rng(seed).permutation(n)
    tr, te = order[:n_train], order[n_train : n_train + n_test]
    mean = x[tr].mean(0)
    std = x[tr].std(0)
    std[std == 0] = 1.0
    xt = torch.from_numpy((x - mean) / std)
    lt = torch.from_numpy(index.astype(np.int64))
    k = len(classes)
    return Split(
        x_train=xt[tr],
        y_train=one_hot(lt[tr], k),
        labels_train=lt[tr],
        x_test=xt[te],
        y_test=one_hot(lt[te], k),
        labels_test=lt[te],
        name=name,
    )


def load_array(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Inputs and labels from a ``.npy``, ``.npz`` or ``.csv`` file.

    - ``.csv`` (comma-separated, an optional header row) and ``.npy`` (a 2-D array): one
      example per row, the label in the last column.
    - ``.npz``: arrays ``x`` (``(n, features...)``) and ``y`` (``(n,)`` labels).

    Returns:
        ``(x, labels)``: float64 inputs ``(n, ...)`` and labels ``(n,)``.

    Raises:
        ValueError: unknown suffix, missing arrays, or a table with fewer than 2 columns.
        FileNotFoundError: no such file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no data file {str(path)!r}")
    suffix = path.suffix.lower()
    if suffix == ".npz":
        with np.load(path) as z:
            if "x" not in z or "y" not in z:
                raise ValueError(f"{path}: an .npz needs arrays 'x' and 'y'; has {sorted(z)}.")
            return z["x"].astype(np.float64), z["y"]
    if suffix == ".npy":
        table = np.load(path)
    elif suffix == ".csv":
        with path.open() as fh:
            first = fh.readline()
        try:
            [float(v) for v in first.strip().split(",")]
            skip = 0
        except ValueError:
            skip = 1  # a header row
        table = np.loadtxt(path, delimiter=",", skiprows=skip, ndmin=2)
    else:
        raise ValueError(
            f"{path}: expected a .npy, .npz or .csv file; got {suffix or 'no suffix'!r}."
        )
    if table.ndim != 2 or table.shape[1] < 2:
        raise ValueError(
            f"{path}: expected a table with features then a label column; got shape {table.shape}."
        )
    return table[:, :-1].astype(np.float64), table[:, -1]


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
