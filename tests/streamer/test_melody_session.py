"""A live session of a melody checkpoint (`tiny-melody`) on a clock-paced null output. Protects:
the melody follows the session's own history, a file, an upload; it can be switched off; prompt
changes re-prefill under the same melody; a continuation still works; every change is answered
once, when it is heard, and shows in the shared state; what cannot work is refused in a sentence
and the music goes on without an underrun."""

from __future__ import annotations

import time

import numpy as np
import pytest
import soundfile as sf
from musicgen_live.engine.model import MusicGen
from musicgen_live.streamer import commands as c
from musicgen_live.streamer.session import PLAYING

from .live import playing, state, submit


@pytest.fixture(scope="module")
def tiny_melody() -> MusicGen:
    return MusicGen.load("tiny-melody", progress=None)


@pytest.fixture
def session(tiny_melody):
    with playing(tiny_melody, window_s=6.0, context_s=2.0, history_s=10, prompt="folk") as s:
        yield s


def riff(seconds: float, rate: int = 32000) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    notes = 220.0 * 2 ** (np.floor(t * 4) % 5 * 2 / 12)
    return (0.4 * np.sin(2 * np.pi * np.cumsum(notes / rate)))[:, None].astype(np.float32)


def test_the_melody_follows_history_a_file_and_an_upload_and_switches_off(session, tmp_path):
    time.sleep(2.5)
    t = submit(session, c.Follow("melody", c.FromHistory(2.0)))
    assert t.error is None and t.frame is not None and state(session)["melody"] == "history 2 s"
    path = tmp_path / "riff.wav"
    sf.write(path, riff(3.0), 32000)
    t = submit(session, c.Follow("melody", c.FromFile(str(path), 2.0)))
    assert t.error is None and state(session)["melody"] == "file riff.wav 2 s"
    t = submit(session, c.Follow("melody", c.FromUpload(riff(1.0, 48000), 48000, 4.0)))
    assert t.error is None and state(session)["melody"] == "upload 4 s"
    t = submit(session, c.Follow("melody"))
    assert t.error is None and state(session)["melody"] == "off"
    snap = state(session)
    assert snap["state"] == PLAYING and snap["underruns"] == 0 and snap["errors"] == 0


def test_a_prompt_change_keeps_the_melody_and_a_newer_change_supersedes(session):
    time.sleep(1.5)
    submit(session, c.Follow("melody", c.FromHistory(1.0)))
    first = session.submit(c.SetPrompt("a march", fade_s=0))
    second = submit(session, c.SetPrompt("a waltz", fade_s=2.0))
    assert first.wait(5)
    assert first.error and "superseded" in first.error  # answered once: refused, never also applied
    assert second.error is None and "without a crossfade" in (second.note or "")
    view = state(session)
    assert view["prompts"] == [{"text": "a waltz", "weight": 1.0}] and view["melody"] == "history 1 s"


def test_a_continuation_and_a_stop_play_cycle_work_on_a_melody_stream(session):
    time.sleep(2.0)
    t = submit(session, c.ContinueHistory(1.0))
    assert t.error is None and t.frame is not None
    submit(session, c.Stop())
    t = submit(session, c.Follow("melody", c.FromHistory(1.0)))  # stopped: prefilled at once, heard from the next play
    assert t.error is None
    submit(session, c.Play())
    time.sleep(1.0)
    snap = state(session)
    assert snap["state"] == PLAYING and snap["melody"] == "history 1 s" and snap["errors"] == 0


@pytest.mark.parametrize(
    "cmd, message",
    [
        (c.Follow("melody", c.FromFile("/no/such/riff.wav", 8.0)), "riff.wav"),
        (c.Follow("melody", c.FromInput(2.0)), "no input device"),
        (c.SetWeightedPrompts((("a", 1.0), ("b", 1.0))), "one prompt at a time"),
        (c.Follow("melody", c.FromUpload(np.zeros((0, 1), np.float32), 32000, 8.0)), "non-empty"),
    ],
)
def test_what_cannot_work_is_refused_in_a_sentence_and_the_music_goes_on(session, cmd, message):
    time.sleep(0.5)
    t = submit(session, cmd)
    assert t.error and message in t.error
    time.sleep(0.5)
    snap = state(session)
    assert snap["state"] == PLAYING and snap["underruns"] == 0 and snap["errors"] == 0


def test_a_melody_on_a_text_checkpoint_is_refused_in_a_sentence(tiny):
    with playing(tiny, window_s=4.0, context_s=1.5) as s:
        time.sleep(1.0)
        t = submit(s, c.Follow("melody", c.FromHistory(1.0)))
        assert t.error and "no melody conditioning" in t.error
        assert state(s)["melody"] == "off"
