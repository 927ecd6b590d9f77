"""Track a model's empirical NTK on a fixed probe set during training.

``NTKTracker`` records the kernel at construction (the reference, normally the
initialisation) and then every ``every`` steps when the training loop calls
``tracker.step(step)``. Each record holds (metrics chosen with ``metrics=``):

- ``distance``: centered kernel distance to the initial kernel;
- ``velocity``: centered kernel distance to the previous record divided by the number of
  steps between them (Loo et al. 2022's kernel velocity);
- ``eigenvalues``: the top ``top_k`` eigenvalues of the probe kernel, descending;
- ``alignment``: centered kernel-target alignment with ``labels`` (when given).

The kernel is computed with :func:`ntkit.empirical_ntk` in a ``(n, n)`` mode
(``"trace"``, ``"sum_logits"`` or ``"logit"``) and in eval mode: the tracker switches the
model to eval for the measurement and restores every submodule's training flag after.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

from ntkit._validation import as_batch
from ntkit.analysis.metrics import alignment, eigenvalues, kernel_distance
from ntkit.empirical import empirical_ntk

__all__ = ["NTKTracker"]

MODES = ("trace", "sum_logits", "logit")
METRICS = ("distance", "velocity", "eigenvalues", "alignment")


class NTKTracker:
    """Record a model's empirical NTK (or its summaries) on a probe set during training.

    Example::

        tracker = NTKTracker(model, x_probe, every=10, mode="sum_logits", labels=y_probe)
        for step in range(1, steps + 1):
            ...  # one optimiser step
            tracker.step(step)
        tracker.history["distance"]; tracker.plot()

    Args:
        model: A ``torch.nn.Module``.
        probe_x: Probe inputs ``(n, *in_shape)`` with ``n >= 2``, fixed during training.
        every: Record when ``step % every == 0``.
        mode: Empirical NTK mode giving ``(n, n)`` kernels: ``"trace"``, ``"sum_logits"``
            or ``"logit"`` (with ``logit=``).
        logit: Output index for ``mode="logit"``.
        labels: Probe targets ``(n,)``/``(n, O)`` or integer labels, for ``alignment``.
        metrics: Names from ``("distance", "velocity", "eigenvalues", "alignment")``;
            default all (``alignment`` only with ``labels``).
        top_k: Number of eigenvalues recorded.
        keep_kernels: Keep every recorded kernel (``n^2`` floats each) in ``kernels``.
        implementation: Passed to :func:`ntkit.empirical_ntk`.
        max_memory: Passed to :func:`ntkit.empirical_ntk`.
        start_step: The step number of the reference kernel computed now.

    Attributes:
        history: ``{"step": [...], metric: [...]}``, one entry per record (the reference
            included: distance 0, velocity NaN).
        kernels: ``{step: (n, n) kernel}`` when ``keep_kernels``; always holds the
            reference and the latest kernel.

    Raises:
        ValueError: bad mode/metrics, a probe batch the model cannot take (wrong shape), or
            ``alignment`` without ``labels``.
    """

    def __init__(
        self,
        model: nn.Module,
        probe_x,
        *,
        every: int = 10,
        mode: str = "trace",
        logit: int | None = None,
        labels=None,
        metrics: Iterable[str] | None = None,
        top_k: int = 5,
        keep_kernels: bool = False,
        implementation: str = "auto",
        max_memory: int | None = None,
        start_step: int = 0,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}.")
        if mode not in MODES:
            raise ValueError(
                f"mode must be one of {MODES} (kernels of shape (n, n)); got {mode!r}."
            )
        if not (isinstance(every, int) and every >= 1):
            raise ValueError(f"every must be an integer >= 1; got {every!r}.")
        self.model, self.mode, self.logit, self.every = model, mode, logit, every
        self.implementation, self.max_memory = implementation, max_memory
        self.probe_x = self._check_probe(probe_x)
        n = self.probe_x.shape[0]
        if metrics is None:
            metrics = [m for m in METRICS if m != "alignment" or labels is not None]
        self.metrics = tuple(metrics)
        unknown = [m for m in self.metrics if m not in METRICS]
        if unknown:
            raise ValueError(f"unknown metrics {unknown}; known: {METRICS}.")
        if "alignment" in self.metrics and labels is None:
            raise ValueError("metric 'alignment' needs labels= (targets of the probe inputs).")
        self.labels = labels
        if labels is not None:
            alignment(torch.eye(n, dtype=torch.float64), labels)  # shape check up front
        if not (isinstance(top_k, int) and 1 <= top_k <= n):
            raise ValueError(f"top_k must be an integer in [1, {n}]; got {top_k!r}.")
        self.top_k, self.keep_kernels = top_k, keep_kernels
        self.history: dict[str, list] = {"step": [], **{m: [] for m in self.metrics}}
        self.kernels: dict[int, torch.Tensor] = {}
        self._init = self._prev = None
        self._record(int(start_step))

    def _check_probe(self, probe_x) -> torch.Tensor:
        x = probe_x
        if isinstance(x, torch.Tensor) and not x.is_floating_point():
            x = x.clone()  # token ids stay integer
        else:
            x = as_batch(x, "probe_x", dtype=_model_dtype(self.model), min_rank=1)
        if x.ndim < 1 or x.shape[0] < 2:
            raise ValueError(
                f"probe_x must be a batch (n, ...) with n >= 2 (centered distances need two "
                f"samples); got shape {tuple(x.shape)}."
            )
        try:
            with torch.no_grad(), _eval_mode(self.model):
                self.model(x[:2])
        except (RuntimeError, ValueError, IndexError) as err:
            raise ValueError(
                f"probe_x of shape {tuple(x.shape)} does not fit the model (its forward pass "
                f"failed: {err}); pass inputs of the shape the model takes, batch first."
            ) from err
        return x

    def kernel(self) -> torch.Tensor:
        """The model's current probe kernel ``(n, n)`` (eval mode, nothing recorded)."""
        with _eval_mode(self.model):
            return empirical_ntk(
                self.model,
                self.probe_x,
                mode=self.mode,
                logit=self.logit,
                implementation=self.implementation,
                max_memory=self.max_memory,
            ).detach()

    def step(self, step: int) -> bool:
        """Record if ``step`` is a multiple of ``every`` after the last record.

        Returns:
            Whether a record was made.
        """
        if not isinstance(step, int) or isinstance(step, bool):
            raise TypeError(f"step must be an int; got {type(step).__name__}.")
        if step % self.every != 0 or step <= self.history["step"][-1]:
            return False
        self._record(step)
        return True

    def _record(self, step: int) -> None:
        k = self.kernel()
        if self._init is None:
            self._init = k
        h = self.history
        h["step"].append(step)
        if "distance" in self.metrics:
            h["distance"].append(kernel_distance(self._init, k))
        if "velocity" in self.metrics:
            if self._prev is None:
                h["velocity"].append(math.nan)
            else:
                prev_step, prev_k = self._prev
                h["velocity"].append(kernel_distance(prev_k, k) / (step - prev_step))
        if "eigenvalues" in self.metrics:
            h["eigenvalues"].append(eigenvalues(k, k_top=self.top_k))
        if "alignment" in self.metrics:
            h["alignment"].append(alignment(k, self.labels))
        if self.keep_kernels:
            self.kernels[step] = k
        else:
            self.kernels = {h["step"][0]: self._init, step: k}
        self._prev = (step, k)

    def plot(self, title: str | None = None):
        """Plot the recorded metrics against the step; return the matplotlib figure."""
        import matplotlib.pyplot as plt

        shown = [m for m in self.metrics if self.history[m]]
        fig, axes = plt.subplots(1, len(shown), figsize=(3.6 * len(shown), 3.2), squeeze=False)
        steps = self.history["step"]
        for ax, m in zip(axes[0], shown, strict=True):
            values = self.history[m]
            if m == "eigenvalues":
                ax.semilogy(steps, torch.stack(values).clamp_min(1e-300).numpy(), "-")
                ax.set_ylabel(f"top {self.top_k} eigenvalues")
            elif m == "velocity":
                ax.semilogy(steps[1:], values[1:], "o-", ms=3)
                ax.set_ylabel("kernel velocity (distance / step)")
            else:
                ax.plot(steps, values, "o-", ms=3)
                ax.set_ylabel("centered distance from init" if m == "distance" else m)
            ax.set_xlabel("step")
        if title:
            fig.suptitle(title)
        fig.tight_layout()
        return fig


def _model_dtype(model: nn.Module) -> torch.dtype | None:
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return None


class _eval_mode:  # noqa: N801 - used like a function
    """Context: ``model.eval()`` inside, every submodule's training flag restored after."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def __enter__(self) -> None:
        self.flags = [(m, m.training) for m in self.model.modules()]
        self.model.eval()

    def __exit__(self, *exc) -> None:
        for m, flag in self.flags:
            m.training = flag
