"""What every command-line entry point shares: bad input becomes one line on stderr and exit code 2."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path


def child_env(root: Path) -> dict[str, str]:
    """Environment for a child command of this repo: `root` first on PYTHONPATH, the caller's entries kept
    (wheels installed with --target, as on the GPU machine, must stay importable)."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))}


def one_line(error: BaseException) -> str:
    """The error's message as one line. An error re-raised from a DataLoader worker carries the worker's
    whole traceback in its message; its last line is the original message."""
    message = str(error)
    if "Original Traceback" in message:
        last = message.strip().splitlines()[-1]
        message = last.split(": ", 1)[1] if ": " in last else last
    return " ".join(message.split("\n"))


def run_cli(prog: str, main: Callable[[], int]) -> int:
    """Run `main`; a ValueError/FileNotFoundError becomes one line on stderr and exit code 2."""
    try:
        return main()
    except (ValueError, FileNotFoundError) as error:
        print(f"{prog}: error: {one_line(error)}", file=sys.stderr)
        return 2
