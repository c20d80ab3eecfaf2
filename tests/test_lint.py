"""The code keeps the lint it is configured for ([tool.ruff] in pyproject.toml): pyflakes,
pycodestyle, import sorting and lines of at most 110 characters (issue 16, §7)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_ruff_check_passes():
    pytest.importorskip("ruff", reason="ruff is in the test extra: pip install -e '.[test]'")
    done = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "."], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, ("ruff check . found problems (`python -m ruff check --fix .` sorts "
                                  "imports; wrap long lines by hand):\n" + done.stdout + done.stderr)
