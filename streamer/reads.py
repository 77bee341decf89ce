"""Reading what a client names, off the generation thread, with a deadline.

A file in the audio folder can block whoever reads it: a named pipe until a writer appears (for
ever), a network share or a sleeping disk for seconds, a long file while it decodes. The generation
thread must never wait on any of that, so every preparation's I/O - a file, the input device's
capture, an upload's resampling - runs as a `Read` on a short-lived thread of its own, and the job
that needs it polls it between steps (`wait`): the music plays on meanwhile, and a read that
outlives its deadline is answered as failed while its thread is left to finish (or not) alone.

A thread per read, not a pool: a stalled read holds its thread, and a pool of stalled threads would
queue every later read behind them. `Reader` bounds how many may be unfinished at once instead.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Generator
from typing import Any, Generic, TypeVar

from musicgen_live.engine.errors import AudioInputError

from . import threads

T = TypeVar("T")
MAX_UNFINISHED = 4  # reads whose threads have not returned (a stalled folder) before new ones are refused


class Read(Generic[T]):
    """One blocking call on a thread of its own; the generation thread only looks at `settled`."""

    def __init__(self, what: str, timeout_s: float) -> None:
        self.what = what  # for the sentences: "reading 'loop.wav'"
        self.timeout_s = timeout_s
        self.deadline = time.perf_counter() + timeout_s
        self._done = threading.Event()
        self._value: T | None = None
        self._error: BaseException | None = None

    @classmethod
    def ready(cls, value: T, what: str = "") -> Read[T]:
        """A read with nothing to wait for (audio already in memory)."""
        read: Read[T] = cls(what, 0.0)
        read._value = value
        read._done.set()
        return read

    def run(self, fn: Callable[[], T]) -> None:
        """Call `fn` here (on the read's own thread) and keep its outcome."""
        threads.confine()  # any torch op here stays single-threaded: the cores are the generation thread's
        try:
            self._value = fn()
        except BaseException as e:  # handed to whoever waits, whatever it is
            self._error = e
        self._done.set()

    @property
    def done(self) -> bool:
        return self._done.is_set()

    @property
    def settled(self) -> bool:
        """Done, or past its deadline: either way the waiting job can go on."""
        return self._done.is_set() or time.perf_counter() >= self.deadline

    def problem(self) -> BaseException | None:
        """Once `settled`: what went wrong (its error, or the timeout), None when it succeeded."""
        return self._error if self._done.is_set() else self._timeout()

    def _timeout(self) -> AudioInputError:
        return AudioInputError(
            f"{self.what} took longer than {self.timeout_s:g} s ([stream] read_timeout_s): given up, "
            "the music played on"
        )

    def outcome(self) -> T:
        """The value, or the read's error, or a timeout: call once `settled`."""
        if (problem := self.problem()) is not None:
            raise problem
        value, self._value = self._value, None  # the job owns it now: no second reference to a clip
        return value  # type: ignore[return-value]


class Reader:
    """Starts a session's reads, at most `MAX_UNFINISHED` of them unfinished at once."""

    def __init__(self, timeout_s: float, limit: int = MAX_UNFINISHED) -> None:
        self.timeout_s = timeout_s
        self.limit = limit
        self._unfinished = 0
        self._lock = threading.Lock()  # the count: taken by the generation thread and the read threads, briefly

    @property
    def unfinished(self) -> int:
        return self._unfinished

    def start(self, fn: Callable[[], T], what: str) -> Read[T]:
        """Run `fn` on a new thread now; refuse (AudioInputError) when too many reads hang."""
        with self._lock:
            if self._unfinished >= self.limit:
                raise AudioInputError(
                    f"{self._unfinished} earlier reads have not finished (is the audio folder on a stalled "
                    "disk or share?): try again once they have"
                )
            self._unfinished += 1
        read: Read[T] = Read(what, self.timeout_s)

        def body() -> None:
            try:
                read.run(fn)
            finally:
                with self._lock:
                    self._unfinished -= 1

        threading.Thread(target=body, name="musicgen-read", daemon=True).start()
        return read


def wait(read: Read[T]) -> Generator[Any, Any, T]:
    """Inside a job: yield `read` itself (the job then skips its turns, `jobs.Job.ready`) until it
    has settled, then its outcome."""
    while not read.settled:
        yield read
    return read.outcome()
