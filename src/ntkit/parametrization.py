"""Standard, NTK and maximal-update (muP) parameterizations of finite PyTorch models.

A parameterization fixes, for every parameter tensor ``W`` of a layer, three numbers: the
initial standard deviation ``std`` of its entries, a constant forward ``multiplier`` (the layer
uses ``multiplier * W``) and a learning-rate scale (per optimizer). :func:`parametrize` puts a
model built from ``nn.Linear``, ``nn.Conv1d/2d/3d``, ``nn.Embedding`` (and ntkit's
NTK-parameterized ``DenseNTK``/``ConvNTK``, as built by ``net.module``) into one of them,
re-initialises its parameters, and returns a :class:`Parametrization` whose
:meth:`~Parametrization.param_groups` are the optimizer parameter groups.

With gains ``w_std``, ``b_std``, fan-in ``d`` of the layer and width multiplier ``m`` (a
layer's width over the base width; Yang & Hu 2021, Tensor Programs V, Table 8 form, which
equals the standard parameterization at the base width):

================  ===================  ==========  ==========  =============
parameter         std                  multiplier  SGD lr x    Adam lr x
================  ===================  ==========  ==========  =============
standard W        ``w_std/sqrt(d)``    1           1           1
standard b        ``b_std``            1           1           1
ntk W             1                    ``w_std/sqrt(d)``  1    1
ntk b             1                    ``b_std``   1           1
mup input W       ``w_std/sqrt(d)``    1           ``m``       1
mup hidden W      ``w_std/sqrt(d)``    1           1           ``1/m``
mup output W      ``w_std sqrt(m/d)``  ``1/m``     ``m``       1
mup b (not out)   ``b_std``            1           ``m``       1
mup output b      ``b_std``            1           1           1
================  ===================  ==========  ==========  =============

Input layers have a fixed fan-in and a width-sized fan-out, hidden layers both width-sized,
the output (readout) layer a width-sized fan-in and a fixed fan-out. ``m`` is the width-sized
dimension (fan-out for input layers and biases, fan-in otherwise) divided by its base value.
Roles come from a ``base_model`` (the same architecture at the base width: the dimensions that
differ are the width-sized ones) or, with ``base_width``, from the order of the weight layers
(first = input, last = output, others hidden; override with ``roles=``).

``fold_lr="sgd"`` or ``"adam"`` moves the learning-rate scales into the multipliers (Yang &
Hu 2021's abc-freedom: ``W = c V`` trained with learning rate ``eta`` equals ``W`` trained with
``c^2 eta`` under SGD, ``c eta`` under Adam), so that a single learning rate for all parameters
realises the parameterization; sharpness and the Hessian then refer to that one rate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn.utils import parametrize as torch_parametrize

__all__ = ["PARAMETERIZATIONS", "ParamScale", "Parametrization", "parametrize"]

PARAMETERIZATIONS = ("standard", "ntk", "mup")
OPTIMIZERS = ("sgd", "adam")
ROLES = ("input", "hidden", "output", "fixed")

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


class _Multiplier(nn.Module):
    """Parametrization ``W -> c W`` (a constant forward multiplier)."""

    def __init__(self, c: float) -> None:
        super().__init__()
        self.c = float(c)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w * self.c

    def extra_repr(self) -> str:
        return f"c={self.c:.6g}"


@dataclass(frozen=True)
class ParamScale:
    """How one parameter tensor is initialised, scaled and trained.

    Attributes:
        name: Parameter name in ``model.named_parameters()`` (after parametrize).
        module: Qualified name of its layer.
        role: ``"input"``, ``"hidden"``, ``"output"`` or ``"fixed"`` (the layer's role).
        is_bias: Whether it is a bias.
        width_mult: The width multiplier ``m`` used for it.
        std: Initial standard deviation of its entries.
        multiplier: Constant forward multiplier.
        lr_sgd: Learning-rate scale under SGD (1 when folded).
        lr_adam: Learning-rate scale under Adam (1 when folded).
    """

    name: str
    module: str
    role: str
    is_bias: bool
    width_mult: float
    std: float
    multiplier: float
    lr_sgd: float
    lr_adam: float


@dataclass(frozen=True)
class Parametrization:
    """The result of :func:`parametrize`: per-parameter scales and optimizer groups.

    Attributes:
        parameterization: ``"standard"``, ``"ntk"`` or ``"mup"``.
        scales: One :class:`ParamScale` per parameter tensor.
        fold_lr: The optimizer whose learning-rate scales were folded into multipliers.
        model: The parametrized model (the same object that was passed in).
    """

    parameterization: str
    scales: tuple[ParamScale, ...]
    fold_lr: str | None
    model: nn.Module = field(repr=False, compare=False)

    def lr_scales(self, optimizer: str = "sgd") -> dict[str, float]:
        """``{parameter name: learning-rate scale}`` for ``optimizer`` (``"sgd"``/``"adam"``)."""
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}; got {optimizer!r}.")
        if self.fold_lr is not None and optimizer != self.fold_lr:
            raise ValueError(
                f"the learning-rate scales were folded into the multipliers for "
                f"{self.fold_lr!r}; training with {optimizer!r} would not realise "
                f"{self.parameterization!r}. Parametrize again with fold_lr={optimizer!r} "
                "or fold_lr=None."
            )
        return {s.name: (s.lr_sgd if optimizer == "sgd" else s.lr_adam) for s in self.scales}

    def param_groups(self, lr: float, *, optimizer: str = "sgd") -> list[dict]:
        """Optimizer parameter groups ``[{"params": [...], "lr": lr * scale}, ...]``.

        Args:
            lr: The base learning rate (the one tuned at the base width).
            optimizer: ``"sgd"`` (any SGD-like optimizer) or ``"adam"`` (Adam, AdamW).

        Returns:
            Groups for ``torch.optim.SGD(groups, lr=lr)`` / ``torch.optim.Adam(...)``, one per
            distinct scale.
        """
        if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
            raise ValueError(f"lr must be a finite number > 0; got {lr!r}.")
        scales = self.lr_scales(optimizer)
        named = dict(self.model.named_parameters())
        groups: dict[float, list] = {}
        for name, s in scales.items():
            groups.setdefault(s, []).append(named[name])
        return [{"params": ps, "lr": lr * s} for s, ps in groups.items()]


def _fans(mod: nn.Module) -> tuple[int, int]:
    """``(fan_in, fan_out)`` of a supported layer (fan-out = output features/channels)."""
    from ntkit.layers.conv import ConvNTK
    from ntkit.layers.modules import DenseNTK

    if isinstance(mod, (nn.Linear, DenseNTK)):
        return mod.in_features, mod.out_features
    if isinstance(mod, _CONVS):
        return mod.in_channels // mod.groups * math.prod(mod.kernel_size), mod.out_channels
    if isinstance(mod, ConvNTK):
        return mod.fan_in, mod.weight.shape[0]
    if isinstance(mod, nn.Embedding):
        return 1, mod.embedding_dim
    raise AssertionError(type(mod))  # pragma: no cover - callers filter


def _supported(mod: nn.Module) -> bool:
    from ntkit.layers.conv import ConvNTK
    from ntkit.layers.modules import DenseNTK

    return isinstance(mod, (nn.Linear, nn.Embedding, DenseNTK, ConvNTK, *_CONVS))


def _weight_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Supported layers in registration order; refuse other modules that own parameters."""
    layers, unsupported = [], []
    for name, mod in model.named_modules():
        if name.endswith("parametrizations") or ".parametrizations." in name:
            continue
        if isinstance(mod, torch_parametrize.ParametrizationList):
            continue
        if _supported(mod):
            layers.append((name, mod))
        elif any(True for _ in mod.parameters(recurse=False)):
            unsupported.append(f"{name or '<root>'!r} ({type(mod).__name__})")
    if unsupported:
        raise ValueError(
            "parametrize supports nn.Linear, nn.Conv1d/2d/3d, nn.Embedding and ntkit's "
            "DenseNTK/ConvNTK; these modules own parameters of another kind: "
            f"{', '.join(unsupported)}. Remove them or freeze them outside the model."
        )
    if not layers:
        raise ValueError("the model has no nn.Linear/nn.Conv*/nn.Embedding layer to parametrize.")
    return layers


def _roles(layers, base_model, base_width, roles):
    """``{module name: (role, m_in, m_out)}``: each layer's role and width multipliers."""
    out = {}
    if base_model is not None:
        base = dict(base_model.named_modules())
        for name, mod in layers:
            if name not in base or type(base[name]) is not type(mod):
                raise ValueError(
                    f"base_model has no layer {name!r} of type {type(mod).__name__}; it must be "
                    "the same architecture at the base width."
                )
            fi, fo = _fans(mod)
            bfi, bfo = _fans(base[name])
            inf_in, inf_out = fi != bfi, fo != bfo
            role = {(False, True): "input", (True, True): "hidden", (True, False): "output"}.get(
                (inf_in, inf_out), "fixed"
            )
            out[name] = (role, fi / bfi, fo / bfo)
    else:
        n = len(layers)
        for i, (name, mod) in enumerate(layers):
            fi, fo = _fans(mod)
            role = (
                "fixed" if n == 1 else "input" if i == 0 else "output" if i == n - 1 else "hidden"
            )
            out[name] = (role, fi / base_width, fo / base_width)
    for name, role in (roles or {}).items():
        if name not in out:
            raise ValueError(
                f"roles names {name!r}, not a parametrizable layer; known: {list(out)}."
            )
        if role not in ROLES:
            raise ValueError(f"role for {name!r} must be one of {ROLES}; got {role!r}.")
        out[name] = (role, *out[name][1:])
    return out


def _scales(kind, role, is_bias, m_in, m_out, fan_in, w_std, b_std, zero_readout):
    """``(std, multiplier, lr_sgd, lr_adam, width_mult)`` from the table of the module docs."""
    if kind == "ntk":
        return 1.0, (b_std if is_bias else w_std / math.sqrt(fan_in)), 1.0, 1.0, 1.0
    std = b_std if is_bias else w_std / math.sqrt(fan_in)
    if kind == "standard" or role == "fixed":
        return std, 1.0, 1.0, 1.0, 1.0
    if is_bias:
        if role == "output":
            return std, 1.0, 1.0, 1.0, 1.0
        return std, 1.0, m_out, 1.0, m_out
    if role == "input":
        return std, 1.0, m_out, 1.0, m_out
    if role == "hidden":
        return std, 1.0, 1.0, 1.0 / m_in, m_in
    # raw entries of fixed size (std w_std / sqrt(base fan-in)); with the 1/m multiplier the
    # effective variance is w_std^2 / (fan_in m) ~ 1/width^2 (Tensor Programs V, Table 3)
    return (0.0 if zero_readout else std * math.sqrt(m_in)), 1.0 / m_in, m_in, 1.0, m_in


def parametrize(
    model: nn.Module,
    parameterization: str,
    *,
    base_width: int | None = None,
    base_model: nn.Module | None = None,
    w_std: float | None = None,
    b_std: float | None = None,
    roles: dict[str, str] | None = None,
    zero_readout: bool = False,
    fold_lr: str | None = None,
    seed: int | None = None,
) -> Parametrization:
    """Put ``model`` into standard, NTK or muP form, in place, and re-initialise it.

    Args:
        model: A module whose parameters all belong to ``nn.Linear``, ``nn.Conv1d/2d/3d``,
            ``nn.Embedding`` or ntkit's ``DenseNTK``/``ConvNTK`` layers.
        parameterization: ``"standard"``, ``"ntk"`` or ``"mup"``.
        base_width: muP: the width at which muP equals the standard parameterization
            (every width-sized dimension is compared with it; roles by layer order).
        base_model: muP: the same architecture at the base width (instead of
            ``base_width``; handles layers whose widths are different multiples).
        w_std: Weight gain ``sigma_w``; ``None``: a ntkit layer's own ``w_std``, else 1.
        b_std: Bias gain ``sigma_b``; ``None``: a ntkit layer's own ``b_std``, else 0
            (under ``"ntk"`` a zero ``b_std`` freezes the bias, as in ``L.Dense``).
        roles: Override layer roles, ``{module name: "input"|"hidden"|"output"|"fixed"}``.
        zero_readout: muP: initialise the output layer's weights to zero (Yang et al. 2022).
        fold_lr: ``"sgd"``/``"adam"``: fold that optimizer's learning-rate scales into
            the multipliers (see the module docs); ``None`` keeps them in ``param_groups``.
        seed: Seed of the re-initialisation (a private generator); ``None`` draws from
            torch's global generator, as ``nn.Linear`` does.

    Returns:
        A :class:`Parametrization`; ``.param_groups(lr, optimizer=...)`` feeds the optimizer.

    Raises:
        ValueError: unknown parameterization, unsupported layers (named), muP without a
            base, or a base model of another architecture.
    """
    from ntkit.layers.conv import ConvNTK
    from ntkit.layers.modules import DenseNTK

    if parameterization not in PARAMETERIZATIONS:
        raise ValueError(
            f"parameterization must be one of {PARAMETERIZATIONS}; got {parameterization!r}."
        )
    if fold_lr is not None and fold_lr not in OPTIMIZERS:
        raise ValueError(f"fold_lr must be None or one of {OPTIMIZERS}; got {fold_lr!r}.")
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}.")
    layers = _weight_layers(model)
    if parameterization == "mup" and (base_width is None) == (base_model is None):
        raise ValueError(
            "muP is defined relative to a base width: pass exactly one of base_width= (an "
            "int) or base_model= (the same architecture at the base width)."
        )
    if base_width is not None and not (isinstance(base_width, int) and base_width >= 1):
        raise ValueError(f"base_width must be an integer >= 1; got {base_width!r}.")
    role_of = _roles(layers, base_model, base_width or 1, roles)
    gen = None if seed is None else torch.Generator().manual_seed(int(seed))
    scales = []
    for name, mod in layers:
        role, m_in, m_out = role_of[name]
        fan_in, _ = _fans(mod)
        # ntkit layers carry their gains as w_std/b_std until parametrize turns those into
        # multipliers; the gains are remembered so that a second parametrize reads them
        own = getattr(mod, "_ntkit_gains", None)
        if own is None and isinstance(mod, (DenseNTK, ConvNTK)):
            own = (mod.w_std, mod.b_std or 0.0)
        gw = w_std if w_std is not None else (own[0] if own else 1.0)
        gb = b_std if b_std is not None else (own[1] if own else 0.0)
        gw, gb = float(gw), float(gb)
        if isinstance(mod, (DenseNTK, ConvNTK)):
            mod._ntkit_gains = (gw, gb)
        mults = {}
        for pname in ("weight", "bias"):
            if getattr(mod, pname, None) is None:
                continue
            std, mult, lr_sgd, lr_adam, wm = _scales(
                parameterization,
                role,
                pname == "bias",
                m_in,
                m_out,
                fan_in,
                gw,
                gb,
                zero_readout,
            )
            if fold_lr is not None:
                s = lr_sgd if fold_lr == "sgd" else lr_adam
                c = math.sqrt(s) if fold_lr == "sgd" else s
                std, mult, lr_sgd, lr_adam = std / c, mult * c, 1.0, 1.0
            _initialise(_raw_parameter(mod, pname), std, gen)
            mults[pname] = mult
            full = f"{name}.{pname}" if name else pname
            scales.append(
                ParamScale(full, name, role, pname == "bias", wm, std, mult, lr_sgd, lr_adam)
            )
        _set_multipliers(mod, mults, fan_in)
    names = {id(p): n for n, p in model.named_parameters()}
    scales = [s.__class__(**{**s.__dict__, "name": names[id(_param_of(model, s))]}) for s in scales]
    return Parametrization(parameterization, tuple(scales), fold_lr, model)


