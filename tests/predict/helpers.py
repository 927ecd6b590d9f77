"""Small fixtures for the predict tests: random kernels and an independent linearization."""

from __future__ import annotations

import torch
from torch.func import functional_call, jvp


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def randn(*shape, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=gen(seed), dtype=torch.float64)


def rbf_kernel(a: torch.Tensor, b: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    return torch.exp(-(torch.cdist(a, b) ** 2) / (2 * scale**2))


def kernel_problem(n=8, n_test=5, m=2, d=3, seed=0):
    """A PD RBF + linear kernel problem: (K, K_test_train, K_test_test, Y)."""
    x = randn(n + n_test, d, seed=seed)

    def k(a, b):
        return rbf_kernel(a, b) + 0.3 * a @ b.T / d

    xtr, xte = x[:n], x[n:]
    return k(xtr, xtr), k(xte, xtr), k(xte, xte), randn(n, m, seed=seed + 1)


class Linearized:
    """``f_lin(theta0 + delta, x) = f(theta0, x) + J(x) delta`` via ``torch.func.jvp``.

    The reference for the closed forms: a model that is exactly linear in its parameters,
    trained in parameter space, never touching ntkit's kernels.
    """

    def __init__(self, model: torch.nn.Module):
        self.model = model
        self.theta0 = {k: v.detach().clone() for k, v in model.named_parameters()}

    def __call__(self, delta: dict, x: torch.Tensor) -> torch.Tensor:
        def f(params):
            return functional_call(self.model, params, (x,))

        out, tangent = jvp(f, (self.theta0,), (delta,))
        return out + tangent

    def zeros(self) -> dict:
        return {k: torch.zeros_like(v) for k, v in self.theta0.items()}


def train_linearized(lin, x, y, x_test, *, lr, steps, ridge=0.0, scale=1.0):
    """Full-batch GD on ``scale * [(1/2) sum (f - y)^2 + (ridge/2) ||delta||^2]``.

    Returns the (train, test) outputs after each step count in ``steps`` (sorted ints).
    """
    delta = lin.zeros()
    out, done = {}, 0

    def loss(d):
        f = lin(d, x)
        reg = sum((v**2).sum() for v in d.values())
        return scale * (0.5 * ((f - y) ** 2).sum() + 0.5 * ridge * reg)

    grad = torch.func.grad(loss)
    for k in sorted(steps):
        while done < k:
            g = grad(delta)
            delta = {n: delta[n] - lr * g[n] for n in delta}
            done += 1
        with torch.no_grad():
            out[k] = (lin(delta, x).detach(), lin(delta, x_test).detach())
    return out
