"""Layer descriptions: one spec builds the infinite-width kernel and the finite network.

Example:
    >>> from ntkit import layers as L
    >>> net = L.serial(L.Dense(512, w_std=1.5, b_std=0.05), L.ReLU(), L.Dense(10))
    >>> k = net.kernel(x1, x2)                  # doctest: +SKIP
    >>> model = net.module(in_shape=(784,))     # doctest: +SKIP
"""

from ntkit.errors import LayerSpecError
from ntkit.layers.activations import (
    GELU,
    RBF,
    ABReLU,
    Abs,
    Activation,
    Cos,
    Elementwise,
    Erf,
    Exp,
    Gaussian,
    Hermite,
    LeakyReLU,
    Monomial,
    Polynomial,
    RectifiedMonomial,
    ReLU,
    Sign,
    Sin,
)
from ntkit.layers.activations_extra import ExpNormalized, Gabor, SigmoidLike
from ntkit.layers.attention import GlobalSelfAttention
from ntkit.layers.base import Layer
from ntkit.layers.combinators import (
    FanInConcat,
    FanInProd,
    FanInSum,
    FanOut,
    Parallel,
    Serial,
    parallel,
    repeat,
    serial,
)
from ntkit.layers.conv import Conv
from ntkit.layers.conv_local import ConvLocal
from ntkit.layers.conv_transpose import ConvTranspose
from ntkit.layers.dense import Dense, Flatten, Identity
from ntkit.layers.dropout import Dropout
from ntkit.layers.graph import Aggregate, Graphs, graph_context
from ntkit.layers.masking import Masked, mask_context
from ntkit.layers.normalization import LayerNorm
from ntkit.layers.pooling import AvgPool, GlobalAvgPool, GlobalSumPool, SumPool
from ntkit.layers.recurrent import Recurrent
from ntkit.layers.spatial_maps import ImageResize, Index

__all__ = [
    "ABReLU",
    "Aggregate",
    "Abs",
    "Activation",
    "AvgPool",
    "Conv",
    "ConvLocal",
    "ConvTranspose",
    "Cos",
    "Dense",
    "Dropout",
    "Elementwise",
    "Erf",
    "Exp",
    "ExpNormalized",
    "FanInConcat",
    "FanInProd",
    "FanInSum",
    "FanOut",
    "Flatten",
    "GELU",
    "Gabor",
    "Gaussian",
    "GlobalAvgPool",
    "GlobalSelfAttention",
    "GlobalSumPool",
    "Graphs",
    "Hermite",
    "Identity",
    "ImageResize",
    "Index",
    "Layer",
    "LayerNorm",
    "LayerSpecError",
    "LeakyReLU",
    "Masked",
    "Monomial",
    "Parallel",
    "Polynomial",
    "RBF",
    "ReLU",
    "RectifiedMonomial",
    "Recurrent",
    "Serial",
    "SigmoidLike",
    "Sign",
    "Sin",
    "SumPool",
    "graph_context",
    "mask_context",
    "parallel",
    "repeat",
    "serial",
]
