"""Small-scale reproductions of the seed papers' claims (``ntkit reproduce NAME``).

Each experiment module exposes ``NAME``, ``TITLE`` and ``run(quick, seed) -> (sections,
results)``; results are the headline numbers, sections go into an HTML page.
"""

from __future__ import annotations

from pathlib import Path

from ntkit.reproduce import (
    adversarial_features,
    complex_ntk,
    curves,
    label_aware,
    min_eigenvalue,
    ntk_convergence,
    ntk_evolution_adversarial,
    pntk,
    polynomial,
    sample_then_optimize,
    super_consistency,
)

EXPERIMENTS = {
    m.NAME: m
    for m in (
        ntk_convergence,
        pntk,
        min_eigenvalue,
        curves,
        polynomial,
        sample_then_optimize,
        super_consistency,
        ntk_evolution_adversarial,
        label_aware,
        complex_ntk,
        adversarial_features,
    )
}

__all__ = ["EXPERIMENTS", "reproduce"]


def reproduce(name: str, out_dir: Path | str | None = None, *, quick: bool = False, seed: int = 0):
    """Run experiment ``name``; write ``out_dir/NAME.html`` if given; return its results."""
    if name not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r}; known: {sorted(EXPERIMENTS)}.")
    exp = EXPERIMENTS[name]
    sections, results = exp.run(quick=quick, seed=seed)
    if out_dir is not None:
        from ntkit.report.html import write_report

        write_report(Path(out_dir) / f"{name}.html", exp.TITLE, sections)
    return results
