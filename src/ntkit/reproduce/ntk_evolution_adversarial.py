"""Loo et al. 2022 at small scale: the empirical NTK under standard and adversarial training.

Claim reproduced: under adversarial (PGD) training the empirical NTK
moves to a different kernel than under standard training, and it settles (its velocity
falls) earlier.

Set-up: a ReLU MLP ``64 -> 256 -> 256 -> 10`` (PyTorch's default initialisation) on 1000
bundled digits (standardised pixels), minibatch SGD with momentum on cross-entropy, from the
same initialisation twice: on clean inputs, and on L-infinity PGD inputs (``eps = 0.5``
standard deviations per pixel). An :class:`~ntkit.analysis.NTKTracker` records the trace NTK
on 100 fixed training digits every ``every`` steps: centered kernel distance from the
initial kernel, and kernel velocity (distance between consecutive records per step).
"Settling" is measured by the step where the distance from init first reaches 90% of its
final value (``t90``, as a fraction of training) and by the late velocity relative to the
peak velocity.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ntkit.analysis import NTKTracker, kernel_distance
from ntkit.attacks import pgd
from ntkit.datasets import load_digits
from ntkit.report.sections import Figure, Section, figure_png

NAME = "ntk-evolution-adversarial"
TITLE = "NTK evolution under adversarial training (Loo et al. 2022)"
EPS = 0.5


def _model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(64, 256),
        torch.nn.ReLU(),
        torch.nn.Linear(256, 256),
        torch.nn.ReLU(),
        torch.nn.Linear(256, 10),
    )


def _accuracy(model, x, labels, *, attack_steps: int = 0) -> float:
    if attack_steps:
        x = pgd(model, x, labels, eps=EPS, steps=attack_steps)
    with torch.no_grad():
        return float((model(x).argmax(1) == labels).float().mean())


def _train(adversarial, data, probe, probe_labels, *, epochs, every, attack_steps, seed, order):
    model = _model(seed)
    tracker = NTKTracker(model, probe, every=every, mode="trace", labels=probe_labels)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    gen = torch.Generator().manual_seed(seed + 1 + order)
    x, labels = data.x_train.float(), data.labels_train
    step = 0
    for _ in range(epochs):
        order = torch.randperm(x.shape[0], generator=gen)
        for batch in order.split(100):
            xb, yb = x[batch], labels[batch]
            if adversarial:
                xb = pgd(model, xb, yb, eps=EPS, steps=attack_steps)
            opt.zero_grad()
            F.cross_entropy(model(xb), yb).backward()
            opt.step()
            step += 1
            tracker.step(step)
    return model, tracker


def _settling(tracker) -> tuple[float, float]:
    """(t90 as a fraction of training, late velocity / peak velocity)."""
    steps = np.asarray(tracker.history["step"], dtype=float)
    dist = np.asarray(tracker.history["distance"])
    vel = np.asarray(tracker.history["velocity"][1:])
    t90 = steps[np.argmax(dist >= 0.9 * dist[-1])] / steps[-1]
    late = vel[int(0.75 * len(vel)) :].mean()
    return float(t90), float(late / vel.max())


def run(quick: bool = False, seed: int = 0) -> tuple[list[Section], dict[str, float]]:
    """Run the experiment; return report sections and the headline numbers."""
    import matplotlib.pyplot as plt

    data = load_digits(1000, 500, seed=seed)
    probe, probe_labels = data.x_train[:100].float(), data.labels_train[:100]
    epochs, every, attack_steps = (12, 10, 3) if quick else (30, 10, 7)
    xt, lt = data.x_test.float(), data.labels_test
    settings = dict(epochs=epochs, every=every, attack_steps=attack_steps, seed=seed)
    runs = {
        adversarial: _train(adversarial, data, probe, probe_labels, order=0, **settings)
        for adversarial in (False, True)
    }
    # reference for "a different kernel": standard training from the same initialisation
    # with another minibatch order (the SGD-noise scale of kernel differences)
    _, other = _train(False, data, probe, probe_labels, order=1, **settings)
    final = {key: run[1].kernel() for key, run in runs.items()}
    final_gap = kernel_distance(final[False], final[True])
    noise_gap = kernel_distance(final[False], other.kernel())
    results = {}
    rows = []
    for adversarial, label in ((False, "standard"), (True, "adversarial")):
        model, tracker = runs[adversarial]
        t90, late = _settling(tracker)
        clean = _accuracy(model, xt, lt)
        robust = _accuracy(model, xt, lt, attack_steps=10)
        dist = tracker.history["distance"][-1]
        results[f"{label}: final distance from init"] = dist
        results[f"{label}: t90 (fraction of training)"] = t90
        results[f"{label}: late / peak velocity"] = late
        results[f"{label}: clean test accuracy"] = clean
        results[f"{label}: PGD test accuracy"] = robust
        rows.append(
            [label, f"{dist:.3f}", f"{t90:.2f}", f"{late:.3f}", f"{clean:.3f}", f"{robust:.3f}"]
        )
    results["distance between the standard and adversarial final kernels"] = final_gap
    results["distance between two standard final kernels (minibatch orders)"] = noise_gap

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for adversarial, label in ((False, "standard"), (True, "adversarial (PGD)")):
        h = runs[adversarial][1].history
        axes[0].plot(h["step"], h["distance"], "o-", ms=2, label=label)
        axes[1].semilogy(h["step"][1:], h["velocity"][1:], "-", label=label)
    axes[0].set_ylabel("centered kernel distance from init")
    axes[1].set_ylabel("kernel velocity (distance / step)")
    for ax in axes:
        ax.set_xlabel("SGD step")
        ax.legend(fontsize=8)
    section = Section(
        title=TITLE,
        paragraphs=[
            f"ReLU MLP 64-256-256-10 on {data.x_train.shape[0]} digits, {epochs} epochs of "
            f"SGD (batch 100, lr 0.02, momentum 0.9) from one initialisation, on clean inputs "
            f"and on L-infinity PGD inputs (eps {EPS}, {attack_steps} steps); trace NTK on "
            f"100 training digits every {every} steps. Robust accuracy: 10-step PGD on "
            f"{xt.shape[0]} test digits.",
            f"Centered distance between the standard and adversarial final kernels: "
            f"{final_gap:.3f}; between two standard runs from the same initialisation with "
            f"different minibatch orders: {noise_gap:.2e}. t90: the "
            "fraction of training after which the kernel's distance from init first reaches "
            "90% of its final value (smaller = settles earlier).",
        ],
        table_header=[
            "training",
            "final distance from init",
            "t90",
            "late / peak velocity",
            "clean accuracy",
            "PGD accuracy",
        ],
        table_rows=rows,
        figures=[Figure("Kernel distance from init and kernel velocity.", figure_png(fig))],
    )
    return [section], results
