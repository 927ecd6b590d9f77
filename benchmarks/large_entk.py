"""Projected empirical NTKs of real-size models, against projecting per-sample gradients.

Cases (float32, random init, ``mode="trace"``, ``dim = 4096`` by default):

- ``resnet18``: the ResNet-18 of torchvision's ``resnet18(num_classes=10)`` (7x7 stride-2
  stem, max pooling, four stages of two basic blocks, eval-mode BatchNorm; 11.2M
  parameters), written out here because torchvision does not install beside the pinned
  CPU torch; inputs 3x32x32.
- ``transformer``: a small pre-LayerNorm transformer encoder written from ``nn.Linear``
  projections (as Hugging Face models are): token embedding + learned positions, 4 layers of
  width 256 with 4 heads and a 1024-wide feed-forward, mean pooling, a linear readout to 10
  classes; sequences of 32 tokens from a vocabulary of 4096.
- ``torch_transformer`` (not run by default): the same encoder from PyTorch's
  ``nn.TransformerEncoder``, whose ``nn.MultiheadAttention`` packs its projections into one
  ``in_proj_weight`` (projected through the dense per-parameter fallback).

Measured in this process, one after the other:

- ``ntkit``: ``nk.ntk_features(model, x, dim=4096, mode="trace", max_memory=...)`` on n
  inputs: seconds, seconds per input, peak resident memory above the start.
- ``baseline``: per-sample gradients of all 10 outputs materialised for a chunk of
  ``--baseline-n`` inputs (``vmap(jacrev)``; a comma list runs several chunk sizes),
  multiplied by a seeded random sign matrix generated block by block (it cannot be stored:
  ``P x dim`` entries). Every block costs the same (draw, convert, multiply), so
  ``--baseline-blocks`` of them are run and the time is scaled to all ``P / 2^14`` blocks
  (said in the table); the gradients are timed in full.
- ``trak``: TRAK's ``BasicProjector`` (``traker``, Rademacher, CPU) on the same
  materialised gradients; it regenerates its ``P x block`` matrix per block, so only
  ``--trak-blocks`` of its blocks are timed and the time is scaled to all blocks (said in the
  table).
- error: ``phi phi^T`` on the first ``--exact-n`` inputs against the exact trace NTK
  (``nk.empirical_ntk(..., mode="trace")``), relative Frobenius error and the largest
  relative error of a diagonal entry.

Peak memory: ``VmHWM`` of ``/proc/self/status`` after resetting it (``/proc/self/clear_refs``)
minus the resident size before the measured call.

Usage:
    python benchmarks/large_entk.py [--cases resnet18,transformer] [--n 2000] [--dim 4096]
        [--baseline-n 4] [--exact-n 100] [--threads 2] [--max-memory-gib 3.5]
        [--out docs/benchmarks/large_entk.md]
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import math
import time

import torch
import torch.nn.functional as F
from _measure import machine, reset_peak_rss, status_bytes
from torch import nn
from torch.func import functional_call, jacrev, vmap

import ntkit as nk

# --------------------------------------------------------------------------- models


class BasicBlock(nn.Module):
    """torchvision's ResNet basic block (two 3x3 convolutions, BatchNorm, identity/1x1 skip)."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.downsample = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x):
        h = F.relu(self.bn1(self.conv1(x)))
        h = self.bn2(self.conv2(h))
        skip = x if self.downsample is None else self.downsample(x)
        return F.relu(h + skip)


