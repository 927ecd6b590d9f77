"""Label-aware NTKs and local elasticity (Chen, He & Su 2020, arXiv 2010.11775).

A label-aware kernel ``K(x, x'; S)`` also depends on the training set
``S = {(x_i, y_i)}``. Its Hoeffding decomposition is a label-agnostic part (the NTK) plus
parts that depend on one label, on pairs of labels, and so on. Both kernels of the paper
keep the NTK and add a part that depends on *pairs* of training labels through ``y_i . y_j``:

- **LANTK-HR** (higher-order regression): ``K_HR = Theta + lambda Z``, where ``Z(x, x')``
  estimates ``E[y y' | x, x']`` by regressing the label products ``y_i . y_j`` of all
  training pairs ``i != j`` on a pair feature. Here the pair feature is the NTK value
  ``Theta(x_i, x_j)`` and the regression is a local (Epanechnikov-weighted) average:
  ``Z(x, x') = sum_{i != j} w_ij y_i . y_j / sum_{i != j} w_ij`` with
  ``w_ij = h^2 - (Theta(x, x') - Theta(x_i, x_j))^2`` and bandwidth ``h`` the range of the
  training kernel's entries (so every weight is >= 0 once ``Theta(x, x')`` is clipped to
  that range). This is the estimator of the authors' two-layer experiments, written as
  closed-form sums: ``O(n^2)`` once, ``O(1)`` per kernel entry.
- **LANTK-NTH** (neural tangent hierarchy, truncated at fourth order): the expected NTK
  after gradient flow to convergence on MSE from outputs near zero,
  ``Theta + tr(Y^T M(x, x') Y)`` with ``M = int_0^inf int_0^t e^{-Hs} K4 e^{-Ht} ds dt``
  in the sense of the hierarchy (``H = Theta(X, X)``, ``K4(x, x', x_i, x_j)`` the
  fourth-order kernel). In the eigenbasis ``H = P diag(lambda) P^T``,
  ``(P^T M P)_kl = (P^T K4 P)_kl / (lambda_k (lambda_k + lambda_l))``, which equals the
  paper's ``H^-1 K4 H^-1 - Q`` (eq. 8). The result does not depend on the loss
  convention (sum or mean) or the learning rate. :func:`two_layer_relu_k4` gives the
  expected ``K4`` of the paper's two-layer ReLU network (Monte Carlo over the first-layer
  weights), :func:`empirical_k4` the exact ``K4`` of any finite scalar-output model.

Local elasticity (He & Su 2020) is measured as in the paper: with the normalized kernel
``k(x, x') / sqrt(k(x, x) k(x', x'))``, the ratio ``mean_same / (mean_same + mean_diff)``
over same-class and different-class pairs. Larger means the kernel separates classes more.
"""

from __future__ import annotations

import numpy as np
import torch

from ntkit.analysis.metrics import as_kernel_matrix
from ntkit.predict._checks import as_float_tensor

__all__ = [
    "empirical_k4",
    "label_aware_hr",
    "label_aware_nth",
    "label_products",
    "local_elasticity",
    "two_layer_relu_k4",
]


def label_products(y, n: int) -> torch.Tensor:
    """Targets as an ``(n, C)`` float64 matrix whose rows give ``y_i . y_j``.

    Args:
        y: Integer class labels ``(n,)``, encoded as centered one-hot rows ``e_c - 1/C``
            (so ``y_i . y_j`` is ``1 - 1/C`` within a class and ``-1/C`` across; for two
            classes this is +-1/2, proportional to +-1 labels), real targets ``(n,)`` (e.g.
            +-1) or ``(n, C)`` real targets used as given.
        n: The expected number of rows.

    Returns:
        ``(n, C)`` float64 tensor.

    Raises:
        TypeError: not a tensor/array, boolean or complex.
        ValueError: wrong length, rank, negative class labels or NaN/Inf.
    """
    if isinstance(y, np.ndarray) and y.dtype.kind in "iuf":
        y = torch.from_numpy(np.ascontiguousarray(y))
    if not isinstance(y, torch.Tensor):
        raise TypeError(
            f"labels must be a torch.Tensor or numeric numpy.ndarray of length {n}; "
            f"got {type(y).__name__}."
        )
    if y.dtype == torch.bool or y.is_complex():
        raise TypeError(f"labels must be integer class labels or real targets; got {y.dtype}.")
    if y.ndim not in (1, 2) or y.shape[0] != n:
        raise ValueError(
            f"labels must have shape ({n},) or ({n}, C), one row per training example; "
            f"got {tuple(y.shape)}."
        )
    if not y.is_floating_point():
        if y.ndim != 1 or bool((y < 0).any()):
            raise ValueError("integer labels must be class indices >= 0 of shape (n,).")
        onehot = torch.nn.functional.one_hot(y.long()).to(torch.float64)
        return onehot - 1.0 / onehot.shape[1]
    y = as_float_tensor(y, "labels", dtype=torch.float64)
    return y[:, None] if y.ndim == 1 else y


