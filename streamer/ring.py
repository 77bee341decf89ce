"""Single-producer / single-consumer ring of audio frames, safe for a real-time consumer.

The generation thread writes, the audio callback reads. Neither locks: each side only advances its
own monotonic counter (an int assignment, atomic under the GIL), and the reader never allocates -
it copies into the block it is handed. Counters are in *frames* (one sample per channel) at the
ring's rate and never wrap, so they double as stream positions for latency measurements.

A producer that wants the buffered audio gone (stop) cannot move the read counter itself; it
posts a `flush_to` mark that the consumer honours at its next read.
"""

from __future__ import annotations

import numpy as np


class AudioRing:
    def __init__(self, capacity_frames: int, channels: int) -> None:
        self.capacity = int(capacity_frames)
        self.channels = int(channels)
        self.buf = np.zeros((self.capacity, self.channels), dtype=np.float32)
        self.written = 0  # frames ever written (producer-owned)
        self.read = 0  # frames ever read or skipped (consumer-owned)
        self.flush_to = 0  # producer's request: the consumer skips to here

    # -- producer side ---------------------------------------------------------------------------
    @property
    def fill(self) -> int:
        """Frames buffered and not yet played (as seen by the producer)."""
        return self.written - max(self.read, self.flush_to)

    @property
    def space(self) -> int:
        return self.capacity - self.fill

    def write(self, frames: np.ndarray) -> int:
        """Append (n, channels) float32 frames; returns how many fitted (the rest is dropped)."""
        n = min(len(frames), self.space)
        start = self.written % self.capacity
        first = min(n, self.capacity - start)
        self.buf[start : start + first] = frames[:first]
        if n > first:
            self.buf[: n - first] = frames[first:n]
        self.written += n
        return n

    def request_flush(self) -> None:
        """Ask the consumer to drop everything written so far (it happens at its next read)."""
        self.flush_to = self.written

    # -- consumer side (real-time safe) ----------------------------------------------------------
    def read_into(self, out: np.ndarray) -> int:
        """Fill `out` (n, channels) with the oldest frames; zero the remainder. Returns frames read."""
        if self.flush_to > self.read:
            self.read = self.flush_to
        n = min(len(out), self.written - self.read)
        start = self.read % self.capacity
        first = min(n, self.capacity - start)
        out[:first] = self.buf[start : start + first]
        if n > first:
            out[first:n] = self.buf[: n - first]
        if n < len(out):
            out[n:] = 0.0
        self.read += n
        return n


class HistoryRing:
    """The most recent `seconds` of audio, for "continue from what was playing" (producer-only)."""

    def __init__(self, seconds: float, rate: int, channels: int) -> None:
        self.rate = rate
        self.ring = AudioRing(int(seconds * rate), channels)

    def append(self, frames: np.ndarray) -> None:
        over = len(frames) - self.ring.space
        if over > 0:  # drop the oldest to make room; this ring has no real-time reader
            self.ring.read += min(over, self.ring.fill)
        self.ring.write(frames[-self.ring.capacity :])

    @property
    def seconds(self) -> float:
        return self.ring.fill / self.rate

    def last(self, seconds: float) -> np.ndarray:
        """A copy of the last `seconds` (or all there is), (n, channels)."""
        n = min(int(seconds * self.rate), self.ring.fill)
        out = np.empty((n, self.ring.channels), dtype=np.float32)
        end = self.ring.written
        start = (end - n) % self.ring.capacity
        first = min(n, self.ring.capacity - start)
        out[:first] = self.ring.buf[start : start + first]
        out[first:] = self.ring.buf[: n - first]
        return out
