"""Empirical NTK: every implementation and mode next to the plain ``torch.func`` recipe.

Cases (float32, ``x2 = None``):

- ``mlp``: NTK-parameterized MLP 784-512-512-10 with ReLU (ntkit's ``DenseNTK``), n = 256;
- ``cnn``: a small ResNet-style CNN on 32x32x3 (conv stem, two residual blocks with
  eval-mode BatchNorm, a strided conv, global average pooling, linear readout), n = 64.

Baseline ("recipe"), run in the same process: ``vmap(jacrev(f))`` per-sample Jacobians, then
``einsum`` (``Naf,Mbf->NMab`` for full, ``Naf,Maf->NM`` for trace, ``Naf,Nbf->Nab`` for the
diagonal; the Jacobian of the summed logits for sum_logits).

Time: best of several calls after a warm-up, in this process. Peak memory: on CUDA
``torch.cuda.max_memory_allocated`` minus the memory allocated before the call; on the CPU
each measurement runs in a fresh subprocess, warmed up on two inputs, then the kernel of
the full batch is computed once and the peak resident set size (``VmHWM`` after resetting
it through ``/proc/self/clear_refs``) minus the resident size before the call is reported.

Usage:
    python benchmarks/empirical_ntk.py [--device cpu|cuda] [--cases mlp,cnn] [--no-memory]
        [--threads N] [--out docs/benchmarks/empirical_ntk.md]
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import subprocess
import sys
import time

import torch
import torch.nn.functional as F
from _measure import machine
from torch import nn
from torch.func import functional_call, jacrev, vmap

import ntkit as nk
import ntkit.empirical.api as nk_api
from ntkit import layers as L

IMPLS = ["recipe", "jacobian", "ntvp", "structured", "auto"]
MODES = ["full", "trace", "sum_logits", "diagonal"]


def build_mlp():
    net = L.serial(
        L.Dense(512, w_std=1.4, b_std=0.1),
        L.ReLU(),
        L.Dense(512, w_std=1.4, b_std=0.1),
        L.ReLU(),
        L.Dense(10, w_std=1.4, b_std=0.1),
    )
    return net.module((784,), seed=0, dtype=torch.float32), (784,), 256


class _Block(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)

    def forward(self, x):
        h = F.relu(self.bn1(self.conv1(x)))
        return F.relu(x + self.bn2(self.conv2(h)))


class SmallResNet(nn.Module):
    def __init__(self, width: int = 16, n_out: int = 10):
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, padding=1)
        self.block1 = _Block(width)
        self.down = nn.Conv2d(width, 2 * width, 3, stride=2, padding=1)
        self.block2 = _Block(2 * width)
        self.fc = nn.Linear(2 * width, n_out)

    def forward(self, x):
        h = self.block1(F.relu(self.stem(x)))
        h = self.block2(F.relu(self.down(h)))
        return self.fc(h.mean((2, 3)))


def build_cnn():
    torch.manual_seed(0)
    return SmallResNet().eval(), (3, 32, 32), 64


CASES = {"mlp": build_mlp, "cnn": build_cnn}


def recipe(model, x, mode):
    """The plain torch.func recipe (vmap of jacrev, then einsum), x2 = x1."""
    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = {k: v.detach() for k, v in model.named_buffers()}

    def f(p, xi):
        return functional_call(model, (p, buffers), (xi.unsqueeze(0),)).squeeze(0)

    if mode == "sum_logits":

        def g(p, xi):
            out = f(p, xi)
            return (out.sum() / math.sqrt(out.numel())).unsqueeze(0)

        fn = g
    else:
        fn = f
    jac = vmap(jacrev(fn), (None, 0))(params, x)
    jac = [j.flatten(2) for j in jac.values()]
    eq = {
        "full": "Naf,Mbf->NMab",
        "trace": "Naf,Maf->NM",
        "sum_logits": "Naf,Maf->NM",
        "diagonal": "Naf,Nbf->Nab",
    }[mode]
    return sum(torch.einsum(eq, j, j) for j in jac)


def kernel_fn(model, impl, mode):
    if impl == "recipe":
        return lambda x: recipe(model, x, mode)
    return lambda x: nk.empirical_ntk(model, x, mode=mode, implementation=impl)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn, x, device, budget_s: float = 6.0, max_repeats: int = 5) -> float:
    """Best time of repeated calls after one warm-up call.

    ``max_repeats`` calls, or as many as fit in about a second for calls under 0.2 s (at most
    50): millisecond calls need many repeats for a stable minimum on a shared machine.
    """
    _sync(device)
    t0 = time.perf_counter()
    fn(x)
    _sync(device)
    first = time.perf_counter() - t0
    best = math.inf
    if first > 5 * budget_s:  # long runs: one-time costs are negligible, do not repeat
        return first
    repeats = 1 if first > budget_s else max_repeats
    if first < 0.2:
        repeats = max(repeats, min(50, int(1.0 / max(first, 1e-3))))
    spent = 0.0
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(x)
        _sync(device)
        dt = time.perf_counter() - t0
        best = min(best, dt)
        spent += dt
        if spent > budget_s:
            break
    return best


def _status_kib(key: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{key} not in /proc/self/status")


def measure_memory_here(case: str, impl: str, mode: str, device: torch.device) -> int:
    """Peak extra bytes of one kernel computation (see module docstring)."""
    model, in_shape, n = CASES[case]()
    model = model.to(device)
    x = torch.randn(n, *in_shape, generator=torch.Generator().manual_seed(1)).to(device)
    fn = kernel_fn(model, impl, mode)
    fn(x[:2])  # warm-up: imports, one-time initialisation
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        out = fn(x)
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) - before
        del out
        return int(peak)
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")  # reset VmHWM to the current RSS
    before = _status_kib("VmRSS")
    out = fn(x)
    peak = _status_kib("VmHWM") - before
    del out
    return int(peak * 1024)


def measure_memory(case, impl, mode, device) -> int | None:
    if device.type == "cuda":
        return measure_memory_here(case, impl, mode, device)
    cmd = [sys.executable, __file__, "--memory-of", case, impl, mode, "--device", str(device)]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        print(res.stderr[-2000:], file=sys.stderr)
        return None
    return int(json.loads(res.stdout.strip().splitlines()[-1])["peak"])


def _mib(b):
    return "-" if b is None else f"{b / 2**20:,.0f}"


def run(device: torch.device, cases: list[str], memory: bool) -> list[dict]:
    rows = []
    for case in cases:
        model, in_shape, n = CASES[case]()
        model = model.to(device)
        x = torch.randn(n, *in_shape, generator=torch.Generator().manual_seed(1)).to(device)
        n_params = sum(p.numel() for p in model.parameters())
        print(f"\n== {case}: n={n}, params={n_params:,}, device={device} ==", flush=True)
        for mode in MODES:
            for impl in IMPLS:
                chosen, ests = [], []
                real_choose, real_estimate = nk_api.choose, nk_api.estimate

                def spy_choose(est, real=real_choose, chosen=chosen):
                    chosen.append(real(est))
                    return chosen[-1]

                def spy_estimate(*a, real=real_estimate, ests=ests, **kw):
                    ests.append(real(*a, **kw))
                    return ests[-1]

                nk_api.choose, nk_api.estimate = spy_choose, spy_estimate
                try:
                    t = time_call(kernel_fn(model, impl, mode), x, device)
                finally:
                    nk_api.choose, nk_api.estimate = real_choose, real_estimate
                mem = measure_memory(case, impl, mode, device) if memory else None
                used = chosen[0] if chosen else impl
                est = ests[0][used].peak_bytes if ests and used in ests[0] else None
                row = {
                    "case": case,
                    "mode": mode,
                    "impl": impl,
                    "seconds": t,
                    "peak_bytes": mem,
                    "planned_bytes": est,
                    "chose": chosen[0] if chosen else "",
                }
                rows.append(row)
                extra = f" (chose {row['chose']})" if impl == "auto" else ""
                print(
                    f"{case:4s} {mode:10s} {impl:10s} {t:9.4f} s  {_mib(mem):>8s} MiB "
                    f"(planned {_mib(est)} MiB){extra}",
                    flush=True,
                )
    return rows


def summary(rows: list[dict]) -> list[str]:
    by = {(r["case"], r["mode"], r["impl"]): r for r in rows}
    lines = []
    for case in sorted({r["case"] for r in rows}):
        if not {"structured", "recipe", "auto"} <= set(IMPLS):
            break
        s_full = by[(case, "full", "structured")]
        rec = by[(case, "full", "recipe")]
        speed = rec["seconds"] / s_full["seconds"]
        lines.append(
            f"- {case}: structured full is "
            + (f"{speed:.0f}x faster than" if speed >= 1 else f"{1 / speed:.2f}x slower than")
            + " the torch.func recipe"
            + (
                f", peak memory {_mib(s_full['peak_bytes'])} vs {_mib(rec['peak_bytes'])} MiB"
                if s_full["peak_bytes"] is not None and rec["peak_bytes"] is not None
                else ""
            )
            + "."
        )
        best_full = min(by[(case, "full", i)]["seconds"] for i in IMPLS if i != "recipe")
        best_sl = min(by[(case, "sum_logits", i)]["seconds"] for i in IMPLS if i != "recipe")
        lines.append(
            f"- {case}: sum_logits is {best_full / best_sl:.1f}x faster than full "
            "(best implementation of each)."
        )
        worst = 0.0
        for mode in MODES:
            best = min(by[(case, mode, i)]["seconds"] for i in IMPLS if i not in ("recipe", "auto"))
            ratio = by[(case, mode, "auto")]["seconds"] / best
            worst = max(worst, ratio)
        lines.append(f"- {case}: auto / best implementation, worst mode: {worst:.2f}x.")
    return lines


def markdown(rows: list[dict], device: torch.device) -> str:
    where = machine(str(device))
    out = [
        "# Empirical NTK benchmark",
        "",
        f"`python benchmarks/empirical_ntk.py --device {device.type}"
        f"{' --threads ' + str(torch.get_num_threads()) if device.type == 'cpu' else ''}` "
        f"on {where}; torch "
        f"{torch.__version__}; {datetime.date.today().isoformat()}. float32, x2 = None.",
        "Time: best of repeated calls after a warm-up (seconds; calls over 30 s run once). "
        "Peak: extra memory of one call (MiB; CPU: resident-set peak in a fresh subprocess; "
        "CUDA: max_memory_allocated); in brackets the memory ntkit planned for it.",
        "`recipe` is the plain torch.func recipe (vmap(jacrev) then einsum) in the same "
        "process; `auto (->x)` names the implementation the cost model chose.",
        "",
        "| case | mode | " + " | ".join(IMPLS) + " |",
        "|---|---|" + "---|" * len(IMPLS),
    ]
    by = {(r["case"], r["mode"], r["impl"]): r for r in rows}
    for case in dict.fromkeys(r["case"] for r in rows):
        for mode in MODES:
            cells = []
            for impl in IMPLS:
                r = by[(case, mode, impl)]
                name = f" (->{r['chose']})" if impl == "auto" else ""
                plan = f" ({_mib(r['planned_bytes'])})" if r.get("planned_bytes") else ""
                cells.append(f"{r['seconds']:.3f} s / {_mib(r['peak_bytes'])}{plan} MiB{name}")
            out.append(f"| {case} | {mode} | " + " | ".join(cells) + " |")
    out += ["", *summary(rows), ""]
    return "\n".join(out)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--cases", default="mlp,cnn")
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--out", default=None, help="write the markdown table here")
    ap.add_argument("--memory-of", nargs=3, metavar=("CASE", "IMPL", "MODE"))
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--impls", default=",".join(IMPLS), help="subset, for quick runs")
    args = ap.parse_args(argv)
    IMPLS[:] = [i for i in IMPLS if i in args.impls.split(",")]
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.memory_of:
        case, impl, mode = args.memory_of
        print(json.dumps({"peak": measure_memory_here(case, impl, mode, device)}))
        return
    rows = run(device, args.cases.split(","), not args.no_memory)
    md = markdown(rows, device)
    print("\n" + md)
    if args.out:
        os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
        with open(args.out, "w") as fh:
            fh.write(md)


if __name__ == "__main__":
    main()
