"""Every ```python block of README.md and docs/**/*.md runs as written.

Each block is its own test (id ``FILE:LINE``), executed alone in a fresh namespace from a
temporary working directory, compiled so that a traceback points at the markdown file and
the line of the failing statement.
"""

import re
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
_FENCE = re.compile(r"^```(\S*)\s*$")


def python_blocks(path: Path) -> list[tuple[int, str]]:
    """``(first code line, source)`` of every ```python block of a markdown file."""
    blocks, lang, start, lines = [], None, 0, []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        fence = _FENCE.match(line.strip())
        if lang is None and fence:
            lang, start, lines = fence.group(1), number + 1, []
        elif lang is not None and line.strip() == "```":
            if lang == "python":
                blocks.append((start, "\n".join(lines)))
            lang = None
        elif lang is not None:
            lines.append(line)
    if lang is not None:
        raise ValueError(f"{path}: code block opened at line {start - 1} is never closed")
    return blocks


CASES = [
    pytest.param(path, start, src, id=f"{path.relative_to(ROOT)}:{start}")
    for path in DOCS
    for start, src in python_blocks(path)
]


def test_the_docs_have_python_blocks():
    assert len(CASES) >= 5


@pytest.mark.parametrize(("path", "start", "source"), CASES)
def test_doc_block_runs(path, start, source, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # blank lines in front: line numbers in tracebacks are the markdown file's
    code = compile("\n" * (start - 1) + source, str(path), "exec")
    dtype, threads = torch.get_default_dtype(), torch.get_num_threads()
    torch.manual_seed(0)
    try:
        exec(code, {"__name__": "__doc_block__"})
    except Exception as err:
        tb, line = err.__traceback__, start
        while tb is not None:  # the deepest frame that is the block's own code
            if tb.tb_frame.f_code.co_filename == str(path):
                line = tb.tb_lineno
            tb = tb.tb_next
        raise AssertionError(
            f"{path.relative_to(ROOT)}:{line} (```python block from line {start}): "
            f"{type(err).__name__}: {err}"
        ) from err
    finally:
        torch.set_default_dtype(dtype)
        torch.set_num_threads(threads)
        import matplotlib.pyplot as plt

        plt.close("all")


_OUTSIDE = re.compile(
    r"formula F\d|formulas? sheet|\(F\d\)|papers\.md|formulas\.md|DESIGN\.md|issue \d+|/work/"
)


def test_nothing_points_outside_the_repository():
    # the formula sheet, paper list, design notes and issue tracker of the project's
    # development are not part of the repository: users must not be sent there
    files = [
        *DOCS,
        *sorted((ROOT / "src").rglob("*.py")),
        *sorted((ROOT / "benchmarks").rglob("*.py")),
    ]
    hits = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in files
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)
        if _OUTSIDE.search(line)
    ]
    assert hits == []
