"""Waiting for something another thread or process does: poll it with a deadline, never sleep a
guessed time and assert (a loaded host makes any guess too short)."""

from __future__ import annotations

import time
from collections.abc import Callable


def until(
    predicate: Callable[[], object],
    seconds: float = 10.0,
    every: float = 0.02,
    between: Callable[[], object] | None = None,
) -> bool:
    """True as soon as `predicate()` is truthy; False if it is still falsy after `seconds`.
    `between` runs each round it is not (a knob turned again: a message sent while a port was
    still connecting is lost, as with any MIDI cable)."""
    deadline = time.monotonic() + seconds
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        if between is not None:
            between()
        time.sleep(every)
