"""Several sessions on one engine: one generation thread steps them together in one `Batch`.

Each session keeps everything of its own - output (device, file, null; its WebSocket listeners and
audio taps), prompts, guidance, sampling, seed, continuation, latency probes - and is driven exactly
as its own thread would drive it (`Session.service` / `deliver`), except that all sessions wanting
a frame in the same turn share one forward. On a memory-bound CPU that costs little more than one
stream (BENCHMARKS.md). Sessions join and leave between two steps without disturbing the others: a
stream's codes do not depend on who shares its batch (`engine.batch`).
"""

from __future__ import annotations

import queue
import threading
import time

from engine.batch import Batch
from engine.model import MusicGen

from .session import Session

ROWS_PER_SESSION = 2  # one prompt and the unconditional row; a crossfade's extra row spills over


class SessionGroup:
    def __init__(self, model: MusicGen, max_sessions: int = 4) -> None:
        """`max_sessions` fixes the batch's row count (its shape), so it is set once."""
        if max_sessions < 1:
            raise ValueError(f"a group needs room for at least one session, got {max_sessions}")
        self.model = model
        self.max_sessions = max_sessions
        self.batch = Batch(model, rows=ROWS_PER_SESSION * max_sessions)
        self.sessions: list[Session] = []
        self.step_ms: list[float] = []
        self._changes: queue.SimpleQueue[tuple[str, Session]] = queue.SimpleQueue()
        self._wake = threading.Event()
        self._quit = threading.Event()
        self._thread: threading.Thread | None = None

    # -- any thread --------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="group-generation", daemon=True)
        self._thread.start()

    def add(self, session: Session) -> None:
        """Open `session` (prefill, output) and have it join at the next step boundary."""
        if len(self.sessions) + self._changes.qsize() >= self.max_sessions:
            raise ValueError(f"this group is full ({self.max_sessions} sessions)")
        session.wake = self._wake
        session.open()
        self._changes.put(("add", session))
        self._wake.set()

    def remove(self, session: Session) -> None:
        """Leave at the next step boundary; the session's output and encoder are then closed."""
        self._changes.put(("remove", session))
        self._wake.set()

    def close(self) -> None:
        self._quit.set()
        self._wake.set()
        if self._thread:
            self._thread.join(timeout=5)
        self._apply_changes()  # a session added just before close is open too: release it as well
        for s in self.sessions:
            s.release()
        self.sessions = []

    # -- the generation thread -------------------------------------------------------------------
    def _run(self) -> None:
        while not self._quit.is_set():
            self._apply_changes()
            wanting = []
            for s in self.sessions:
                try:
                    if s.service():
                        wanting.append(s)
                except Exception as e:
                    s.report_error(e)
            if wanting:
                self._step(wanting)
                continue
            for s in self.sessions:
                s._resolve_probes()
            wait = min((s.idle_wait() for s in self.sessions), default=0.05)
            self._wake.wait(timeout=wait)
            self._wake.clear()

    def _step(self, sessions: list[Session]) -> None:
        sliding = [s.gen.state.slide is not None for s in sessions]
        t0 = time.perf_counter()
        try:
            results = self.batch.step([s.gen for s in sessions])
        except Exception as e:
            for s in sessions:
                s.report_error(e)
            time.sleep(0.05)
            return
        dt = time.perf_counter() - t0
        self.step_ms.append(1000 * dt)
        del self.step_ms[:-5000]
        for s, r, sl in zip(sessions, results, sliding):
            try:
                s.deliver(r, dt, sl)
            except Exception as e:
                s.report_error(e)

    def _apply_changes(self) -> None:
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
