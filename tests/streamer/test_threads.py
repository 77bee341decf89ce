"""Who computes on torch's CPU pool (`streamer.threads`). Protects: a running group opens a session
on its generation thread (prefill, calibration and pace measurement run where the stream will run;
the audio is opened by the caller)
and a session that cannot open is refused to the caller while the group plays on; a job run on a
pool thread hands back its result or its exception."""

from __future__ import annotations

import threading

import pytest
from musicgen_live.engine.config import SamplingConfig
from musicgen_live.streamer import threads
from musicgen_live.streamer.config import StreamConfig
from musicgen_live.streamer.group import SessionGroup
from musicgen_live.streamer.outputs import make_output
from musicgen_live.streamer.session import Session

STREAM = StreamConfig(buffer_ms=200, window_s=4.0, context_s=1.5, slide_chunk=8)


def test_on_pool_thread_returns_the_result_or_raises_the_error():
    assert threads.on_pool_thread(lambda: threading.current_thread().name) == "loader"

    def fail() -> None:
        raise ValueError("no such model")

    with pytest.raises(ValueError, match="no such model"):
        threads.on_pool_thread(fail)


def test_a_running_group_opens_sessions_on_its_generation_thread(tiny, monkeypatch):
    opened_on: list[str] = []
    real_prepare = Session.prepare_stream

    def spy(self: Session) -> None:
        opened_on.append(threading.current_thread().name)
        real_prepare(self)

    monkeypatch.setattr(Session, "prepare_stream", spy)
    group = SessionGroup(tiny, max_sessions=2)
    group.start()
    try:
        good = Session(tiny, make_output("null", 2, 0.2), STREAM, SamplingConfig(seed=1))
        group.add(good)
        bad = Session(tiny, make_output("null", 2, 0.2), STREAM, SamplingConfig(seed=2))
        monkeypatch.setattr(bad, "_start_generator", lambda: (_ for _ in ()).throw(RuntimeError("prefill failed")))
        with pytest.raises(RuntimeError, match="prefill failed"):
            group.add(bad)
        assert opened_on == ["generation", "generation"]
        assert bad.steps == 0  # the one that failed never joined
        threading.Event().wait(0.1)
        assert group.sessions == [good]  # ... and the other plays on
        steps = good.steps
        for _ in range(200):
            if good.steps > steps + 5:
                break
            threading.Event().wait(0.02)
        assert good.steps > steps + 5
    finally:
        group.close()
