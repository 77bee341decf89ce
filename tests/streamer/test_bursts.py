"""Bursts a performer (or a broken script) can send. Protects: a burst of prompts never heard before
costs one T5 run, not hundreds (the latest prompt wins; the others are answered as superseded), and
the stream keeps stepping through it."""

from musicgen_live.streamer import commands as c
from musicgen_live.streamer.config import StreamConfig

from .driver import Driven


def test_a_burst_of_new_prompts_encodes_only_the_last(tiny):
    live = Driven(tiny, StreamConfig(buffer_ms=100, window_s=4, context_s=1.5, slide_chunk=8))
    try:
        for _ in range(5):
            live.turn()
        encoded = []
        real = tiny.conditioner.condition_steps
        tiny.conditioner.condition_steps = lambda text, guided=True: (encoded.append(text), real(text, guided))[1]
        try:
            tickets = [live.submit(c.SetPrompt(f"burst prompt number {i}")) for i in range(300)]
            steps = live.session.steps
            for _ in range(20):
                live.turn()
        finally:
            del tiny.conditioner.condition_steps
        assert encoded == ["burst prompt number 299"]  # T5 ran once
        assert all(t.error == "superseded by a newer prompt before it was ready" for t in tickets[:-1])
        assert tickets[-1].error is None and tickets[-1].frame is not None
        assert live.session.steps == steps + 20  # a step every turn all through the burst
        assert live.problems() == []
    finally:
        live.close()
