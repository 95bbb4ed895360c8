"""Where the real models and data live: ../shared/data beside the project (a missing file fails, never skips)."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = (ROOT / ".." / "shared" / "data").resolve()


def shared(rel: str) -> Path:
    """Path of a file under ../shared/data; fails the test with a clear message if it is absent."""
    path = SHARED / rel
    if not path.exists():
        pytest.fail(f"required real data {path} is missing: clone the project with ../shared beside it (see DATA.md)")
    return path
