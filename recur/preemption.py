"""SIGTERM / SIGUSR1 (slurm's preemption warning) ask training to checkpoint at the end of the step and exit 0.

`install()` runs first thing in train.py, before the slow imports and data preparation, so a signal that
arrives during start-up is remembered instead of killing the process with Python's default action.
"""

from __future__ import annotations

import signal

PREEMPTION_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
_received: list[int] = []


def _remember(signum: int, frame) -> None:
    _received.append(signum)


def install() -> None:
    for sig in PREEMPTION_SIGNALS:
        signal.signal(sig, _remember)


class PreemptionFlag:
    """`raised` is the first preemption signal received since install() (or since this flag was made)."""

    def __init__(self) -> None:
        install()

    @property
    def raised(self) -> int | None:
        return _received[0] if _received else None
