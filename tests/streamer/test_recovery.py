"""A session that meets a bug in its step recovers by itself. Protects: a failing step is reported
(error event), a few in a row reset the stream so the music comes back (warning event), and the
commands around it are still answered."""

from musicgen_live.streamer import commands as c
from musicgen_live.streamer.config import StreamConfig
from musicgen_live.streamer.session import MAX_FAILED_STEPS

from .driver import Driven


def test_failing_steps_reset_the_stream_and_the_music_comes_back(tiny):
    live = Driven(tiny, StreamConfig(buffer_ms=100, window_s=4, context_s=1.5, slide_chunk=8))
    try:
        for _ in range(30):
            live.turn()
        real_step, failures = live.session.gen.step, [0]

        def broken():
            failures[0] += 1
            raise RuntimeError("a bug")

        live.session.gen.step = broken  # type: ignore[method-assign]
        for _ in range(MAX_FAILED_STEPS):
            live.turn()
        live.session.gen.step = real_step  # type: ignore[method-assign]
        kinds = [kind for kind, _ in live.events]
        assert kinds.count("error") == MAX_FAILED_STEPS and "warning" in kinds
        frame = live.session.gen.frames_done
        t = live.submit(c.Set("cfg", 5.0))
        for _ in range(20):
            live.turn()
        assert t.done.is_set() and t.error is None
        assert live.session.gen.frames_done > frame  # playing again
        assert live.gaps == 0
    finally:
        live.close()
