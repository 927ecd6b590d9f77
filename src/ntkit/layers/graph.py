"""Graph networks: ``Aggregate`` (neighbourhood sums) and ``Graphs`` inputs with adjacency.

A batch of graphs is node features ``(n, C, N)`` (channels-first, the nodes are the one
spatial axis) together with one adjacency per graph, ``(n, N, N)``, where
``adjacency[g, i, j] = w`` is an edge ``i -> j`` of weight ``w`` in graph ``g``. It travels as
one value, :class:`Graphs`, through the usual calls:

- ``net.kernel(Graphs(x1, a1), Graphs(x2, a2))`` (or ``x2=None``): the driver computes the
  input covariance from the features and hands every tile the adjacency of its rows and
  columns (``Kernel.pattern1``/``pattern2``), so tiling, memory planning and the symmetric
  ``x2=None`` path work as for any input;
- the finite network is called on the features inside ``with graph_context(adjacency):``
  (a scoped context variable that ``Aggregate``'s module reads).

``Aggregate`` replaces every node by the weighted sum of its predecessors,
``y_j = sum_i adjacency[i, j] x_i`` (the reference library's convention). Its kernel is
``A1^T K A2`` on every node pair (Du et al. 2019, "Graph Neural Tangent Kernel", arXiv
1905.13192, whose GNTK is this with ``A = adjacency + I``, optionally degree-scaled).
Variable-size graphs are padded with isolated zero-feature nodes: without biases they stay
exactly zero, so sum pooling ignores them.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from ntkit.errors import LayerSpecError
from ntkit.kernel import Kernel
from ntkit.layers.base import Layer, Shape, require_full_layout
from ntkit.layers.conv import spatial_input

__all__ = ["Aggregate", "AggregateModule", "Graphs", "graph_context"]

_ADJACENCY: contextvars.ContextVar[torch.Tensor | None] = contextvars.ContextVar(
    "ntkit_graph_adjacency", default=None
)


def dense_adjacency(adjacency, n: int, nodes: int, dtype, device, who: str) -> torch.Tensor:
    """Validate ``adjacency`` and return it dense, ``(n, nodes, nodes)``.

    Accepts a dense ``(n, N, N)`` tensor/array, a torch sparse COO tensor of that shape, or
    integer edge lists ``(n, E, 2)`` of ``(tail, head)`` pairs (weight 1 each, repeats add
    up; rows with a negative entry are padding and ignored). An integer ``(n, 2, 2)`` tensor
    for graphs of 2 nodes is ambiguous and read as dense.

    Raises:
        ValueError: a wrong shape, non-finite weights or out-of-range node indices.
        TypeError: not a tensor or array.
    """
    if not isinstance(adjacency, torch.Tensor):
        try:
            adjacency = torch.as_tensor(adjacency)
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(
                f"{who} adjacency must be a tensor or array; got {type(adjacency).__name__}."
            ) from None
    if adjacency.is_sparse:
        adjacency = adjacency.to_dense()
    if (
        not adjacency.is_floating_point()
        and adjacency.ndim == 3
        and adjacency.shape[0] == n
        and adjacency.shape[2] == 2
        and not (adjacency.shape[1] == nodes and nodes == 2)
    ):
        edges = adjacency.long()
        if bool((edges >= nodes).any()):
            raise ValueError(
                f"{who} edge lists name node {int(edges.max())}, but the graphs have {nodes} "
                "nodes (indices 0..N-1; negative entries mark padding)."
            )
        dense = torch.zeros(n, nodes, nodes, dtype=dtype, device=device)
        valid = (edges >= 0).all(dim=-1)
        g = torch.arange(n, device=edges.device)[:, None].expand_as(valid)
        dense.index_put_(
            (g[valid].to(device), edges[..., 0][valid].to(device), edges[..., 1][valid].to(device)),
            torch.ones((), dtype=dtype, device=device).expand(int(valid.sum())),
            accumulate=True,
        )
        return dense
    if adjacency.shape != (n, nodes, nodes):
        raise ValueError(
            f"{who} adjacency must have shape (n, N, N) = ({n}, {nodes}, {nodes}) for features "
            f"of {n} graphs with {nodes} nodes (or be edge lists (n, E, 2)); got "
            f"{tuple(adjacency.shape)}."
        )
    adjacency = adjacency.to(dtype=dtype, device=device)
    if not bool(torch.isfinite(adjacency).all()):
        raise ValueError(f"{who} adjacency contains NaN or Inf.")
    return adjacency


@dataclass(frozen=True, eq=False)
class Graphs:
    """A batch of graphs: node features and one adjacency per graph.

    Attributes:
        features: ``(n, C, N)`` node features, channels-first (tensor or array).
        adjacency: ``(n, N, N)`` weights, ``adjacency[g, i, j]`` an edge ``i -> j`` (dense,
            torch sparse COO, or integer edge lists ``(n, E, 2)``; see
            :func:`dense_adjacency`).
    """

    features: object
    adjacency: object

    def __len__(self) -> int:
        return len(self.features)


def split_graphs(x, name: str, dtype) -> tuple[object, torch.Tensor | None]:
    """``(features, dense adjacency)`` for a :class:`Graphs`, else ``(x, None)``."""
    if not isinstance(x, Graphs):
        return x, None
    features = torch.as_tensor(x.features)
    if features.ndim != 3:
        raise ValueError(
            f"{name}: graph features must be (n, C, N) (channels-first, nodes last); got shape "
            f"{tuple(features.shape)}."
        )
    n, _, nodes = features.shape
    return features, dense_adjacency(x.adjacency, n, nodes, dtype, features.device, name)


@contextlib.contextmanager
def graph_context(adjacency) -> Iterator[None]:
    """Run finite graph networks on node features with this adjacency ``(n, N, N)``.

    Example:
        >>> with graph_context(a):      # doctest: +SKIP
        ...     y = model(x)            # x: (n, C, N) node features
    """
    adjacency = torch.as_tensor(adjacency)
    if adjacency.is_sparse:
        adjacency = adjacency.to_dense()
    token = _ADJACENCY.set(adjacency)
    try:
        yield
    finally:
        _ADJACENCY.reset(token)


class AggregateModule(nn.Module):
    """Finite ``Aggregate``: ``y[:, :, j] = sum_i A[:, i, j] x[:, :, i]``, ``A`` in context.

    ``A`` comes from the enclosing :func:`graph_context`.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(n, C, N)`` -> ``(n, C, N)``."""
        a = _ADJACENCY.get()
        if a is None:
            raise ValueError(
                "Aggregate needs the graphs' adjacency: call the network inside "
                "`with ntkit.layers.graph_context(adjacency): model(x)`."
            )
        n, _, nodes = x.shape
        a = dense_adjacency(a, n, nodes, x.dtype, x.device, "graph_context")
        return torch.einsum("nci,nij->ncj", x, a)


class Aggregate(Layer):
    """Sum over each node's predecessors, ``y_j = sum_i adjacency[i, j] x_i`` (GNN layer).

    Inputs are :class:`Graphs` (node features ``(n, C, N)`` and adjacency ``(n, N, N)``); the
    kernel of every node pair is ``A1^T K A2`` with the adjacencies of the two graphs. No
    weights: put a ``Conv(width, 1)`` (a shared dense map per node) and an activation around
    it, as in the GNTK. Needs the full node-by-node covariance.
    """

    memory_factor = 4.0

    def out_shape(self, in_shape: Shape) -> Shape:
        channels, lengths = spatial_input(repr(self), in_shape)
        if len(lengths) != 1:
            raise LayerSpecError(
                f"Aggregate expects graph node features (n, C, N) with one node axis; got "
                f"per-sample shape {in_shape}."
            )
        return in_shape

    def input_layout(self, diagonal_spatial):
        return False

    def kernel_rule(self, k: Kernel) -> Kernel:
        self.out_shape(k.shape)
        require_full_layout(repr(self), k)
        if k.pattern1 is None or k.pattern2 is None:
            raise LayerSpecError(
                "Aggregate needs the graphs' adjacency: pass the inputs as "
                "ntkit.layers.Graphs(features, adjacency)."
            )
        a1 = k.pattern1.to(k.nngp.dtype)
        a2 = k.pattern2.to(k.nngp.dtype)

        a1t = a1.transpose(1, 2)

        # The same batched products for pairs and for a sample's own covariance, so that a
        # same-sample entry rounds exactly like the variance (rho = 1 stays exactly 1).
        def pair(t):
            return None if t is None else (a1t[:, None] @ t) @ a2[None]

        def own(t, a):
            return None if t is None else (a.transpose(1, 2) @ t) @ a

        return k.replace(
            nngp=pair(k.nngp),
            ntk=pair(k.ntk),
            cov1=own(k.cov1, a1),
            cov2=own(k.cov2, a2),
        )

    def build_module(self, in_shape: Shape, generator: torch.Generator) -> nn.Module:
        return AggregateModule()

    def __repr__(self) -> str:
        return "Aggregate()"
