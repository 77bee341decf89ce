"""Host stalls: moments when this machine did not run us at all (a CI host's CPU quota or a busy
neighbour VM), told apart from our own slowness.

A watchdog process sleeps 5 ms at a time and notes each wake-up that came late. Linux wakes a
sleeper promptly even when every core is busy with other runnable work (the suite passes with two
busy processes beside it, and the watchdog then sees nothing over 25 ms), so a late wake-up means
the whole machine, or our cgroup, was paused. A real-time test that fails while the host stalled
is run again (tests/conftest.py); one that fails on a quiet host fails at once."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from dataclasses import dataclass

LATE_S = 0.025  # a wake-up this late (seconds) is a stall worth noting
_WATCHDOG = f"""
import sys, time
while True:
    t = time.monotonic()
    time.sleep(0.005)
    late = time.monotonic() - t - 0.005
    if late > {LATE_S}:
        sys.stdout.write(f"{{t}} {{late}}\\n")
        sys.stdout.flush()
"""


@dataclass(frozen=True)
class Stalls:
    count: int
    longest_s: float
    total_s: float

    @property
    def spoils_real_time(self) -> bool:
        """Enough to empty a 200 ms buffer, or to push a reply past a test's wait."""
        return self.longest_s >= 0.1 or self.total_s >= 0.25

    def __str__(self) -> str:
        return f"host stalls: {self.count}, longest {self.longest_s * 1e3:.0f} ms, total {self.total_s * 1e3:.0f} ms"


class Watchdog:
    def __init__(self) -> None:
        self._seen: list[tuple[float, float]] = []  # (monotonic s when the sleep began, lateness s)
        self._lock = threading.Lock()
        self.t0 = time.monotonic()  # when it started watching
        self._proc = subprocess.Popen(
            [sys.executable, "-c", _WATCHDOG], stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True
        )
        threading.Thread(target=self._read, name="host-stall-watchdog", daemon=True).start()

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            t, late = (float(x) for x in line.split())
            with self._lock:
                self._seen.append((t, late))

    def since(self, t0: float) -> Stalls:
        """The stalls that began after `t0` (time.monotonic(), shared by all processes)."""
        time.sleep(0.02)  # let a wake-up that is late right now be reported
        with self._lock:
            late = [s for t, s in self._seen if t >= t0]
        return Stalls(len(late), max(late, default=0.0), sum(late))

    def close(self) -> None:
        self._proc.kill()
        self._proc.wait(timeout=5)
