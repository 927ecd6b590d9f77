"""Complex-valued networks trained by real-valued backpropagation (Tan et al. 2022).

Finite layers hold their weights as *real* parameters (real and imaginary parts separately),
so ``loss.backward()`` is ordinary real backpropagation; activations act on torch complex
tensors. Conventions (stated once):

- ``ComplexDense`` (NTK parameterization): ``h = (w_std / sqrt(fan_in)) W z + b_std b``
  with ``W = (A + iB) / sqrt(2)``, ``b = (c + ie) / sqrt(2)`` and standard normal real
  parameters ``A, B, c, e``: circularly-symmetric standard complex Gaussians,
  ``E|W_jk|^2 = 1``. Realified, every real weight is standard normal with scale
  ``w_std / sqrt(2 fan_in)`` -- a real NTK-parameterized layer on ``2 fan_in`` real inputs
  (bias scale ``b_std / sqrt(2)``). ``ComplexConv2d`` is the same with
  ``fan_in = C k_h k_w``.
- The input kernel of complex inputs is ``<z, z'> / d = z . conj(z') / d``.
- The tangent kernel of a complex output is the ``2 x 2`` real block kernel
  ``Theta_pq(z, z') = sum_theta d(part_p f(z))/d theta * d(part_q f(z'))/d theta`` over the
  real parameters, ``p, q`` in (Re, Im): exactly the real NTK of the *realified* network
  (inputs ``[Re z, Im z]``, outputs ``[Re f, Im f]``).

Infinite width (:meth:`ComplexMLP.kernel`): with circular weights every pre-activation is a
circular Gaussian process, fixed by the Hermitian kernel ``K = E[h conj h']``, and its real
and imaginary parts have ``Cov(Re h, Re h') = Cov(Im h, Im h') = Re K / 2`` and
``Cov(Re h, Im h') = -Im K / 2``. For a *split* activation ``phi(Re h) + i phi(Im h)`` with
``V(c) = E[phi(u) phi(v)]``, ``D(c) = E[phi'(u) phi'(v)]`` at covariance ``c`` (the real
activation's closed forms, variances ``K(z, z)/2``, ``K(z', z')/2``), one layer maps::

    K_next = w_std^2 [2 V(Re K/2) + i (V(Im K/2) - V(-Im K/2))] + b_std^2
    T_next = K_next + w_std^2 [D(Re K/2) Re T + i (D(Im K/2) + D(-Im K/2)) / 2 Im T]

for the NNGP ``K`` and the complex NTK ``T = sum_theta df/dtheta conj(df'/dtheta)``; the
pseudo-kernels ``E[h h']`` vanish. The block NTK is then ``Theta_RR = Theta_II = Re T / 2``
and ``Theta_RI = -Theta_IR = -Im T / 2``. The Re-Re and Im-Im blocks equal the real NTK of
the realified network with independent weights (``w_std`` and ``b_std / sqrt(2)`` on the
``2d`` real inputs), the reduction of Tan et al.; the cross blocks are zero for real inputs
and, for genuinely complex inputs, carry ``-Im T / 2`` -- which an untied real network of the
same shape would set to zero. Other complex activations (modReLU, zReLU, cardioid) have no
closed form here: use :func:`complex_empirical_ntk` and Monte Carlo.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

__all__ = [
    "Cardioid",
    "ComplexConv2d",
    "ComplexDense",
    "ComplexKernel",
    "ComplexMLP",
    "ModReLU",
    "SplitActivation",
    "ZReLU",
    "complex_empirical_ntk",
    "realify",
]


_HALF_SQRT = math.sqrt(0.5)


def _as_complex(z: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    if not isinstance(z, torch.Tensor):
        raise TypeError(f"complex layers take torch tensors; got {type(z).__name__}.")
    target = torch.complex128 if dtype == torch.float64 else torch.complex64
    return z.to(target)


def _normal(shape, generator, dtype) -> torch.Tensor:
    return torch.randn(*shape, generator=generator, dtype=dtype)


def _cplx(re: torch.Tensor, im: torch.Tensor) -> torch.Tensor:
    """``(re + i im) / sqrt(2)``: a standard complex Gaussian from standard normal parts."""
    return torch.complex(re, im) * _HALF_SQRT


class ComplexDense(nn.Module):
    """Complex affine layer ``(w_std / sqrt(fan_in)) W z + b_std b`` with real parameters.

    Args:
        in_features: Complex input features ``fan_in``.
        out_features: Complex output features.
        w_std: Weight scale (``E|W|^2 = 1`` before scaling).
        b_std: Bias scale, or ``None`` for no bias.
        seed: Seed of the initialization (private generator).
        dtype: Real dtype of the parameters (float32 or float64).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        w_std: float = 1.0,
        b_std: float | None = None,
        seed: int = 0,
        dtype=torch.float64,
    ):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.in_features, self.out_features = in_features, out_features
        self.w_std, self.b_std = float(w_std), b_std
        self.weight_real = nn.Parameter(_normal((out_features, in_features), g, dtype))
        self.weight_imag = nn.Parameter(_normal((out_features, in_features), g, dtype))
        if b_std is not None:
            self.bias_real = nn.Parameter(_normal((out_features,), g, dtype))
            self.bias_imag = nn.Parameter(_normal((out_features,), g, dtype))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """``(n, in_features)`` complex (or real) -> ``(n, out_features)`` complex."""
        z = _as_complex(z, self.weight_real.dtype)
        if z.shape[-1] != self.in_features:
            raise ValueError(
                f"ComplexDense expects inputs (n, {self.in_features}); got {tuple(z.shape)}."
            )
        w = _cplx(self.weight_real, self.weight_imag)
        out = z @ w.T * (self.w_std / math.sqrt(self.in_features))
        if self.b_std is not None:
            out = out + self.b_std * _cplx(self.bias_real, self.bias_imag)
        return out


