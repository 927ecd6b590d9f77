"""Models and a brute-force reference for the empirical-NTK tests.

The reference is deliberately naive: a Python loop over inputs and outputs, each calling
``torch.autograd.grad`` on the original module, then ``Theta = J J^T``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ntkit.layers.modules import DenseNTK


def brute_jacobian(model, x, params=None) -> torch.Tensor:
    """``(n, O, P)`` per-sample Jacobian by one autograd call per (sample, output).

    ``model`` is a module (``params``: list of parameter names or ``None`` for all) or a
    pair ``(f, param_dict)`` for a function ``f(params, x)``.
    """
    if isinstance(model, tuple):
        f, pdict = model
        leaves = {k: v.detach().clone().requires_grad_(True) for k, v in pdict.items()}
        ps = list(leaves.values())

        def fwd(xi):
            return f(leaves, xi)

    else:
        named = dict(model.named_parameters())
        names = list(named) if params is None else list(params)
        ps = [named[n] for n in names]

        def fwd(xi):
            return model(xi)

    rows = []
    for i in range(x.shape[0]):
        out = fwd(x[i : i + 1]).reshape(-1)
        per_out = []
        for a in range(out.numel()):
            grads = torch.autograd.grad(out[a], ps, retain_graph=True, allow_unused=True)
            per_out.append(
                torch.cat(
                    [
                        (g if g is not None else torch.zeros_like(p)).reshape(-1)
                        for g, p in zip(grads, ps)
                    ]
                )
            )
        rows.append(torch.stack(per_out))
    return torch.stack(rows).detach()


def brute_ntk(model, x1, x2=None, params=None) -> torch.Tensor:
    """``(n1, n2, O, O)`` full empirical NTK from :func:`brute_jacobian`."""
    j1 = brute_jacobian(model, x1, params)
    j2 = j1 if x2 is None else brute_jacobian(model, x2, params)
    return torch.einsum("iap,jbp->ijab", j1, j2)


class MLP(nn.Module):
    def __init__(self, d=6, h=9, o=3):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(d, h), nn.Tanh(), nn.Linear(h, h), nn.ReLU(), nn.Linear(h, o)
        )

    def forward(self, x):
        return self.net(x)


class CNN(nn.Module):
    """Conv2d with padding modes, strides, groups, pooling; Conv1d with dilation/'same'."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(2, 4, 3, padding=1)
        self.c2 = nn.Conv2d(4, 4, 3, stride=2, padding=1, padding_mode="circular", groups=2)
        self.c3 = nn.Conv2d(4, 3, 2, padding="same", bias=False)
        self.c1d = nn.Conv1d(3, 2, 3, dilation=2, padding="same")
        self.head = nn.Linear(2 * 4, 2)

    def forward(self, x):
        h = F.relu(self.c1(x))
        h = F.max_pool2d(h, 2)  # 8x8 -> 4x4
        h = torch.tanh(self.c2(h))  # -> 2x2
        h = self.c3(h)  # (n, 3, 2, 2)
        h = h.flatten(2)  # (n, 3, 4)
        h = F.avg_pool1d(torch.tanh(self.c1d(h)), 1)
        return self.head(h.flatten(1))


class ResBlock(nn.Module):
    def __init__(self, c=3):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        self.fc = nn.Linear(c, 2)

    def forward(self, x):
        h = F.relu(self.bn1(self.conv1(x)))
        h = self.bn2(self.conv2(h))
        h = F.relu(h + x)
        return self.fc(h.mean((2, 3)))


class AttentionBlock(nn.Module):
    def __init__(self, vocab=11, d=8, heads=2, o=3):
        super().__init__()
        self.emb = nn.Embedding(vocab, d, padding_idx=0)
        self.ln = nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.ln2 = nn.LayerNorm(d, bias=False)
        self.out = nn.Linear(d, o)

    def forward(self, ids):
        h = self.ln(self.emb(ids))
        a, _ = self.attn(h, h, h, need_weights=False)
        h = self.ln2(h + a)
        return self.out(h.mean(1))


