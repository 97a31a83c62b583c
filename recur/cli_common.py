"""What every command-line entry point shares: bad input becomes one line on stderr and exit code 2."""

from __future__ import annotations

import sys
from typing import Callable


def run_cli(prog: str, main: Callable[[], int]) -> int:
    """Run `main`; a ValueError/FileNotFoundError becomes one line on stderr and exit code 2."""
    try:
        return main()
    except (ValueError, FileNotFoundError) as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 2
