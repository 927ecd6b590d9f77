"""What the report's sections share: the configuration, the data and computed kernels."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ntkit import layers as L
from ntkit.datasets import Split, load_array, load_digits, split_standardized
from ntkit.kernel import Kernel

__all__ = ["ReportConfig", "ReportContext", "default_network", "load_spec"]

ACTIVATIONS = {"relu": L.ReLU, "erf": L.Erf, "gelu": L.GELU}


@dataclass(frozen=True)
class ReportConfig:
    """Options of ``ntkit report`` (see ``ntkit report --help``).

    Attributes:
        n_train, n_test: Sizes of the random train/test split.
        depth, width, w_std, b_std, activation: The default MLP (``depth`` Dense layers,
            NTK parameterization); ``width`` is also the width of the finite networks.
        ridge_relative: Ridge of kernel regression as a multiple of the mean diagonal.
        seed: Seed of the split and of the finite networks.
        spec: A Python file defining ``net`` (a layer description) or ``make_net(width)``,
            and optionally ``input_shape``; replaces the default MLP.
        data: A ``.npy``/``.npz``/``.csv`` file (see :func:`ntkit.datasets.load_array`);
            ``None`` uses scikit-learn's bundled digits.
        input_shape: Per-sample shape the flat inputs are reshaped to (e.g. ``(1, 8, 8)``
            for a CNN on digits); ``None`` keeps them flat (or takes the spec's).
        quick: Smaller sizes throughout (about 20 s on 2 cores).
        widths: Widths of the empirical-vs-analytic convergence figure.
        n_heatmap: Training points shown in the kernel heatmaps and used for the
            width-convergence figure.
        max_steps: Most gradient-descent steps the finite network is trained for.
    """

    n_train: int = 1000
    n_test: int = 500
    depth: int = 3
    width: int = 512
    w_std: float = 1.5
    b_std: float = 0.05
    activation: str = "relu"
    ridge_relative: float = 0.0
    seed: int = 0
    spec: Path | None = None
    data: Path | None = None
    input_shape: tuple[int, ...] | None = None
    quick: bool = False
    widths: tuple[int, ...] = (64, 128, 256, 512, 1024, 2048)
    n_heatmap: int = 200
    max_steps: int = 3000

    def __post_init__(self):
        for name in ("n_train", "n_test", "depth", "width", "n_heatmap", "max_steps"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer; got {value!r}.")
        if self.activation not in ACTIVATIONS:
            raise ValueError(
                f"activation must be one of {sorted(ACTIVATIONS)}; got {self.activation!r}."
            )
        if not all(math.isfinite(v) for v in (self.w_std, self.b_std, self.ridge_relative)):
            raise ValueError("w_std, b_std and ridge_relative must be finite numbers.")
        if self.ridge_relative < 0:
            raise ValueError(f"ridge_relative must be >= 0; got {self.ridge_relative}.")
        if not self.widths or any(w < 1 for w in self.widths):
            raise ValueError(f"widths must be positive integers; got {self.widths}.")
        for name in ("spec", "data"):
            path = getattr(self, name)
            if path is not None and not Path(path).is_file():
                raise ValueError(f"{name}: no such file {str(path)!r}.")

    @classmethod
    def quick_defaults(cls, **overrides) -> ReportConfig:
        """The ``--quick`` configuration: small sizes, same figures."""
        base = dict(n_train=300, n_test=200, widths=(64, 256, 1024), n_heatmap=100, max_steps=300)
        return cls(quick=True, **{**base, **overrides})


def default_network(config: ReportConfig, n_out: int, width: int | None = None) -> L.Layer:
    """The report's MLP: ``depth`` Dense layers with the activation between them."""
    act = ACTIVATIONS[config.activation]
    w = config.width if width is None else width
    hidden: list[L.Layer] = []
    for _ in range(config.depth - 1):
        hidden += [L.Dense(w, config.w_std, config.b_std), act()]
    return L.serial(*hidden, L.Dense(n_out, config.w_std, config.b_std))


def load_spec(path: Path | str) -> tuple[Callable[[int | None], L.Layer], tuple[int, ...] | None]:
    """Read a network description from a Python file.

    The file runs with ``torch``, ``L`` (:mod:`ntkit.layers`) and ``nk`` (:mod:`ntkit`)
    defined, and must define ``net`` (a layer description) or ``make_net(width)`` (a
    function returning one, which lets the report vary the width); ``input_shape`` (a tuple)
    is optional.

    Returns:
        ``(make, input_shape)``: ``make(width)`` gives the description (``width=None``: the
        file's own), and the input shape or ``None``.

    Raises:
        ValueError: the file defines neither, or not a layer description.
    """
    import ntkit

    path = Path(path)
    namespace: dict = {"torch": torch, "L": L, "nk": ntkit, "__name__": "__ntkit_spec__"}
    exec(compile(path.read_text(encoding="utf-8"), str(path), "exec"), namespace)
    shape = namespace.get("input_shape")
    if shape is not None:
        shape = tuple(int(s) for s in shape)
    if callable(namespace.get("make_net")):
        maker = namespace["make_net"]
        fixed = namespace.get("net")

        def make(width: int | None) -> L.Layer:
            net = fixed if width is None and fixed is not None else maker(width or 512)
            return _check_layer(net, path)

        return make, shape
    if "net" in namespace:
        net = _check_layer(namespace["net"], path)
        return (lambda width: net), shape
    raise ValueError(f"spec {path}: define `net = L.serial(...)` or `def make_net(width): ...`.")


def _check_layer(net, path: Path) -> L.Layer:
    if not isinstance(net, L.Layer):
        raise ValueError(f"spec {path}: `net` must be an ntkit layer description; got {net!r}.")
    return net


@dataclass
class ReportContext:
    """Shared state, filled lazily by sections.

    Attributes:
        config: The options.
        data: The train/test split (inputs reshaped to ``config.input_shape``).
        net: The layer description of the network.
        timings: Seconds per named step.
        results: Named numbers that sections publish (and the console summary prints).
        command: The command line that made the report (for its provenance).
    """

    config: ReportConfig
    data: Split = None  # type: ignore[assignment]
    net: L.Layer = None  # type: ignore[assignment]
    timings: dict[str, float] = field(default_factory=dict)
    results: dict[str, float] = field(default_factory=dict)
    command: str = ""
    started: float = field(default_factory=time.perf_counter)
    make_net: Callable[[int | None], L.Layer] | None = None
    _kernels: dict[str, Kernel] = field(default_factory=dict)
    _models: dict[int, torch.nn.Module] = field(default_factory=dict)

    def __post_init__(self):
        cfg = self.config
        shape = cfg.input_shape
        if cfg.spec is not None and self.net is None:
            self.make_net, spec_shape = load_spec(cfg.spec)
            shape = shape or spec_shape
        if self.data is None:
            if cfg.data is None:
                self.data = load_digits(cfg.n_train, cfg.n_test, seed=cfg.seed)
            else:
                x, labels = load_array(cfg.data)
                self.data = split_standardized(
                    x, labels, cfg.n_train, cfg.n_test, seed=cfg.seed, name=Path(cfg.data).name
                )
        if shape is not None:
            self.data = _reshaped(self.data, shape)
        if self.net is None:
            if self.make_net is None:
                self.make_net = lambda width: default_network(cfg, self.data.n_classes, width)
            self.net = self.make_net(None)
        out = self.net.out_shape(self.in_shape)
        if tuple(out) != (self.data.n_classes,):
            raise ValueError(
                f"the network maps inputs {self.in_shape} to outputs {tuple(out)}; the data "
                f"has {self.data.n_classes} classes, so the readout must give "
                f"({self.data.n_classes},)."
            )

    @property
    def in_shape(self) -> tuple[int, ...]:
        """Per-sample input shape."""
        return tuple(self.data.x_train.shape[1:])

    @contextmanager
    def timed(self, name: str) -> Iterator[None]:
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
                # the report's own bar shows the step
                self._kernels[which] = self.net.kernel(x1, x2, progress=False)
        return self._kernels[which]

    def finite_model(self, dtype: torch.dtype = torch.float64) -> torch.nn.Module:
        """The finite network of the description at initialization (``config.seed``)."""
        key = hash(dtype)
        if key not in self._models:
            self._models[key] = self.net.module(
                self.in_shape, seed=self.config.seed, dtype=dtype, device=self.device
            )
        return self._models[key]

    @property
    def device(self) -> torch.device:
        """Device the data lives on."""
        return self.data.x_train.device


def _reshaped(data: Split, shape: tuple[int, ...]) -> Split:
    d = data.x_train.shape[1:]
    if math.prod(d) != math.prod(shape):
        raise ValueError(
            f"input_shape {shape} has {math.prod(shape)} entries; the inputs have "
            f"{math.prod(d)} features."
        )
    return Split(
        x_train=data.x_train.reshape(-1, *shape),
        y_train=data.y_train,
        labels_train=data.labels_train,
        x_test=data.x_test.reshape(-1, *shape),
        y_test=data.y_test,
        labels_test=data.labels_test,
        name=data.name,
    )
