"""A stereo checkpoint (8 codebooks, L/R pairs) live. Protects: the session plays two different
channels through slides; a continuation from its own stereo output takes over; a mono file is
up-mixed for a stereo continuation and the sender is told so; a stereo file for a mono model is
mixed down and said so; the music goes on after each."""

from __future__ import annotations

import time

import numpy as np
import pytest
import soundfile as sf
from musicgen_live.engine.model import MusicGen
from musicgen_live.streamer import commands as c
from musicgen_live.streamer.config import StreamConfig
from musicgen_live.streamer.outputs import make_output
from musicgen_live.streamer.session import PLAYING, Session


@pytest.fixture(scope="module")
def tiny_stereo() -> MusicGen:
    return MusicGen.load("tiny-stereo", progress=None)


def started(model: MusicGen) -> Session:
    s = Session(model, make_output("null", 2, 0.3), StreamConfig(buffer_ms=300, window_s=3.0, context_s=1.0))
    s.start()
    return s


def answered(s: Session, cmd: c.Command) -> c.Ticket:
    t = s.submit(cmd)
    assert t.wait(60), f"{cmd} was not answered"
    return t


def frame(s: Session) -> int:
    return answered(s, c.Query()).result["frame"]


def test_stereo_session_plays_two_channels_and_continues(tiny_stereo, tmp_path):
    assert tiny_stereo.audio_channels == 2
    s = started(tiny_stereo)
    try:
        time.sleep(4.0)  # past a slide (3 s window)
        snap = answered(s, c.Query()).result
        assert snap["state"] == PLAYING and snap["slides"] >= 1 and snap["errors"] == 0
        played = s.sink.history.last(2.0)
        assert played.shape[1] == 2
        assert np.abs(played[:, 0] - played[:, 1]).max() > 1e-3, "left and right are the same"

        t = answered(s, c.ContinueHistory(1.0))
        assert t.error is None and t.note is None, (t.error, t.note)

        mono = tmp_path / "mono.wav"
        sf.write(mono, 0.1 * np.sin(np.arange(32000) / 20.0).astype(np.float32), 32000)
        t = answered(s, c.ContinueFile(str(mono), 1.0))
        assert t.error is None and "up-mixed to 2 channels" in (t.note or ""), (t.error, t.note)

        before = frame(s)
        time.sleep(0.5)
        assert frame(s) > before, "the music stopped after the continuations"
    finally:
        s.close()


def test_a_stereo_file_for_a_mono_model_is_mixed_down_and_said_so(tiny, tmp_path):
    s = started(tiny)
    try:
        stereo = tmp_path / "stereo.wav"
        sf.write(stereo, 0.1 * np.random.default_rng(0).standard_normal((32000, 2)).astype(np.float32), 32000)
        t = answered(s, c.ContinueFile(str(stereo), 1.0))
        assert t.error is None and "mixed down to 1 channel" in (t.note or ""), (t.error, t.note)
    finally:
        s.close()
