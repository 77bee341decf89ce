"""Work that must not stall the music: run a piece at a time on the generation thread.

Encoding a prompt heard for the first time (T5) and encoding audio to continue from (EnCodec's
encoder) take from milliseconds to seconds. Done in one go on the generation thread they leave a
hole in the music; done on another thread they fight the generation thread for the same cores
(measured on 2 cores: every step ~1.6x slower for as long as they run). So they run here, between
steps: the engine offers them as generators that do one piece per `send(units)` (a T5 block, or a
number of audio frames), and a `Job` sizes each piece to a time budget from what the last pieces
cost. The stream then pays a bounded share of a step for a few dozen steps instead of one long
stall.

A job that needs something from another thread first (a file read, `reads.wait`) yields that
`Read` instead of None: the piece ends there, and the job is not `ready` - the session gives its
turns to others - until the read has settled.
"""

from __future__ import annotations

import time
from collections.abc import Generator
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Job(Generic[T]):
    """One piece-at-a-time computation and its outcome (`result`, or `error`)."""

    def __init__(self, steps: Generator[Any, int | None, T], label: str) -> None:
        self.label = label
        self._steps = steps
        self._started = False
        self._unit_costs: list[float] = []  # seconds per unit of work, the last few pieces
        self.done = False
        self.result: T | None = None
        self.error: Exception | None = None
        self.pieces = 0
        self.seconds = 0.0  # time spent on it so far
        self.awaiting: Any = None  # what it waits for (a `reads.Read`: has `settled`), or None

    def advance(self, budget_s: float | None) -> None:
        """Run one piece sized to take about `budget_s` seconds (None: everything that is left)."""
        if not self.ready:
            return
        if budget_s is None:
            amount = None
        elif self.unit_s is None:
            amount = 1  # the first pieces measure what a unit costs (the very first may do no real work)
        else:
            amount = max(1, int(budget_s / self.unit_s))  # the dearest recent unit: stay in budget
        t0 = time.perf_counter()
        self.awaiting = None
        try:
            if not self._started:
                self._started = True
                next(self._steps)  # to the first yield: the engine's generators do no work before it
            while True:
                self.awaiting = self._steps.send(amount)
                if self.awaiting is not None or amount is not None:
                    break
        except StopIteration as finished:
            self.result = finished.value
            self.done = True
        except Exception as e:  # the job's own failure (unreadable audio, ...): its command is refused
            self.error = e
            self.done = True
        dt = time.perf_counter() - t0
        self.pieces += 1
        self.seconds += dt
        if amount and self.awaiting is None:  # a piece that ended waiting did less than its amount
            self._unit_costs = [*self._unit_costs[-2:], dt / amount]

    @property
    def ready(self) -> bool:
        """Has work to do now (not done, and not waiting on a read that is still running)."""
        return not self.done and (self.awaiting is None or self.awaiting.settled)

    @property
    def unit_s(self) -> float | None:
        """What one unit of its work costs (the dearest of the last pieces), once measured."""
        return max(self._unit_costs) if len(self._unit_costs) >= 2 else None

    def finish(self) -> None:
        self.advance(None)

    def close(self) -> None:
        """Abandon the job (its command was superseded)."""
        self._steps.close()
        self.done = True