def label_aware_hr(
    k_train_train, y_train, k_other_train=None, *, strength: float = 0.1
) -> torch.Tensor:
    """LANTK-HR: the NTK plus a regression estimate of ``E[y y' | x, x']``.

    ``K_HR(x, x') = Theta(x, x') + lambda Z(x, x')`` (module docstring), with
    ``lambda = strength * mean|Theta(X, X)| / mean|Z(X, X)|`` so that ``strength`` is the
    size of the label-aware part relative to the NTK (the authors use 0.1). ``lambda`` and
    the regression use the training kernel only, so train-train, test-train and test-test
    kernels are mutually consistent and usable with :mod:`ntkit.predict`.

    Args:
        k_train_train: ``(n, n)`` NTK of the training inputs (analytic or empirical).
        y_train: Training labels: class indices ``(n,)``, real targets ``(n,)`` or ``(n, C)``.
        k_other_train: ``(m, n)`` NTK between other inputs and the training inputs (or an
            ``(m, m)`` kernel among other inputs: any kernel whose entries are NTK values);
            ``None`` returns the training kernel.
        strength: Relative size of the label-aware part, ``>= 0``.

    Returns:
        ``(n, n)`` (or the shape of ``k_other_train``) float64 kernel.

    Raises:
        ValueError: mismatched shapes, labels of the wrong length, fewer than 2 training
            examples, a constant training kernel, or negative ``strength``.
        TypeError: labels of the wrong type.
    """
    k = as_kernel_matrix(k_train_train, "k_train_train")
    n = k.shape[0]
    if n < 2:
        raise ValueError(f"LANTK-HR needs at least 2 training examples; got {n}.")
    if not (isinstance(strength, (int, float)) and strength >= 0):
        raise ValueError(f"strength must be a number >= 0; got {strength!r}.")
    y = label_products(y_train, n)
    yy = y @ y.T
    off = ~torch.eye(n, dtype=torch.bool)
    kk, yo = k[off], yy[off]  # the n(n-1) ordered pairs i != j
    lo, hi = float(kk.min()), float(kk.max())
    if not hi > lo:
        raise ValueError("the training kernel is constant off the diagonal; Z is undefined.")
    h2 = (hi - lo) ** 2
    sums = (yo.sum(), (kk * yo).sum(), (kk**2 * yo).sum(), kk.sum(), (kk**2).sum())

    def z_of(kv: torch.Tensor) -> torch.Tensor:
        s_y, s_ky, s_kky, s_k, s_kk = sums
        t = kv.clamp(lo, hi)
        m = kk.numel()
        num = (h2 - t**2) * s_y + 2 * t * s_ky - s_kky
        den = (h2 - t**2) * m + 2 * t * s_k - s_kk
        return num / den

    z_train = z_of(k)
    scale = float(z_train.abs().mean())
    lam = 0.0 if scale == 0 else strength * float(k.abs().mean()) / scale
    if k_other_train is None:
        return k + lam * z_train
    ko = as_float_tensor(k_other_train, "k_other_train", dtype=torch.float64)
    if ko.ndim != 2:
        raise ValueError(f"k_other_train must be a 2-D kernel; got {tuple(ko.shape)}.")
    return ko + lam * z_of(ko)


