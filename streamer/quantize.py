"""Changes that land on the beat: a shared beat timeline, and where a beat falls in the output.

A band shares a beat timeline (Ableton Link: `bridges.link`); with `quantize = q` a change is held
and applied at the step whose audio starts nearest the next multiple of q beats, so that it is
*heard* on that boundary - within half a frame (10 ms) when the machine keeps up. The timeline is
read in `time.perf_counter()` seconds; the output's own clock (`RingOutput.clock`: when it last
read which ring position) turns a beat's time into the ring position - the output sample - where
it sounds. Positions are recomputed at every check, so tempo changes and flushed buffers move the
target with them.
"""

from __future__ import annotations

import math
import time
from typing import Protocol


class BeatClock(Protocol):
    """A beat timeline: beats as a function of `time.perf_counter()` seconds, at a tempo that may change."""

    def beat_at(self, t: float) -> float: ...

    def time_at(self, beat: float) -> float: ...

    def describe(self) -> dict[str, float | int]:
        """What a performer sees: tempo (bpm), beat, phase (beats into the bar), quantum (beats a bar), peers."""
        ...


class SteadyClock:
    """A timeline at a constant tempo from `origin` (perf_counter seconds): Link's shape with no peers."""

    def __init__(self, tempo: float = 120.0, quantum: float = 4.0, origin: float | None = None) -> None:
        if not 20.0 <= tempo <= 999.0:
            raise ValueError(f"tempo must be within 20..999 bpm, got {tempo}")
        self.tempo = tempo
        self.quantum = quantum
        self.origin = time.perf_counter() if origin is None else origin

    def beat_at(self, t: float) -> float:
        return (t - self.origin) * self.tempo / 60.0

    def time_at(self, beat: float) -> float:
        return self.origin + beat * 60.0 / self.tempo

    def describe(self) -> dict[str, float | int]:
        beat = self.beat_at(time.perf_counter())
        return {"tempo": self.tempo, "beat": beat, "phase": beat % self.quantum, "quantum": self.quantum, "peers": 0}


def next_boundary(clock: BeatClock, t: float, quantize: float) -> float:
    """The first multiple of `quantize` beats at or after time `t` (perf_counter seconds)."""
    beat = clock.beat_at(t)
    return math.ceil(beat / quantize - 1e-9) * quantize


def ring_position(clock: BeatClock, beat: float, output_clock: tuple[float, int], rate: int) -> int:
    """The output ring position (device samples) where `beat` sounds, from the output's last
    (perf_counter, ring position) reading."""
    t_read, read = output_clock
    return read + round((clock.time_at(beat) - t_read) * rate)