class Tied(nn.Module):
    """One layer called twice, a weight tied between two layers, an embedding tied to the
    readout."""

    def __init__(self, d=5):
        super().__init__()
        self.a = nn.Linear(d, d)
        self.b = nn.Linear(d, d, bias=False)
        self.b.weight = self.a.weight
        self.c = nn.Linear(d, 4)

    def forward(self, x):
        h = torch.tanh(self.a(x))
        h = torch.tanh(self.a(h))  # same module again
        h = torch.tanh(self.b(h))  # tied weight
        return self.c(h)


class TiedEmbedding(nn.Module):
    def __init__(self, vocab=7, d=4):
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.mix = nn.Linear(d, d)

    def forward(self, ids):
        h = torch.tanh(self.mix(self.emb(ids))).mean(1)
        return h @ self.emb.weight.T  # logits over the vocabulary, tied


class MultiOut(nn.Module):
    """Outputs of shape (n, 2, 3), NTK-parameterized dense layers and GroupNorm."""

    def __init__(self, d=5, h=8):
        super().__init__()
        self.l1 = DenseNTK(d, h, w_std=1.5, b_std=0.1)
        self.gn = nn.GroupNorm(2, h)
        self.l2 = DenseNTK(h, 6, w_std=1.0, b_std=None)
        for p in self.parameters():
            nn.init.normal_(p)

    def forward(self, x):
        h = torch.erf(self.gn(self.l1(x)))
        return self.l2(h).reshape(-1, 2, 3)


def _randomize_bn(model):
    g = torch.Generator().manual_seed(3)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.3)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            with torch.no_grad():
                m.weight.copy_(torch.randn(m.num_features, generator=g))
                m.bias.copy_(torch.randn(m.num_features, generator=g))
    return model


def make(name: str, dtype=torch.float64):
    """``(model, x1, x2)`` for a zoo entry; ``model`` may be ``(f, params)``.

    Everything is drawn in float64 and then cast, so both dtypes see the same numbers.
    """
    model, x1, x2 = _make64(name)
    if isinstance(model, tuple):
        model = (model[0], {k: v.to(dtype) for k, v in model[1].items()})
    else:
        model = model.to(dtype)
    cast = (lambda t: t.to(dtype)) if x1.is_floating_point() else (lambda t: t)
    return model, cast(x1), cast(x2)


def _make64(name: str):
    dtype = torch.float64
    torch.manual_seed(0)
    if name == "mlp":
        return MLP().to(dtype), torch.randn(5, 6, dtype=dtype), torch.randn(4, 6, dtype=dtype)
    if name == "cnn":
        return (
            CNN().to(dtype),
            torch.randn(3, 2, 8, 8, dtype=dtype),
            torch.randn(2, 2, 8, 8, dtype=dtype),
        )
    if name == "resblock":
        m = _randomize_bn(ResBlock().to(dtype)).eval()
        return m, torch.randn(3, 3, 5, 5, dtype=dtype), torch.randn(2, 3, 5, 5, dtype=dtype)
    if name == "attention":
        m = AttentionBlock().to(dtype).eval()
        x1 = torch.randint(0, 11, (3, 5))
        x1[0, -1] = 0  # padding token
        return m, x1, torch.randint(0, 11, (2, 5))
    if name == "tied":
        return Tied().to(dtype), torch.randn(3, 5, dtype=dtype), torch.randn(2, 5, dtype=dtype)
    if name == "tied_embedding":
        return TiedEmbedding().to(dtype), torch.randint(0, 7, (3, 4)), torch.randint(0, 7, (2, 4))
    if name == "multiout":
        return MultiOut().to(dtype), torch.randn(4, 5, dtype=dtype), torch.randn(3, 5, dtype=dtype)
    if name == "function":
        g = torch.Generator().manual_seed(1)
        params = {
            "w": torch.randn(4, 3, generator=g, dtype=dtype),
            "v": torch.randn(2, 4, generator=g, dtype=dtype),
        }

        def f(p, x):
            return torch.sin(x @ p["w"].T) @ p["v"].T + (x**2).sum(-1, keepdim=True) * p["v"][:, 0]

        return (f, params), torch.randn(3, 3, dtype=dtype), torch.randn(2, 3, dtype=dtype)
    raise KeyError(name)


ZOO = ["mlp", "cnn", "resblock", "attention", "tied", "tied_embedding", "multiout", "function"]
