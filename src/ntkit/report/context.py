"""What the report's sections share: the configuration, the data and computed kernels."""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from ntkit import layers as L
from ntkit.datasets import Split, load_digits
from ntkit.kernel import Kernel

__all__ = ["ReportConfig", "ReportContext", "default_network"]

ACTIVATIONS = {"relu": L.ReLU, "erf": L.Erf, "gelu": L.GELU}


@dataclass(frozen=True)
class ReportConfig:
    """Options of ``ntkit report`` (see ``ntkit report --help``)."""

    n_train: int = 1000
    n_test: int = 500
    depth: int = 3
    width: int = 512
    w_std: float = 1.5
    b_std: float = 0.05
    activation: str = "relu"
    ridge_relative: float = 0.0
    seed: int = 0


def default_network(config: ReportConfig, n_out: int) -> L.Layer:
    """The report's MLP: ``depth`` Dense layers with the activation between them."""
    if config.activation not in ACTIVATIONS:
        raise ValueError(
            f"activation must be one of {sorted(ACTIVATIONS)}; got {config.activation!r}."
        )
    if config.depth < 1:
        raise ValueError(f"depth must be >= 1; got {config.depth}.")
    act = ACTIVATIONS[config.activation]
    hidden = []
    for _ in range(config.depth - 1):
        hidden += [L.Dense(config.width, config.w_std, config.b_std), act()]
    return L.serial(*hidden, L.Dense(n_out, config.w_std, config.b_std))


@dataclass
class ReportContext:
    """Shared state, filled lazily by sections.

    Attributes:
        config: The options.
        data: The train/test split.
        net: The layer description of the network.
        timings: Seconds per named step.
        results: Named numbers that sections publish (and the console summary prints).
    """

    config: ReportConfig
    data: Split = None
    net: L.Layer = None
    timings: dict[str, float] = field(default_factory=dict)
    results: dict[str, float] = field(default_factory=dict)
    _kernels: dict[str, Kernel] = field(default_factory=dict)

    def __post_init__(self):
        if self.data is None:
            self.data = load_digits(self.config.n_train, self.config.n_test, seed=self.config.seed)
        if self.net is None:
            self.net = default_network(self.config, self.data.n_classes)

    @contextmanager
    def timed(self, name: str):
        """Record the wall time of a block under ``timings[name]``."""
        start = time.perf_counter()
        yield
        self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - start

    def kernel(self, which: str) -> Kernel:
        """Infinite-width kernel ``"train_train"``, ``"test_train"`` or ``"test_test"``.

        Each is computed once and timed as ``"kernel <which>"``.
        """
        if which not in self._kernels:
            d = self.data
            x1, x2 = {
                "train_train": (d.x_train, None),
                "test_train": (d.x_test, d.x_train),
                "test_test": (d.x_test, None),
            }[which]
            with self.timed(f"kernel {which}"):
                self._kernels[which] = self.net.kernel(x1, x2)
        return self._kernels[which]

    @property
    def device(self) -> torch.device:
        """Device the data lives on."""
        return self.data.x_train.device