def label_aware_nth(k_train_train, y_train, k_pair, k4, *, ridge: float = 0.0) -> torch.Tensor:
    """LANTK-NTH: the NTK plus the label-aware change the hierarchy predicts (paper eq. 8).

    ``Theta(x, x') + sum_c y_c^T M(x, x') y_c`` with
    ``P^T M P = (P^T K4(x, x') P)_kl / (lambda_k (lambda_k + lambda_l))`` for
    ``H + ridge I = P diag(lambda) P^T`` (module docstring). ``K4`` must already carry the
    network's ``1 / width`` factor.

    Args:
        k_train_train: ``(n, n)`` NTK ``H`` of the training inputs.
        y_train: Training labels (see :func:`label_products`).
        k_pair: ``(n1, n2)`` NTK between the inputs of interest (train-train, test-train...).
        k4: ``(n1, n2, n, n)`` fourth-order kernel ``K4(x_a, x_b, x_i, x_j)``.
        ridge: Added to ``H``'s diagonal (``H`` must be positive definite after it).

    Returns:
        ``(n1, n2)`` float64 kernel.

    Raises:
        ValueError: shapes, labels, a negative ridge or an ``H`` that is not positive
            definite.
    """
    h = as_kernel_matrix(k_train_train, "k_train_train")
    n = h.shape[0]
    y = label_products(y_train, n)
    kp = as_float_tensor(k_pair, "k_pair", dtype=torch.float64)
    k4 = as_float_tensor(k4, "k4", dtype=torch.float64)
    if kp.ndim != 2 or k4.shape != (*kp.shape, n, n):
        raise ValueError(
            f"k_pair must be (n1, n2) and k4 (n1, n2, {n}, {n}); got {tuple(kp.shape)} and "
            f"{tuple(k4.shape)}."
        )
    if not ridge >= 0:
        raise ValueError(f"ridge must be >= 0; got {ridge!r}.")
    lam, p = torch.linalg.eigh(h + ridge * torch.eye(n, dtype=h.dtype))
    if float(lam.min()) <= n * torch.finfo(h.dtype).eps * float(lam.max().abs()):
        raise ValueError(
            f"k_train_train (+ ridge) must be positive definite; its smallest eigenvalue is "
            f"{float(lam.min()):.3e}. Pass ridge > 0."
        )
    yt = p.T @ y  # (n, C)
    w = 1.0 / (lam[:, None] * (lam[:, None] + lam[None, :]))
    g = p @ (w * (yt @ yt.T)) @ p.T  # sum_ij K4_ij G_ij = sum_kl K4~_kl W_kl (Y~ Y~^T)_kl
    return kp + torch.einsum("abij,ij->ab", k4, g)


def local_elasticity(k, labels1, labels2=None, *, diag1=None, diag2=None) -> float:
    """Same-class similarity ratio ``mean_same / (mean_same + mean_diff)`` of a kernel.

    Entries are normalized by ``sqrt(k(x, x) k(x', x'))``. With ``labels2=None`` the kernel
    is ``(n, n)`` among one set and its diagonal pairs (always 1) are left out; otherwise
    ``k`` is ``(n1, n2)`` between two sets and ``diag1`` ``(n1,)``, ``diag2`` ``(n2,)`` give
    ``k(x, x)`` on each set.

    Args:
        k: ``(n, n)`` or ``(n1, n2)`` kernel.
        labels1: Integer class labels ``(n1,)``.
        labels2: Integer class labels ``(n2,)``, or ``None``.
        diag1: ``(n1,)`` self-similarities of the first set (only with ``labels2``).
        diag2: ``(n2,)`` self-similarities of the second set (only with ``labels2``).

    Returns:
        The ratio (0.5 when the kernel does not distinguish classes).

    Raises:
        ValueError: mismatched shapes, non-positive self-similarities, no same-class or no
            different-class pair.
        TypeError: labels that are not integer class labels.
    """
    k = as_float_tensor(k, "k", dtype=torch.float64)
    l1 = _int_labels(labels1, k.shape[0], "labels1")
    if labels2 is None:
        if k.ndim != 2 or k.shape[0] != k.shape[1]:
            raise ValueError(f"k must be square (n, n) when labels2 is None; got {tuple(k.shape)}.")
        l2, d1 = l1, k.diagonal()
        d2 = d1
        keep = ~torch.eye(k.shape[0], dtype=torch.bool)
    else:
        if k.ndim != 2:
            raise ValueError(f"k must be (n1, n2); got {tuple(k.shape)}.")
        l2 = _int_labels(labels2, k.shape[1], "labels2")
        if diag1 is None or diag2 is None:
            raise ValueError("diag1 and diag2 (k(x, x) on each set) are needed with labels2.")
        d1 = as_float_tensor(diag1, "diag1", dtype=torch.float64).reshape(-1)
        d2 = as_float_tensor(diag2, "diag2", dtype=torch.float64).reshape(-1)
        if d1.shape[0] != k.shape[0] or d2.shape[0] != k.shape[1]:
            raise ValueError("diag1 and diag2 must match k's rows and columns.")
        keep = torch.ones_like(k, dtype=torch.bool)
    if not (bool((d1 > 0).all()) and bool((d2 > 0).all())):
        raise ValueError("self-similarities k(x, x) must be > 0 to normalize the kernel.")
    kn = k / torch.sqrt(d1[:, None] * d2[None, :])
    same = (l1[:, None] == l2[None, :]) & keep
    diff = (l1[:, None] != l2[None, :]) & keep
    if not bool(same.any()) or not bool(diff.any()):
        raise ValueError("local elasticity needs both same-class and different-class pairs.")
    m_same, m_diff = float(kn[same].mean()), float(kn[diff].mean())
    return m_same / (m_same + m_diff)


