"""The generation thread: it steps one session, or several sessions on one engine.

Each turn it services every session (commands, finished preparations, output health), steps the
ones whose ring wants audio - a lone stream alone (the lean path, with a preparation riding in the
same forward), several together in one `Batch` - and otherwise lets idle sessions give their
pending jobs time, then sleeps until the next one needs looking at or a command wakes it.

Each session keeps everything of its own - output (device, file, null; its WebSocket listeners and
audio taps), prompts, guidance, sampling, seed, continuation, latency probes - and joins and leaves
between two steps without disturbing the others: a stream's codes do not depend on who shares its
batch (`engine.batch`). On a memory-bound CPU several streams cost little more than one
(BENCHMARKS.md).
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Protocol

from musicgen_live.engine.batch import Batch
from musicgen_live.engine.generator import Phase, StepResult, StreamGenerator
from musicgen_live.engine.model import MusicGen

from . import threads
from .watchdog import Watchdog


class Member(Protocol):
    """What the generation thread asks of a session it steps (`streamer.session.Session`): the
    group knows sessions only through this, so the session may start a group of its own."""

    gen: StreamGenerator
    wake: threading.Event  # set when a command arrives; the group shares its own among its sessions

    def playing(self) -> bool: ...  # not paused or stopped

    def open(self) -> None: ...  # prefill and audio, on a group whose thread is not running yet

    def open_audio(self) -> None: ...  # the audio half (the thread prefilled: `prepare_stream`)

    def service(self) -> bool: ...  # commands, finished preparations, output health; wants a step?

    def deliver(self, result: StepResult, seconds: float, phase_before: Phase) -> None: ...

    def headroom_s(self) -> float: ...

    def idle(self, seconds: float) -> None: ...

    def idle_wait(self) -> float: ...

    def prepare_stream(self) -> None: ...

    def step_failed(self, e: Exception) -> None: ...

    def report_error(self, e: Exception) -> None: ...

    def release(self) -> None: ...

    def median_step_s(self) -> float: ...

    def stall_began(self, where: str, seconds: float) -> None: ...

    def stall_ended(self, seconds: float) -> None: ...


ROWS_PER_SESSION = 2  # one prompt and the unconditional row; a crossfade's extra row spills over


class SessionGroup:
    def __init__(self, model: MusicGen, max_sessions: int = 4, batched: bool = True, stall_s: float = 1.0) -> None:
        """`max_sessions` fixes the batch's row count (its shape), so it is set once. `batched`:
        step wanting sessions together in one `Batch` (False: one at a time, as a lone session
        steps - for a group of one). `stall_s`: a turn running this long (at least) while a
        session plays is a stall (`watchdog`)."""
        if max_sessions < 1:
            raise ValueError(f"a group needs room for at least one session, got {max_sessions}")
        self.model = model
        self.max_sessions = max_sessions
        self.batch = Batch(model, rows=ROWS_PER_SESSION * max_sessions) if batched else None
        self.sessions: list[Member] = []
        self.step_ms: list[float] = []
        self._changes: queue.SimpleQueue[tuple[str, Member]] = queue.SimpleQueue()
        self._opening: queue.SimpleQueue[Opening] = queue.SimpleQueue()
        self._wake = threading.Event()
        self._quit = threading.Event()
        self._thread: threading.Thread | None = None
        self.turns = 0  # turns finished (the watchdog's pulse)
        self.turn_began: float | None = None  # perf_counter when the running turn began; None between turns
        self.watchdog = Watchdog(self, stall_s, self._stalled, self._resumed)

    # -- any thread --------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="generation", daemon=True)
        self._thread.start()
        self.watchdog.start()

    def add(self, session: Member, timeout_s: float = 600.0) -> None:
        """Open `session` (prefill, output) and have it join at the next step boundary. Once the
        generation thread runs, the session's prefill and measurements run there (on the thread
        that owns torch's pool, `threads`) while this waits; its audio is opened here. A failure
        is raised here."""
        if len(self.sessions) + self._changes.qsize() + self._opening.qsize() >= self.max_sessions:
            raise ValueError(f"this group is full ({self.max_sessions} sessions)")
        session.wake = self._wake
        if self._thread is None or not self._thread.is_alive():
            session.open()
            self._changes.put(("add", session))
            self._wake.set()
            return
        opening = Opening(session)
        self._opening.put(opening)
        self._wake.set()
        if not opening.done.wait(timeout_s):
            raise RuntimeError(f"the generation thread did not open the session within {timeout_s:.0f} s")
        if opening.error is not None:
            raise opening.error
        session.open_audio()
        self._changes.put(("add", session))
        self._wake.set()

    def remove(self, session: Member) -> None:
        """Leave at the next step boundary; the session's output is then closed."""
        self._changes.put(("remove", session))
        self._wake.set()

    def close(self) -> None:
        self.watchdog.close()
        self._quit.set()
        self._wake.set()
        if self._thread:
            self._thread.join(timeout=5)
        self._open_new(refuse="the group closed before the session could join")
        self._apply_changes()  # a session added just before close is open too: release it as well
        for s in self.sessions:
            s.release()
        self.sessions = []

    # -- what the watchdog reads (any thread) -------------------------------------------------------
    @property
    def thread(self) -> threading.Thread | None:
        return self._thread

    def playing(self) -> bool:
        return any(s.playing() for s in list(self.sessions))

    def median_step_s(self) -> float:
        """The slowest session's median step, seconds (0 before any)."""
        return max((s.median_step_s() for s in list(self.sessions)), default=0.0)

    def _stalled(self, where: str, seconds: float) -> None:
        for s in list(self.sessions):
            s.stall_began(where, seconds)

    def _resumed(self, seconds: float) -> None:
        for s in list(self.sessions):
            s.stall_ended(seconds)

    # -- the generation thread -------------------------------------------------------------------
    def _run(self) -> None:
        threads.claim()
        while not self._quit.is_set():
            self.turn_began = time.perf_counter()
            try:
                wait = self.turn()
            except Exception as e:  # a bug outside any one session's guard: tell them, keep the thread
                for s in self.sessions:
                    s.report_error(e)
                wait = 0.01
            self.turn_began = None
            self.turns += 1
            if wait:
                self._wake.wait(timeout=wait)
                self._wake.clear()

    def turn(self) -> float:
        """One pass over the sessions: step those that want audio. Returns how long the thread may
        sleep (0: go again at once). Tests drive a group by calling this directly."""
        self._apply_changes()
        wanting = []
        for s in self.sessions:
            try:
                if s.service():
                    wanting.append(s)
            except Exception as e:  # a bug must not silence the others
                s.report_error(e)
        if wanting:
            self._step(wanting)
            return 0.0
        wait = min((s.idle_wait() for s in self.sessions), default=0.05)
        # preparation between steps may use half the smallest headroom, shared by the sessions
        share = 0.5 * min((s.headroom_s() for s in self.sessions), default=0.0) / max(1, len(self.sessions))
        for s in self.sessions:
            try:
                t0 = time.perf_counter()
                s.idle(share)
                share = max(0.0, share - (time.perf_counter() - t0))
            except Exception as e:
                s.report_error(e)
        return wait

    def _step(self, sessions: list[Member]) -> None:
        phases = [s.gen.phase for s in sessions]
        if self.batch is None:  # each alone: the lean single-stream step
            for s, phase in zip(sessions, phases):
                t0 = time.perf_counter()
                try:
                    result = s.gen.step()
                except Exception as e:
                    s.step_failed(e)
                    time.sleep(0.01)  # a persistent fault must not spin the CPU
                    continue
                self._deliver(s, result, time.perf_counter() - t0, phase)
            return
        t0 = time.perf_counter()
        try:
            results = self.batch.step([s.gen for s in sessions])
        except Exception as e:
            for s in sessions:
                s.step_failed(e)
            time.sleep(0.01)
            return
        dt = time.perf_counter() - t0
        self.step_ms.append(1000 * dt)
        del self.step_ms[:-5000]
        for s, r, phase in zip(sessions, results, phases):
            self._deliver(s, r, dt, phase)

    @staticmethod
    def _deliver(s: Member, result: StepResult, seconds: float, phase: Phase) -> None:
        try:
            s.deliver(result, seconds, phase)
        except Exception as e:
            s.report_error(e)

    def _apply_changes(self) -> None:
        self._open_new()
        while True:
            try:
                kind, s = self._changes.get_nowait()
            except queue.Empty:
                return
            if kind == "add" and s not in self.sessions:
                self.sessions.append(s)
            elif kind == "remove" and s in self.sessions:
                self.sessions.remove(s)
                s.release()

    def _open_new(self, refuse: str | None = None) -> None:
        """Prepare the streams of the sessions `add` handed over, or say why one could not be
        (`refuse`: the reason none of them can)."""
        while True:
            try:
                opening = self._opening.get_nowait()
            except queue.Empty:
                return
            try:
                if refuse is not None:
                    raise RuntimeError(refuse)
                opening.session.prepare_stream()
            except Exception as e:
                opening.error = e
            opening.done.set()


@dataclass(eq=False)
class Opening:
    """A session whose stream `add` asked the generation thread to prepare, and how that went."""

    session: Member
    done: threading.Event = field(default_factory=threading.Event)
    error: Exception | None = None
