"""Per-sender message budgets, so that no client can take the machine from the music.

On two cores the event loop and the generation thread share one interpreter: a sender that floods
(a stuck script, a hostile peer) costs the music its pace long before it fills any queue. Each
sender (an OSC host, a WebSocket connection) gets a token bucket: `rate` messages a second with
bursts of `rate`; what is over is dropped before it is parsed, and the sender hears of it at most
once a second. No I/O here.
"""

from __future__ import annotations

import time


class Budget:
    """A token bucket for one sender."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.tokens = rate
        self.stamp = time.monotonic()
        self.dropped = 0  # over budget since the sender was last told
        self.told = 0.0

    def allow(self, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        self.tokens = min(self.rate, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        self.dropped += 1
        return False

    def complaint(self, now: float | None = None) -> int:
        """How many were dropped, when it is time to say so (at most once a second), else 0."""
        now = time.monotonic() if now is None else now
        if not self.dropped or now - self.told < 1.0:
            return 0
        n, self.dropped, self.told = self.dropped, 0, now
        return n


class Budgets:
    """A budget per sender key, forgetting senders quiet for a minute (so they cannot pile up)."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self._by_key: dict[object, Budget] = {}
        self._swept = time.monotonic()

    def get(self, key: object) -> Budget:
        now = time.monotonic()
        if now - self._swept > 60.0:
            self._by_key = {k: b for k, b in self._by_key.items() if now - b.stamp < 60.0}
            self._swept = now
        budget = self._by_key.get(key)
        if budget is None:
            budget = self._by_key[key] = Budget(self.rate)
        return budget