def _int_labels(labels, n: int, name: str) -> torch.Tensor:
    if not isinstance(labels, torch.Tensor):
        if isinstance(labels, np.ndarray):
            labels = torch.from_numpy(np.ascontiguousarray(labels))
        else:
            raise TypeError(
                f"{name} must be a tensor of integer class labels; got {type(labels).__name__}."
            )
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise TypeError(f"{name} must be integer class labels; got {labels.dtype}.")
    if labels.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},); got {tuple(labels.shape)}.")
    return labels


def two_layer_relu_k4(
    x1, x2, x_train, *, width: int, n_samples: int = 4096, seed: int = 0
) -> torch.Tensor:
    """Expected fourth-order kernel of the paper's two-layer ReLU network, divided by width.

    The network is ``f(x) = m^{-1/2} sum_r a_r relu(w_r . x / sqrt(d))`` with standard normal
    ``a_r, w_r`` (NTK parameterization, no bias; its NTK is
    ``serial(Dense(m), ReLU(), Dense(1))``). Differentiating its NTK twice along the
    training gradients (ReLU'' = 0 almost everywhere) gives, with ``p(u, v) = u . v / d``,
    ``s = relu(w . x / sqrt(d))``, ``t = relu'(...)`` and ``(a, b, i, j)`` the four inputs::

        m K4 = E_w[ s_j (2 t_a t_b s_i p_ab + t_a s_b t_i p_ai + s_a t_b t_i p_bi) ]
             + E_w[ t_a t_b t_i t_j ] (2 p_ab p_ij + p_ai p_bj + p_bi p_aj)

    The expectations over ``w ~ N(0, I_d)`` are Monte Carlo averages over ``n_samples``
    draws (four-dimensional Gaussian orthant integrals have no closed form; the authors
    also sample). Cost ``O(n1 n2 n^2 n_samples)``.

    Args:
        x1: ``(n1, d)`` inputs.
        x2: ``(n2, d)`` inputs.
        x_train: ``(n, d)`` training inputs.
        width: Hidden width ``m`` of the network (the ``1/m`` in front).
        n_samples: Monte Carlo draws of ``w``.
        seed: Seed of the draws (private generator).

    Returns:
        ``(n1, n2, n, n)`` float64 tensor ``K4(x1_a, x2_b, x_i, x_j)``.
    """
    from ntkit._validation import as_batch

    xs = [
        as_batch(v, name, dtype=torch.float64)
        for v, name in ((x1, "x1"), (x2, "x2"), (x_train, "x_train"))
    ]
    d = xs[0].shape[1]
    if any(v.ndim != 2 or v.shape[1] != d for v in xs):
        raise ValueError("x1, x2 and x_train must be (n, d) with the same d.")
    if not (
        isinstance(width, int) and width >= 1 and isinstance(n_samples, int) and n_samples >= 1
    ):
        raise ValueError(f"width and n_samples must be positive ints; got {width}, {n_samples}.")
    a, b, t = xs
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n_samples, d, generator=g, dtype=torch.float64)
    ua, ub, ut = (w @ v.T / d**0.5 for v in (a, b, t))  # (M, n.)
    sa, sb, st = ua.clamp_min(0), ub.clamp_min(0), ut.clamp_min(0)
    ta, tb, tt = (ua > 0).double(), (ub > 0).double(), (ut > 0).double()
    p_ab, p_ai, p_bi, p_ij = a @ b.T / d, a @ t.T / d, b @ t.T / d, t @ t.T / d
    n1, n2, n, m = a.shape[0], b.shape[0], t.shape[0], float(n_samples)

    def pairs(u, v):  # (M, n_u * n_v): per-sample products u_r[k] v_r[l]
        return (u[:, :, None] * v[:, None, :]).reshape(u.shape[0], -1)

    ss, ts, tt2 = pairs(st, st), pairs(tt, st), pairs(tt, tt)
    out = torch.empty(n1, n2, n, n, dtype=torch.float64)
    rows = max(1, int(2**24 // max(1, n2 * n * n)))  # ~128 MiB per expectation block
    for lo in range(0, n1, rows):
        sl = slice(lo, min(n1, lo + rows))
        r = sl.stop - sl.start

        def expect(u, v, feats, sl=sl, r=r):  # E_w[u_a v_b F_ij], rows sl: (r, n2, n, n)
            return (pairs(u[:, sl], v).T @ feats / m).reshape(r, n2, n, n)

        pab = p_ab[sl][:, :, None, None]
        geo = 2 * pab * p_ij + p_ai[sl][:, None, :, None] * p_bi[None, :, None, :]
        geo = geo + p_bi[None, :, :, None] * p_ai[sl][:, None, None, :]
        out[sl] = (
            2 * pab * expect(ta, tb, ss)
            + p_ai[sl][:, None, :, None] * expect(ta, sb, ts)
            + p_bi[None, :, :, None] * expect(sa, tb, ts)
            + geo * expect(ta, tb, tt2)
        )
    return out / width


def empirical_k4(model, x1, x2, x_train) -> torch.Tensor:
    """Exact fourth-order kernel of a finite scalar-output model (neural tangent hierarchy).

    ``K3(x, x', x_i) = <grad Theta(x, x'), grad f(x_i)>`` and
    ``K4(x, x', x_i, x_j) = <grad K3(x, x', x_i), grad f(x_j)>`` (Huang & Yau 2020), with
    gradients in the parameters (the directions ``grad f(x_i)`` are differentiated too).
    Computed by nested ``torch.func`` transforms (forward over forward over reverse),
    vectorized over ``(i, j)``, one pair ``(a, b)`` at a time: a slow reference for small
    models and a handful of inputs.

    Args:
        model: A ``torch.nn.Module`` with one output per sample.
        x1: ``(n1, ...)`` inputs.
        x2: ``(n2, ...)`` inputs.
        x_train: ``(n, ...)`` training inputs.

    Returns:
        ``(n1, n2, n, n)`` tensor in the model's dtype.
    """
    from torch.func import functional_call, grad, jvp, vmap

    params = {k: v.detach() for k, v in model.named_parameters()}

    def f(p, x):
        out = functional_call(model, p, (x[None],)).reshape(-1)
        if out.numel() != 1:
            raise ValueError(f"empirical_k4 needs a scalar-output model; got {out.numel()}.")
        return out[0]

    def dot(u, v):
        return sum((u[k] * v[k]).sum() for k in u)

    def theta(p, xa, xb):
        return dot(grad(f)(p, xa), grad(f)(p, xb))

    def k3(p, xa, xb, xi):
        return jvp(lambda q: theta(q, xa, xb), (p,), (grad(f)(p, xi),))[1]

    def k4(xa, xb, xi, xj):
        return jvp(lambda q: k3(q, xa, xb, xi), (params,), (grad(f)(params, xj),))[1]

    over_pairs = vmap(vmap(k4, in_dims=(None, None, None, 0)), in_dims=(None, None, 0, None))
    rows = [
        torch.stack([over_pairs(x1[a], x2[b], x_train, x_train) for b in range(x2.shape[0])])
        for a in range(x1.shape[0])
    ]
    return torch.stack(rows).detach()