class ResNet18(nn.Module):
    """The architecture of ``torchvision.models.resnet18(num_classes=...)``."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        widths, c_in, stages = (64, 128, 256, 512), 64, []
        for i, w in enumerate(widths):
            stride = 1 if i == 0 else 2
            stages.append(nn.Sequential(BasicBlock(c_in, w, stride), BasicBlock(w, w, 1)))
            c_in = w
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.fc = nn.Linear(512, num_classes)
        for m in self.modules():  # torchvision's initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        h = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        h = self.layer4(self.layer3(self.layer2(self.layer1(h))))
        return self.fc(h.mean((2, 3)))


class EncoderLayer(nn.Module):
    def __init__(self, d: int, heads: int, ff: int):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
        self.ff1, self.ff2 = nn.Linear(d, ff), nn.Linear(ff, d)

    def forward(self, x):
        n, s, d = x.shape
        h = self.ln1(x)

        def split(t):
            return t.reshape(n, s, self.heads, d // self.heads).transpose(1, 2)

        q, k, v = split(self.q(h)), split(self.k(h)), split(self.v(h))
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d // self.heads), -1)
        x = x + self.o((att @ v).transpose(1, 2).reshape(n, s, d))
        return x + self.ff2(F.gelu(self.ff1(self.ln2(x))))


class Encoder(nn.Module):
    def __init__(self, vocab=4096, seq=32, d=256, heads=4, ff=1024, layers=4, n_out=10):
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(torch.randn(seq, d) * 0.02)
        self.layers = nn.ModuleList(EncoderLayer(d, heads, ff) for _ in range(layers))
        self.ln = nn.LayerNorm(d)
        self.head = nn.Linear(d, n_out)

    def forward(self, ids):
        h = self.emb(ids) + self.pos
        for layer in self.layers:
            h = layer(h)
        return self.head(self.ln(h).mean(1))


class TorchEncoder(nn.Module):
    """The same encoder from ``nn.TransformerEncoder`` (``nn.MultiheadAttention`` keeps its
    query/key/value weights in one packed ``in_proj_weight`` applied by a functional call,
    so ntkit projects those per-sample gradients by its dense fallback)."""

    def __init__(self, vocab=4096, seq=32, d=256, heads=4, ff=1024, layers=4, n_out=10):
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(torch.randn(seq, d) * 0.02)
        layer = nn.TransformerEncoderLayer(
            d, heads, ff, dropout=0.0, activation="gelu", batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(
            layer, layers, norm=nn.LayerNorm(d), enable_nested_tensor=False
        )
        self.head = nn.Linear(d, n_out)

    def forward(self, ids):
        return self.head(self.encoder(self.emb(ids) + self.pos).mean(1))


def build(name: str, n: int):
    torch.manual_seed(0)
    if name == "resnet18":
        return ResNet18().eval(), torch.randn(n, 3, 32, 32)
    if name == "transformer":
        return Encoder().eval(), torch.randint(0, 4096, (n, 32))
    if name == "torch_transformer":
        return TorchEncoder().eval(), torch.randint(0, 4096, (n, 32))
    raise KeyError(name)


# --------------------------------------------------------------------------- memory


def measure(fn):
    """``(result, seconds, peak bytes above the resident size before the call)``."""
    import gc

    gc.collect()
    reset_peak_rss()
    base = status_bytes("VmRSS")
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0, max(status_bytes("VmHWM") - base, 0)


# --------------------------------------------------------------------------- baselines


def per_sample_gradients(model, x):
    """``(c * O, P)``: every output's gradient for every input of the chunk."""
    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = {k: v.detach() for k, v in model.named_buffers()}

    def f(p, xi):
        return functional_call(model, (p, buffers), (xi.unsqueeze(0),)).reshape(-1)

    jac = vmap(jacrev(f), (None, 0))(params, x)
    c, o = x.shape[0], next(iter(jac.values())).shape[1]
    return torch.cat([j.reshape(c * o, -1) for j in jac.values()], 1)


def _signs(seed: int, block: int, dim: int, width: int) -> torch.Tensor:
    s = int.from_bytes(hashlib.sha256(f"{seed}|{block}".encode()).digest()[:8], "little") >> 1
    r = torch.randint(
        0, 2, (dim, width), generator=torch.Generator().manual_seed(s), dtype=torch.int8
    )
    return r.float().mul_(2).sub_(1)


def baseline_seconds(model, x, dim: int, blocks: int, block: int = 2**14, seed: int = 0):
    """Per-sample gradients of one chunk times a sign matrix generated block by block.

    The gradients ``(c O, P)`` are materialised in full; the ``P / block`` blocks of the
    ``(dim, P)`` sign matrix cost the same each (draw, convert, multiply), so ``blocks`` of
    them are run and their time is scaled to all blocks.

    Returns:
        ``(gradient seconds, projection seconds scaled to all blocks, all blocks)``.
    """
    t0 = time.perf_counter()
    grads = per_sample_gradients(model, x)  # (c O, P)
    t_grad = time.perf_counter() - t0
    total = math.ceil(grads.shape[1] / block)
    acc = torch.zeros(grads.shape[0], dim)
    t0 = time.perf_counter()
    for b in range(min(blocks, total)):
        c0 = b * block
        r = _signs(seed, b, dim, min(block, grads.shape[1] - c0))
        acc += grads[:, c0 : c0 + block] @ r.T
    t_proj = (time.perf_counter() - t0) * total / min(blocks, total)
    return t_grad, t_proj, total


def trak_seconds(model, x, dim: int, blocks: int) -> tuple[float, float, int]:
    """TRAK BasicProjector on materialised gradients: ``(grad s, projection s, all blocks)``.

    Only ``blocks`` of its blocks are run; the projection time is scaled to all of them.
    """
    from trak.projectors import BasicProjector, ProjectionType

    t0 = time.perf_counter()
    grads = per_sample_gradients(model, x)
    t_grad = time.perf_counter() - t0
    block_size = 16
    proj = BasicProjector(
        grads.shape[1], dim, 0, ProjectionType.rademacher, "cpu", block_size=block_size
    )
    total = proj.num_blocks
    proj.num_blocks = blocks
    proj.proj_dim = blocks * block_size
    t0 = time.perf_counter()
    proj.project(grads, model_id=0)
    return t_grad, (time.perf_counter() - t0) * total / blocks, total


# --------------------------------------------------------------------------- main


