"""The tree stays as `ruff check` and `ruff format` (configured in pyproject.toml) leave it."""

import subprocess
import sys

import pytest

from tests.train_helpers import REPO


@pytest.mark.parametrize("command", [["check"], ["format", "--check"]])
def test_ruff_is_clean(command):
    done = subprocess.run([sys.executable, "-m", "ruff", *command, str(REPO)], capture_output=True, text=True, cwd=REPO)
    fix = "ruff check --fix ." if command == ["check"] else "ruff format ."
    assert done.returncode == 0, f"ruff {' '.join(command)} failed (fix with `{fix}`):\n{done.stdout[-3000:]}"
