"""Log lines written by a thread of their own, so that writing one never blocks whoever said it.

The session logs from the generation thread (a continuation heard, a refusal, an error). Written
straight to stderr, one line blocks that thread for as long as the terminal or pipe does not take
it: a paused terminal (Ctrl-S, a scrolled tmux pane), a supervisor that stopped reading its pipe.
`LineWriter` queues each line (never waiting) and a daemon thread writes them; when the queue is
full the line is dropped and counted, and the count is written once the writer catches up.
"""

from __future__ import annotations

import queue
import threading
from typing import TextIO

MAX_QUEUED = 1000  # lines waiting to be written; past that, lines are dropped (and counted)


class LineWriter:
    """`writer(line)`: queue a line for `stream` without waiting."""

    def __init__(self, stream: TextIO, limit: int = MAX_QUEUED) -> None:
        self.stream = stream
        self.dropped = 0  # lines dropped so far (the writer was blocked and the queue full)
        self._reported = 0
        self._queue: queue.Queue[str | threading.Event] = queue.Queue(maxsize=limit)  # an Event: a flush
        self._thread = threading.Thread(target=self._run, name="log-writer", daemon=True)
        self._thread.start()

    def __call__(self, line: str) -> None:
        try:
            self._queue.put_nowait(line)
        except queue.Full:
            self.dropped += 1

    def flush(self, timeout_s: float = 1.0) -> bool:
        """Wait up to `timeout_s` for the queued lines to be written (at exit); True when they were."""
        done = threading.Event()
        try:
            self._queue.put(done, timeout=timeout_s)
        except queue.Full:
            return False
        return done.wait(timeout_s)

    def _run(self) -> None:
        while True:
            line = self._queue.get()
            if isinstance(line, threading.Event):
                line.set()
                continue
            if self.dropped > self._reported:
                lost, self._reported = self.dropped - self._reported, self.dropped
                self._write(f"[{lost} log lines dropped: the output was not being read]")
            self._write(line)

    def _write(self, line: str) -> None:
        try:
            print(line, file=self.stream, flush=True)
        except (OSError, ValueError):  # a closed pipe or stream: nothing more can be said there
            pass
