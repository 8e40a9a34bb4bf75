"""Shared fixtures. The real data sets live outside the repo; tests find them through the same
environment variables the CLI uses (set by .ci/run), falling back to the workspace's ../shared."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"


def _find(env: str, fallback: Path, probe: str) -> Path:
    p = Path(os.environ[env]) if os.environ.get(env) else fallback
    if not (p / probe).exists():
        pytest.skip(f"{env} not set and {fallback} absent: the real data set is not on this machine")
    return p


@pytest.fixture(scope="session")
def poetry_dir() -> Path:
    return _find("TIANCI_POETRY_SOURCE", SHARED / "chinese-poetry", "宋词")


@pytest.fixture(scope="session")
def cipu_dir() -> Path:
    return _find("TIANCI_CIPU_SOURCE", SHARED / "couyun" / "ci_pu", "ci_index.json")


@pytest.fixture(scope="session")
def rhyme_dir() -> Path:
    return _find("TIANCI_RHYME_SOURCE", SHARED / "chinese_word_rhyme" / "data", "Cilin_Rhyme.json")
