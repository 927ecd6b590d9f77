"""ntkit: neural tangent kernels for PyTorch.

Infinite-width NNGP/NTK kernels of layer descriptions (:mod:`ntkit.layers`), empirical NTKs
of any ``torch.nn.Module``, and what the kernels say about training.

The public names below are imported on first use (PEP 562), so that ``import ntkit`` and
the ``ntkit`` command stay fast: torch is loaded only when something needs it. To add a
public name, add one line to :data:`_EXPORTS` (name -> defining module) and the matching
import under ``TYPE_CHECKING`` (for type checkers and IDEs); a test checks the two agree.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: Public function/class name -> the module that defines it.
_EXPORTS: dict[str, str] = {
    "Kernel": "ntkit.kernel",
    "empirical_ntk": "ntkit.empirical",
    "linearize": "ntkit.empirical",
    "monte_carlo_kernel": "ntkit.empirical",
    "ntk_features": "ntkit.empirical",
    "ntk_vp": "ntkit.empirical",
    "register_rule": "ntkit.empirical",
    "taylor_expand": "ntkit.empirical",
    "gp_posterior": "ntkit.predict",
    "gradient_descent": "ntkit.predict",
    "gradient_descent_mse": "ntkit.predict",
    "gradient_descent_mse_ensemble": "ntkit.predict",
    "kernel_regression": "ntkit.predict",
    "max_learning_rate": "ntkit.predict",
}

#: Subpackages reachable as ``ntkit.NAME`` without an explicit import.
_SUBMODULES: tuple[str, ...] = (
    "analysis",
    "attacks",
    "datasets",
    "empirical",
    "errors",
    "layers",
    "parametrization",
    "predict",
    "report",
    "reproduce",
    "settings",
    "tiling",
)

if TYPE_CHECKING:
    from ntkit import (
        analysis,
        attacks,
        datasets,
        empirical,
        errors,
        layers,
        parametrization,
        predict,
        report,
        reproduce,
        settings,
        tiling,
    )
    from ntkit.empirical import (
        empirical_ntk,
        linearize,
        monte_carlo_kernel,
        ntk_features,
        ntk_vp,
        register_rule,
        taylor_expand,
    )
    from ntkit.kernel import Kernel
    from ntkit.predict import (
        gp_posterior,
        gradient_descent,
        gradient_descent_mse,
        gradient_descent_mse_ensemble,
        kernel_regression,
        max_learning_rate,
    )

__all__ = ["__version__", *_EXPORTS, "layers", "predict"]


def __getattr__(name: str) -> Any:
    """Import a public name or subpackage on first access and cache it in the module."""
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f"ntkit.{name}")
    else:
        raise AttributeError(f"module 'ntkit' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS) | set(_SUBMODULES))
