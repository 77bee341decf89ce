"""A live session of a MusicGen-Style checkpoint (`tiny-style`) on a clock-paced null output.

Protects: the style changes mid-stream from the session's own history (and from a file, an
upload), and switches off; double guidance's `cfg_beta` turns live and off; a prompt change keeps
the style; every change is answered once, when heard, shows in the shared state, and costs no
underrun; the stream's prefix really changes (the window playing was prefilled under the new
style); what cannot work is refused in one sentence and the music goes on; a text checkpoint
refuses style commands and cfg_beta.
"""

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
def tiny_style() -> MusicGen:
    return MusicGen.load("tiny-style", progress=None)


@pytest.fixture
def session(tiny_style):
    with playing(tiny_style, window_s=6.0, context_s=2.0, history_s=10, prompt="dub") as s:
        yield s


def chords(seconds: float, rate: int = 32000) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.2 * sum(np.sin(2 * np.pi * f * t) for f in (196.0, 246.9, 293.7)))[:, None].astype(np.float32)


def test_the_style_follows_history_mid_stream_a_file_and_an_upload_and_switches_off(session, tmp_path):
    time.sleep(3.5)  # more than the 3 s excerpt of history
    before = session.gen.state.prefix
    t = submit(session, c.Follow("style", c.FromHistory(3.0)))
    assert t.error is None and t.frame is not None, t.error
    assert session.gen.state.prefix is not before  # the window now playing was prefilled under the style
    assert state(session)["style"] == "history 3 s"
    path = tmp_path / "chords.wav"
    sf.write(path, chords(4.0), 32000)
    t = submit(session, c.Follow("style", c.FromFile(str(path), 4.0)))
    assert t.error is None and state(session)["style"] == "file chords.wav 4 s"
    t = submit(session, c.Follow("style", c.FromUpload(chords(3.5, 48000), 48000, 3.5)))
    assert t.error is None and state(session)["style"] == "upload 3.5 s"
    t = submit(session, c.Follow("style"))
    assert t.error is None and state(session)["style"] == "off"
    snap = state(session)
    assert snap["state"] == PLAYING and snap["underruns"] == 0 and snap["errors"] == 0


def test_double_guidance_turns_on_and_off_live_and_a_prompt_keeps_the_style(session):
    time.sleep(3.5)
    submit(session, c.Follow("style", c.FromHistory(3.0)))
    t = submit(session, c.Set("cfg_beta", 5.0))
    assert t.error is None and session.gen.params.cfg_beta == 5.0
    t = submit(session, c.SetPrompt("minimal techno", fade_s=0))
    assert t.error is None
    view = state(session)
    assert view["style"] == "history 3 s" and view["cfg_beta"] == 5.0
    assert view["prompts"] == [{"text": "minimal techno", "weight": 1.0}]
    assert submit(session, c.Set("cfg_beta", 0.0)).error is None and session.gen.params.cfg_beta is None
    snap = state(session)
    assert snap["underruns"] == 0 and snap["errors"] == 0


@pytest.mark.parametrize(
    "cmd, message",
    [
        (
            c.Follow("style", c.FromUpload(np.zeros((32000, 1), np.float32), 32000, 1.0)),
            "style needs at least 3 s of audio; got 1.00 s",
        ),
        (c.Follow("style", c.FromFile("/no/such/chords.wav", 3.0)), "chords.wav"),
        (c.Follow("style", c.FromInput(3.0)), "no input device"),
        (c.Follow("melody", c.FromHistory(2.0)), "has no melody conditioning"),
        (c.SetWeightedPrompts((("a", 1.0), ("b", 1.0))), "one prompt at a time"),
    ],
)
def test_what_cannot_work_is_refused_in_a_sentence_and_the_music_goes_on(session, cmd, message):
    time.sleep(0.5)
    t = submit(session, cmd)
    assert t.error and message in t.error, t.error
    time.sleep(0.5)
    snap = state(session)
    assert snap["state"] == PLAYING and snap["underruns"] == 0 and snap["errors"] == 0 and snap["style"] == "off"


def test_a_text_checkpoint_refuses_style_and_double_guidance_in_a_sentence(tiny):
    with playing(tiny, window_s=4.0, context_s=1.5) as s:
        time.sleep(1.0)
        t = submit(s, c.Follow("style", c.FromHistory(3.0)))
        assert t.error and "has no style conditioning: style commands need a MusicGen-Style checkpoint" in t.error
        t = submit(s, c.Set("cfg_beta", 4.0))
        assert t.error and "cfg_beta (double guidance) needs a MusicGen-Style checkpoint" in t.error
        view = state(s)
        assert view["style"] == "off" and view["cfg_beta"] == 0.0 and view["state"] == PLAYING
