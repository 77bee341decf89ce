"""Waiting for something another thread or process does: poll it with a deadline, never sleep a
guessed time and assert (a loaded host makes any guess too short)."""

from __future__ import annotations

import time
from collections.abc import Callable


def until(predicate: Callable[[], object], seconds: float = 10.0, every: float = 0.02) -> bool:
    """True as soon as `predicate()` is truthy; False if it is still falsy after `seconds`."""
    deadline = time.monotonic() + seconds
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(every)
