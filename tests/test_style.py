"""STYLE.md's house rules, checked on the tree: ruff (I, UP, C90) and `mypy --strict`.

The rules and the complexity limit live in pyproject.toml; these tests fail with the findings.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.timeout(180)


def _check(*argv: str) -> None:
    proc = subprocess.run([sys.executable, "-m", *argv], cwd=ROOT, capture_output=True,
                          text=True, check=False)
    assert proc.returncode == 0, f"{' '.join(argv)} found:\n{proc.stdout}{proc.stderr}"


def test_ruff_passes_on_the_whole_tree() -> None:
    _check("ruff", "check", "--no-cache", "runnerd", "tests", "bench")


def test_mypy_strict_passes_on_runnerd(tmp_path: Path) -> None:
    _check("mypy", "--cache-dir", str(tmp_path / "mypy"), "runnerd")
