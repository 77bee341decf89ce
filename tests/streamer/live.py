"""Helpers for tests of a live session on a clock-paced null output: start one, send it commands
and wait for their single answer, read the state every client sees."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from musicgen_live.engine.model import MusicGen
from musicgen_live.streamer import commands as c
from musicgen_live.streamer.config import StreamConfig
from musicgen_live.streamer.outputs import make_output
from musicgen_live.streamer.session import Session


@contextmanager
def playing(model: MusicGen, **stream: Any) -> Iterator[Session]:
    """A started session of `model` (200 ms buffer, null output, `stream` settings), closed after."""
    s = Session(model, make_output("null", 2, 0.2), StreamConfig(buffer_ms=200, **stream))
    s.start()
    try:
        yield s
    finally:
        s.close()


def submit(s: Session, cmd: c.Command, timeout: float = 20) -> c.Ticket:
    """Send `cmd` and wait for its answer (applied or refused)."""
    t = s.submit(cmd)
    assert t.wait(timeout), f"{cmd} was not answered"
    return t


def state(s: Session) -> dict[str, Any]:
    """The session's state, once every command sent before has been applied."""
    result = submit(s, c.Query()).result
    assert result is not None
    return result