def run_case(name, args, lines):
    budget = int(args.max_memory_gib * 2**30)
    model, x = build(name, args.n)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"[{name}] P = {n_params:,}, n = {args.n}, dim = {args.dim}", flush=True)
    phi, t_ours, m_ours = measure(
        lambda: nk.ntk_features(
            model, x, dim=args.dim, mode="trace", max_memory=budget, progress=False
        )
    )
    print(
        f"  ntkit: {t_ours:.1f} s ({t_ours / args.n:.3f} s/input), peak {m_ours / 2**30:.2f} GiB",
        flush=True,
    )
    m = min(args.exact_n, args.n)
    exact, t_exact, _ = measure(
        lambda: nk.empirical_ntk(model, x[:m], mode="trace", max_memory=budget)
    )
    est = phi[:m] @ phi[:m].T
    err = float((est - exact).norm() / exact.norm())
    d_err = float(((est.diagonal() - exact.diagonal()).abs() / exact.diagonal()).max())
    # expected error of an ideal dense Gaussian projection: Var = (K_ij^2 + K_ii K_jj) / dim
    dg = exact.diagonal()
    ideal = float((exact**2 + dg[:, None] * dg[None, :]).sum().sqrt() / exact.norm())
    ideal /= math.sqrt(args.dim)
    print(
        f"  exact trace NTK of {m} inputs: {t_exact:.1f} s; rel. Frobenius error {err:.4f}, "
        f"largest diagonal error {d_err:.4f}; a dense Gaussian projection: {ideal:.4f} expected",
        flush=True,
    )
    ours = t_ours / args.n
    rows = [
        (
            name,
            "ntkit `ntk_features`",
            args.n,
            t_ours,
            m_ours,
            f"{err:.4f} (dense Gaussian: {ideal:.4f})",
            "1",
        )
    ]
    # the sign blocks are drawn once per chunk: bigger chunks amortise them (memory permitting)
    for c in (int(v) for v in str(args.baseline_n).split(",")):
        (t_g, t_p, total), _, m_base = measure(
            lambda c=c: baseline_seconds(model, x[:c], args.dim, args.baseline_blocks)
        )
        rate = (t_g + t_p) / c
        print(
            f"  baseline: gradients {t_g:.1f} s + projection {t_p:.1f} s (scaled from "
            f"{args.baseline_blocks} of {total} blocks) for {c} inputs = {rate:.1f} s/input, "
            f"peak {m_base / 2**30:.2f} GiB",
            flush=True,
        )
        rows.append(
            (
                name,
                f"per-sample gradients x sign blocks, chunk of {c} (scaled from "
                f"{args.baseline_blocks}/{total} blocks)",
                c,
                t_g + t_p,
                m_base,
                "-",
                f"{rate / ours:.0f}x slower",
            )
        )
    c = int(str(args.baseline_n).split(",")[0])
    if args.trak_blocks:
        try:
            (t_g, t_p, total), _, m_trak = measure(
                lambda: trak_seconds(model, x[:c], args.dim, args.trak_blocks)
            )
        except ImportError:
            print("  trak: traker is not installed", flush=True)
        else:
            rate = (t_g + t_p) / c
            print(
                f"  trak BasicProjector: gradients {t_g:.1f} s + projection {t_p:.1f} s "
                f"(scaled from {args.trak_blocks} of {total} blocks) for {c} inputs",
                flush=True,
            )
            rows.append(
                (
                    name,
                    f"TRAK BasicProjector (scaled from {args.trak_blocks}/{total} blocks)",
                    c,
                    t_g + t_p,
                    m_trak,
                    "-",
                    f"{rate / ours:.0f}x slower",
                )
            )
    for r in rows:
        lines.append(
            f"| {r[0]} | {r[1]} | {r[2]} | {r[3]:.1f} | {r[3] / r[2]:.3f} | "
            f"{r[4] / 2**30:.2f} | {r[5]} | {r[6]} |"
        )


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", default="resnet18,transformer")
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--dim", type=int, default=4096)
    ap.add_argument("--baseline-n", default="2", help="chunk sizes, e.g. 2,12")
    ap.add_argument("--baseline-blocks", type=int, default=16)
    ap.add_argument("--trak-blocks", type=int, default=4)
    ap.add_argument("--exact-n", type=int, default=100)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-memory-gib", type=float, default=3.5)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    lines = [
        f"Measured {datetime.date.today()} on {machine()} (a busy machine shared with other "
        "jobs: ratios come from the same process), float32, mode='trace', "
        f"dim={args.dim}, max_memory={args.max_memory_gib} GiB. GPU: not measured (no GPU).",
        "",
        f"| case | method | inputs | seconds | s / input | peak GiB | rel. error vs exact "
        f"(first {args.exact_n} inputs) | per input vs ntkit |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in args.cases.split(","):
        run_case(name, args, lines)
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(text)


if __name__ == "__main__":
    main()