class ComplexConv2d(nn.Module):
    """Complex 2-D convolution with real parameters, ``fan_in = C k_h k_w`` scaling.

    Computed as four real convolutions, ``(A + iB) * (u + iv) = (A*u - B*v) + i(A*v + B*u)``.

    Args:
        in_channels: Complex input channels.
        out_channels: Complex output channels.
        kernel_size: Window size (int or pair).
        stride: Stride (as ``torch.nn.functional.conv2d``).
        padding: Padding (as ``torch.nn.functional.conv2d``, e.g. ``"same"``).
        w_std: Weight scale.
        b_std: Bias scale or ``None``.
        seed: Seed of the initialization.
        dtype: Real parameter dtype.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size,
        *,
        stride=1,
        padding=0,
        w_std: float = 1.0,
        b_std: float | None = None,
        seed: int = 0,
        dtype=torch.float64,
    ):
        super().__init__()
        kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
        g = torch.Generator().manual_seed(seed)
        self.in_channels, self.stride, self.padding = in_channels, stride, padding
        self.scale = float(w_std) / math.sqrt(in_channels * kh * kw)
        self.b_std = b_std
        shape = (out_channels, in_channels, kh, kw)
        self.weight_real = nn.Parameter(_normal(shape, g, dtype))
        self.weight_imag = nn.Parameter(_normal(shape, g, dtype))
        if b_std is not None:
            self.bias_real = nn.Parameter(_normal((out_channels,), g, dtype))
            self.bias_imag = nn.Parameter(_normal((out_channels,), g, dtype))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """``(n, C, H, W)`` complex (or real) -> ``(n, C_out, H', W')`` complex."""
        z = _as_complex(z, self.weight_real.dtype)
        if z.ndim != 4 or z.shape[1] != self.in_channels:
            raise ValueError(
                f"ComplexConv2d expects (n, {self.in_channels}, H, W); got {tuple(z.shape)}."
            )
        conv = torch.nn.functional.conv2d
        u, v = z.real, z.imag
        a, b = self.weight_real, self.weight_imag
        kw = {"stride": self.stride, "padding": self.padding}
        re = conv(u, a, **kw) - conv(v, b, **kw)
        im = conv(v, a, **kw) + conv(u, b, **kw)
        out = _cplx(re, im) * self.scale
        if self.b_std is not None:
            bias = _cplx(self.bias_real, self.bias_imag)
            out = out + self.b_std * bias[:, None, None]
        return out


class SplitActivation(nn.Module):
    """``phi(Re z) + i phi(Im z)`` for a real elementwise ``phi`` (type-A / split activation).

    Args:
        fn: A real elementwise function, or an :mod:`ntkit.layers` activation (its ``fn``).
    """

    def __init__(self, fn):
        super().__init__()
        self.activation = fn
        self.fn = fn.fn if hasattr(fn, "fn") else fn

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Complex -> complex, elementwise."""
        if not z.is_complex():
            raise TypeError(f"SplitActivation expects a complex tensor; got {z.dtype}.")
        return torch.complex(self.fn(z.real), self.fn(z.imag))