def _raw_parameter(mod: nn.Module, pname: str) -> nn.Parameter:
    if torch_parametrize.is_parametrized(mod, pname):
        return mod.parametrizations[pname].original
    return getattr(mod, pname)


def _param_of(model: nn.Module, s: ParamScale) -> nn.Parameter:
    mod = model.get_submodule(s.module) if s.module else model
    return _raw_parameter(mod, s.name.rsplit(".", 1)[-1])


def _initialise(p: nn.Parameter, std: float, gen) -> None:
    from ntkit.layers import _init  # lazily, as below: importing ntkit.layers is not free

    with torch.no_grad():
        p.copy_(_init.normal(tuple(p.shape), gen, std).to(p.dtype))


def _set_multipliers(mod: nn.Module, mults: dict[str, float], fan_in: int) -> None:
    """Make the layer compute ``mult * W`` (and ``mult_b * b``)."""
    from ntkit.layers.conv import ConvNTK
    from ntkit.layers.modules import DenseNTK

    if isinstance(mod, (DenseNTK, ConvNTK)):  # these carry their multipliers as gains
        mod.w_std = mults["weight"] * math.sqrt(fan_in)
        if "bias" in mults:
            mod.b_std = mults["bias"]
        return
    for pname, c in mults.items():
        if torch_parametrize.is_parametrized(mod, pname):
            plist = mod.parametrizations[pname]
            if len(plist) != 1 or not isinstance(plist[0], _Multiplier):
                raise ValueError(
                    f"{type(mod).__name__}.{pname} already carries a parametrization that "
                    "is not ntkit's multiplier; remove it before parametrize."
                )
            if c == 1.0:
                torch_parametrize.remove_parametrizations(mod, pname, leave_parametrized=False)
            else:
                plist[0].c = float(c)
        elif c != 1.0:
            torch_parametrize.register_parametrization(mod, pname, _Multiplier(c))


def parametrize_spec_module(
    module: nn.Module, parameterization: str, *, base_width: int | None, seed: int
) -> Parametrization:
    """``net.module(..., parameterization=...)``: parametrize a module built from a layer spec.

    The gains are the layers' own ``w_std``/``b_std``, so every weight layer must be one of
    ntkit's NTK-parameterized modules (the description's default); a layer declared
    ``parameterization="standard"`` was built as a plain torch layer without its gain.
    """
    from ntkit.layers.conv import ConvNTK
    from ntkit.layers.modules import DenseNTK

    plain = [
        f"{name!r} ({type(m).__name__})"
        for name, m in module.named_modules()
        if _supported(m) and not isinstance(m, (DenseNTK, ConvNTK))
    ]
    if plain:
        raise ValueError(
            f"net.module(parameterization={parameterization!r}) takes the gains from layers "
            "described with the default parameterization='ntk'; these were declared "
            f"'standard': {', '.join(plain)}. Drop parameterization= from those layers."
        )
    return parametrize(module, parameterization, base_width=base_width, seed=seed)
