"""The stall watchdog: it notices when the generation thread stops making steps, and says where.

Every turn of the generation thread (`group.SessionGroup.turn`) is short - a step, commands
applied between steps, a job's piece - so a turn that runs for seconds means the thread is stuck
(a blocking call, a bug) and the music has stopped. The watchdog looks from a thread of its own,
`PERIOD_S` apart: once a turn has run past the limit while a session plays, every session of the
group says `phase: stalled`, every client hears an error naming the function the thread is in,
and when the turn ends the sessions say so again. It only reads two numbers the generation thread
writes (the turn count and when the turn began), so it can never hold that thread up.
"""

from __future__ import annotations

import os
import sys
import sysconfig
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import Protocol

PERIOD_S = 0.1  # how often the watchdog looks
STEPS = 10  # a turn may take this many median steps before it counts as a stall (a slow model's slide)
PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STDLIB = sysconfig.get_paths()["stdlib"] + os.sep
OURS = tuple(os.path.join(PACKAGE, layer) + os.sep for layer in ("engine", "streamer", "bridges"))  # our own files


class Watched(Protocol):
    """What the watchdog reads of a generation loop (a `SessionGroup`)."""

    turns: int  # turns finished
    turn_began: float | None  # perf_counter when the running turn began (None: between turns)

    @property
    def thread(self) -> threading.Thread | None: ...

    def playing(self) -> bool: ...

    def median_step_s(self) -> float: ...


@dataclass
class Stall:
    turn: int  # the turn that is stuck
    began: float  # perf_counter when it began
    where: str  # the function the thread is in


class Watchdog:
    """Watches `loop` and calls `on_stall(where, seconds)` once a turn runs past the limit, and
    `on_resume(seconds)` once that turn has ended. `stall_s`: the least a turn may run first."""

    def __init__(
        self,
        loop: Watched,
        stall_s: float,
        on_stall: Callable[[str, float], None],
        on_resume: Callable[[float], None],
    ) -> None:
        self.loop = loop
        self.stall_s = stall_s
        self.on_stall = on_stall
        self.on_resume = on_resume
        self.stall: Stall | None = None
        self.stalls = 0  # stalls seen so far
        self._quit = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="watchdog", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._quit.set()
        if self._thread is not None:
            self._thread.join(timeout=2)

    def limit_s(self) -> float:
        """How long one turn may run before it is a stall."""
        return max(self.stall_s, STEPS * self.loop.median_step_s())

    def check(self, now: float) -> None:
        """One look (the watchdog's thread calls it every `PERIOD_S`; tests call it directly)."""
        turn, began = self.loop.turns, self.loop.turn_began
        if self.stall is not None:
            if turn != self.stall.turn or began is None or began != self.stall.began:
                stalled = self.stall
                self.stall = None
                self.on_resume(now - stalled.began)
            return
        if began is None or now - began < self.limit_s() or not self.loop.playing():
            return
        self.stall = Stall(turn, began, where_stuck(self.loop.thread))
        self.stalls += 1
        self.on_stall(self.stall.where, now - began)

    def _run(self) -> None:
        while not self._quit.wait(PERIOD_S):
            try:
                self.check(time.perf_counter())
            except Exception:  # the watchdog must never be what breaks: look again next time
                pass


def where_stuck(thread: threading.Thread | None) -> str:
    """Where `thread` is: its innermost function outside Python's standard library (threading's
    waits say nothing), and the innermost of musicgen-live's own when that is another, as
    `name (file:line), inside name (file:line)`."""
    if thread is None or thread.ident is None:
        return "unknown (no generation thread)"
    frame = sys._current_frames().get(thread.ident)
    if frame is None:
        return "unknown (the generation thread has ended)"
    stack = _stack(frame)
    inner = next((f for f in stack if not f.f_code.co_filename.startswith(STDLIB)), stack[0])
    ours = next((f for f in stack if f.f_code.co_filename.startswith(OURS)), None)
    if ours is None or ours is inner:
        return _describe(inner)
    return f"{_describe(ours)}, inside {_describe(inner)}"


def _stack(frame: FrameType) -> Sequence[FrameType]:
    """Innermost first."""
    out = []
    f: FrameType | None = frame
    while f is not None:
        out.append(f)
        f = f.f_back
    return out


def _describe(frame: FrameType) -> str:
    path = frame.f_code.co_filename
    short = os.path.relpath(path, PACKAGE) if path.startswith(OURS) else os.path.basename(path)
    return f"{frame.f_code.co_name} ({short}:{frame.f_lineno})"