class ModReLU(nn.Module):
    """``relu(|z| + b) z / |z|`` with a learnable real bias per feature (Arjovsky et al. 2016).

    Args:
        features: Number of features (size of the last axis, or channels for images).
        bias: Initial bias value.
        channel_axis: Axis of the features (``-1`` for dense, ``1`` for images).
    """

    def __init__(
        self, features: int, *, bias: float = -0.1, channel_axis: int = -1, dtype=torch.float64
    ):
        super().__init__()
        self.bias = nn.Parameter(torch.full((features,), float(bias), dtype=dtype))
        self.channel_axis = channel_axis

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Complex -> complex."""
        mag = z.abs()
        shape = [1] * z.ndim
        shape[self.channel_axis] = -1
        scale = torch.relu(mag + self.bias.reshape(shape)) / mag.clamp_min(1e-30)
        return z * scale


class ZReLU(nn.Module):
    """``z`` where both ``Re z > 0`` and ``Im z > 0``, else 0 (Guberman 2016)."""

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Complex -> complex."""
        return z * ((z.real > 0) & (z.imag > 0))


class Cardioid(nn.Module):
    """``(1 + cos(arg z)) z / 2`` (Virtue et al. 2017): ReLU on the real line."""

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Complex -> complex."""
        return 0.5 * (1 + torch.cos(torch.angle(z))) * z


class _Realified(nn.Module):
    """``[Re z, Im z]`` (stacked on axis 1) -> complex model -> ``[Re f, Im f]`` flattened."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(torch.complex(x[:, 0], x[:, 1])).reshape(x.shape[0], -1)
        if not out.is_complex():
            raise TypeError("the model must return a complex tensor.")
        return torch.cat([out.real, out.imag], dim=1)


def realify(model: nn.Module) -> nn.Module:
    """The real network ``[Re z, Im z] -> [Re f(z), Im f(z)]`` of a complex model.

    Its inputs are ``(n, 2, *in_shape)`` (real and imaginary parts stacked on axis 1), its
    outputs ``(n, 2 O)`` (all real parts, then all imaginary parts); it shares the model's
    parameters.
    """
    return _Realified(model)


