"""Latency probes: when did a command become audible, and how long does that usually take?

Every applied command leaves a probe at the output ring position of the first sample generated
under it; once the output's read position passes it, the command was heard. The estimate that
bridges use to schedule timetagged bundles is the median of the most recent *healthy* latencies:
a probe counts only if nothing went wrong (an internal error, an underrun) between the command and
its sound, so one bad stretch never spoils timing for the rest of the night.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from dataclasses import dataclass

from musicgen_live.engine.stats import median

from .commands import Ticket

MAX_PROBES = 256  # probes waiting at once; older ones are dropped (a stalled output)
WINDOW = 64  # recent healthy latencies the estimate is taken over


@dataclass
class Probe:
    ticket: Ticket
    device_frame: int  # ring position of the first sample generated under the command
    trouble: int  # the session's trouble count when the command was applied


class LatencyProbes:
    def __init__(self) -> None:
        self._probes: list[Probe] = []
        self.recent_ms: collections.deque[float] = collections.deque(maxlen=WINDOW)

    def add(self, ticket: Ticket, device_frame: int, trouble: int) -> None:
        self._probes.append(Probe(ticket, device_frame, trouble))
        del self._probes[:-MAX_PROBES]

    def resolve(self, read: int, heard_at: Callable[[int], float], trouble: int) -> list[Ticket]:
        """Tickets whose first sample the output has read (`read`, a ring position); each is
        heard at `heard_at(its first sample)` (perf_counter seconds, the output's clock)."""
        if not self._probes:
            return []
        heard, waiting = [], []
        for p in self._probes:
            if read >= p.device_frame:
                p.ticket.audible = heard_at(p.device_frame)
                if p.trouble == trouble and p.ticket.latency_ms is not None:
                    self.recent_ms.append(p.ticket.latency_ms)
                heard.append(p.ticket)
            else:
                waiting.append(p)
        self._probes = waiting
        return heard

    def estimate_ms(self) -> float | None:
        """Median of the recent healthy command -> audible latencies (None before the first)."""
        if not self.recent_ms:
            return None
        return median(self.recent_ms.copy())  # copy(): atomic, while the generation thread appends
