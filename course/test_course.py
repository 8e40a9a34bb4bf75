"""Execute every chapter of the course end to end, as a reader would, failing on any error.

Each chapter (a jupytext percent script) is converted to a notebook and run by nbclient in a fresh
kernel, in order; an exception in any cell, including an exercise check that does not hold, fails
that chapter. CI runs this in short mode:

    TIANCI_COURSE_FAST=1 python -m pytest -q course/test_course.py --durations=0

Not part of tests/ (and so not of `make test`): it needs the `course-run` extra and a few minutes.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

jupytext = pytest.importorskip("jupytext")
nbclient = pytest.importorskip("nbclient")

COURSE = Path(__file__).resolve().parent
CHAPTERS = sorted(p for p in COURSE.glob("[0-9][0-9]_*.py"))


def test_chapters_are_numbered_in_order():
    """A gap or a duplicate in the chapter numbers would silently drop a chapter from the course."""
    numbers = [int(p.name[:2]) for p in CHAPTERS]
    assert numbers == list(range(len(numbers))), numbers


def test_chapters_commit_no_outputs():
    """Chapters are kept as text: an .ipynb with outputs committed beside them is not reviewable."""
    import subprocess

    tracked = subprocess.run(["git", "ls-files", "*.ipynb"], cwd=COURSE, capture_output=True, text=True).stdout
    assert tracked.strip() == ""


@pytest.mark.parametrize("path", CHAPTERS, ids=[p.stem for p in CHAPTERS])
def test_chapter_runs(path: Path):
    """The chapter runs top to bottom in a fresh kernel and its exercise check passes."""
    nb = jupytext.read(path)
    client = nbclient.NotebookClient(nb, timeout=900, kernel_name="python3",
                                     resources={"metadata": {"path": str(COURSE)}})
    t0 = time.perf_counter()
    client.execute()
    print(f"{path.name}: {time.perf_counter() - t0:.1f}s")
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    text = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
    assert "正确 / correct" in text, f"{path.name}: no exercise check printed its verdict"