def _split_z(z, name: str) -> torch.Tensor:
    if not isinstance(z, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor; got {type(z).__name__}.")
    z = z.to(torch.complex128) if not z.is_complex() else z
    if z.ndim < 2 or z.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty batch (n, ...); got {tuple(z.shape)}.")
    if not bool(torch.isfinite(torch.view_as_real(z)).all()):
        raise ValueError(f"{name} contains NaN or Inf.")
    return torch.stack([z.real, z.imag], dim=1)


def complex_empirical_ntk(
    model: nn.Module, z1, z2=None, *, mode: str = "full", implementation: str = "jacobian"
) -> torch.Tensor:
    """Empirical NTK of a complex model as the ``2 x 2`` real block kernel.

    Args:
        model: A module mapping complex ``(n, *in_shape)`` to complex ``(n, O)`` outputs,
            with real parameters (real-valued backpropagation).
        z1: ``(n1, *in_shape)`` complex (or real) inputs.
        z2: ``(n2, *in_shape)`` inputs; ``None`` means ``z1``.
        mode: ``"full"`` -> ``(2, 2, n1, n2, O, O)``; ``"trace"`` -> ``(2, 2, n1, n2)``,
            summed over the output index. Index 0 is Re, 1 is Im:
            ``out[p, q] = J_p(z) J_q(z')^T``.
        implementation: Passed to :func:`ntkit.empirical_ntk`.

    Returns:
        The block kernel in the parameters' dtype.

    Raises:
        ValueError: bad mode or inputs. TypeError: a model with real outputs.
    """
    from ntkit.empirical import empirical_ntk

    if mode not in ("full", "trace"):
        raise ValueError(f"mode must be 'full' or 'trace'; got {mode!r}.")
    x1 = _split_z(z1, "z1")
    x2 = None if z2 is None else _split_z(z2, "z2")
    dtype = next(iter(model.parameters())).dtype
    with torch.no_grad():
        try:
            probe = model(torch.complex(x1[:1, 0], x1[:1, 1]))
        except RuntimeError as err:
            raise TypeError(
                f"the model must take complex inputs (a complex network); it failed with: {err}"
            ) from err
    if not probe.is_complex():
        raise TypeError(f"the model must return a complex tensor; got {probe.dtype}.")
    x1 = x1.to(dtype)
    x2 = None if x2 is None else x2.to(dtype)
    k = empirical_ntk(realify(model), x1, x2, mode="full", implementation=implementation)
    n1, n2, o2, _ = k.shape
    o = o2 // 2
    k = k.reshape(n1, n2, 2, o, 2, o).permute(2, 4, 0, 1, 3, 5)
    if mode == "trace":
        return k.diagonal(dim1=-2, dim2=-1).sum(-1)
    return k


@dataclass(frozen=True)
class ComplexKernel:
    """Infinite-width kernels of a complex network (per output; ``(x) I_O``).

    Attributes:
        nngp: ``(n1, n2)`` complex Hermitian NNGP ``E[f(z) conj f(z')]``.
        ntk: ``(n1, n2)`` complex NTK ``T = sum_theta df/dtheta conj(df'/dtheta)``.
    """

    nngp: torch.Tensor
    ntk: torch.Tensor

    def blocks(self, which: str = "ntk") -> torch.Tensor:
        """``(2, 2, n1, n2)`` real block kernel ``[[Re/2, -Im/2], [Im/2, Re/2]]``."""
        t = {"ntk": self.ntk, "nngp": self.nngp}[which]
        re, im = t.real / 2, t.imag / 2
        return torch.stack([torch.stack([re, -im]), torch.stack([im, re])])


class ComplexMLP:
    """A complex MLP: ``hidden_layers`` x (ComplexDense + activation), then ComplexDense.

    The same description gives the finite module (:meth:`module`) and, for split
    activations, the infinite-width kernels (:meth:`kernel`, module docstring).

    Args:
        hidden_layers: Number of hidden ComplexDense + activation blocks (``>= 1``).
        activation: An :mod:`ntkit.layers` activation used as a split activation (closed-form
            limit), or ``"modrelu"``, ``"zrelu"``, ``"cardioid"`` (finite networks only).
        w_std: Weight scale of every layer.
        b_std: Bias scale of every layer, or ``None``.
        out_features: Complex outputs ``O``.
    """

    def __init__(
        self,
        hidden_layers: int,
        *,
        activation=None,
        w_std: float = 1.0,
        b_std: float | None = None,
        out_features: int = 1,
    ):
        from ntkit import layers as L

        if not (isinstance(hidden_layers, int) and hidden_layers >= 1):
            raise ValueError(f"hidden_layers must be an int >= 1; got {hidden_layers!r}.")
        self.activation = L.ReLU() if activation is None else activation
        if isinstance(self.activation, str) and self.activation not in (
            "modrelu",
            "zrelu",
            "cardioid",
        ):
            raise ValueError(
                "activation must be an ntkit.layers activation or one of 'modrelu', 'zrelu', "
                f"'cardioid'; got {self.activation!r}."
            )
        self.hidden_layers, self.w_std, self.b_std = hidden_layers, float(w_std), b_std
        self.out_features = out_features

    def _act_module(self, width: int, dtype):
        a = self.activation
        if a == "modrelu":
            return ModReLU(width, dtype=dtype)
        if a == "zrelu":
            return ZReLU()
        if a == "cardioid":
            return Cardioid()
        return SplitActivation(a)

    def module(
        self, in_features: int, width: int, *, seed: int = 0, dtype=torch.float64
    ) -> nn.Sequential:
        """The finite network with hidden width ``width`` (complex in, complex out)."""
        mods, fan_in = [], in_features
        for i in range(self.hidden_layers):
            mods += [
                ComplexDense(
                    fan_in,
                    width,
                    w_std=self.w_std,
                    b_std=self.b_std,
                    seed=seed * 1000 + i,
                    dtype=dtype,
                ),
                self._act_module(width, dtype),
            ]
            fan_in = width
        mods.append(
            ComplexDense(
                fan_in,
                self.out_features,
                w_std=self.w_std,
                b_std=self.b_std,
                seed=seed * 1000 + 999,
                dtype=dtype,
            )
        )
        return nn.Sequential(*mods)

    def kernel(self, z1, z2=None) -> ComplexKernel:
        """Infinite-width NNGP and NTK (complex, float64) of the network's outputs.

        Args:
            z1: ``(n1, d)`` complex (or real) inputs.
            z2: ``(n2, d)`` inputs; ``None`` means ``z1``.

        Returns:
            A :class:`ComplexKernel` with ``(n1, n2)`` complex128 ``nngp`` and ``ntk``.

        Raises:
            ValueError: a non-split activation (no closed form), or bad inputs.
        """
        act = self.activation
        if isinstance(act, str) or not hasattr(act, "expectations"):
            raise ValueError(
                f"no closed-form infinite-width limit for activation {act!r}; only split "
                "activations given as ntkit.layers activations have one. Estimate it by "
                "Monte Carlo over complex_empirical_ntk of random finite networks."
            )
        a = _split_z(z1, "z1")
        b = a if z2 is None else _split_z(z2, "z2")
        za = torch.complex(a[:, 0], a[:, 1]).reshape(a.shape[0], -1).to(torch.complex128)
        zb = torch.complex(b[:, 0], b[:, 1]).reshape(b.shape[0], -1).to(torch.complex128)
        if za.shape[1] != zb.shape[1]:
            raise ValueError(
                f"z1 and z2 must have the same features; got {za.shape[1]} and {zb.shape[1]}."
            )
        d = za.shape[1]
        p = za @ zb.conj().T / d
        qa, qb = (za.abs() ** 2).sum(1) / d, (zb.abs() ** 2).sum(1) / d
        w2 = self.w_std**2
        b2 = 0.0 if self.b_std is None else self.b_std**2
        k = w2 * p + b2
        t = k
        qa, qb = w2 * qa + b2, w2 * qb + b2
        for _ in range(self.hidden_layers):
            post, tpost, qa, qb = self._split_step(act, k, t, qa, qb)
            k = w2 * post + b2
            t = k + w2 * tpost
            qa, qb = w2 * qa + b2, w2 * qb + b2
        return ComplexKernel(nngp=k, ntk=t)

    @staticmethod
    def _split_step(act, k, t, qa, qb):
        """Post-activation kernel, NTK factor and self-variances of a split activation."""
        q1, q2 = (qa / 2)[:, None], (qb / 2)[None, :]
        c, s = k.real / 2, k.imag / 2
        v_c, d_c = act.expectations(c, q1, q2, True)
        v_p, d_p = act.expectations(s, q1, q2, True)
        v_m, d_m = act.expectations(-s, q1, q2, True)
        post = torch.complex(2 * v_c, v_p - v_m)
        tpost = torch.complex(d_c * t.real, 0.5 * (d_p + d_m) * t.imag)
        self_a, _ = act.expectations(qa / 2, qa / 2, qa / 2, False)
        self_b, _ = act.expectations(qb / 2, qb / 2, qb / 2, False)
        return post, tpost, 2 * self_a, 2 * self_b
