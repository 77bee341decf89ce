"""Ableton Link: join the band's beat timeline on the local network (aalink, the Link library's
Python binding) and offer it to sessions as a `BeatClock`, so that quantized changes land on the
shared beat (`streamer.quantize`).

Link runs its own threads; reading its session state is thread-safe and never blocks, so the
generation thread reads beats from it directly. A beat at a perf_counter time is the current beat
plus the time between at the current tempo: exact for any time while the tempo holds.
"""

from __future__ import annotations

import time
from typing import Any

from musicgen_live.engine.errors import UserError

from .config import LinkConfig


class LinkUnavailable(UserError):
    """Link could not be joined (the binding missing, or no network to run it on)."""


class LinkClock:
    """A `streamer.quantize.BeatClock` over an enabled Link session."""

    def __init__(self, link: Any, quantum: float) -> None:
        self.link = link
        self.quantum = quantum

    @classmethod
    def join(cls, cfg: LinkConfig) -> LinkClock:
        """Enable Link at `cfg.tempo` (the session's tempo wins once a peer is found); call it in
        the running event loop (aalink's own futures live there)."""
        try:
            from aalink import Link
        except ImportError as e:
            raise LinkUnavailable(f"Ableton Link needs the aalink package ({e}); pip install aalink") from None
        try:
            link = Link(cfg.tempo)  # binds to the running event loop
            link.quantum = cfg.quantum
            link.enabled = True
        except Exception as e:  # the binding's own failures (no network interface, ...)
            raise LinkUnavailable(f"Ableton Link could not start ({type(e).__name__}: {e})") from None
        return cls(link, cfg.quantum)

    def beat_at(self, t: float) -> float:
        now = time.perf_counter()
        return float(self.link.beat) + (t - now) * float(self.link.tempo) / 60.0

    def time_at(self, beat: float) -> float:
        now = time.perf_counter()
        return now + (beat - float(self.link.beat)) * 60.0 / float(self.link.tempo)

    def describe(self) -> dict[str, float | int]:
        beat = float(self.link.beat)
        return {
            "tempo": round(float(self.link.tempo), 3),
            "beat": round(beat, 3),
            "phase": round(beat % self.quantum, 3),
            "quantum": self.quantum,
            "peers": int(self.link.num_peers),
        }

    def close(self) -> None:
        self.link.enabled = False
