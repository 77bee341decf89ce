"""Several sessions on one engine (`SessionGroup`). Protects: each session keeps playing to its own
output; a session's audio is the same (same codes; samples within float rounding, the
codec decodes the sessions together) whether it plays alone or while others join, take commands and
leave; a full group refuses a newcomer clearly. Whether three sessions keep up in real time is a
question of the machine, measured by `bench-stream --sessions`, not asserted here (CI hosts are slower)."""

from __future__ import annotations

import time

import numpy as np
import pytest
from musicgen_live.engine.config import SamplingConfig
from musicgen_live.streamer import commands as c
from musicgen_live.streamer.config import StreamConfig
from musicgen_live.streamer.group import SessionGroup
from musicgen_live.streamer.outputs import make_output
from musicgen_live.streamer.session import PLAYING, Session

STREAM = StreamConfig(buffer_ms=400, window_s=4.0, context_s=1.5, slide_chunk=8)  # 3 sessions + prefills on 2 cores


def recorded(tiny, prompt: str, seed: int, decode_frames: int = 1) -> tuple[Session, list[np.ndarray]]:
    cfg = StreamConfig(**{**vars(STREAM), "prompt": prompt, "decode_frames": decode_frames})
    s = Session(tiny, make_output("null", 2, 0.4), cfg, SamplingConfig(seed=seed, top_k=50))
    chunks: list[np.ndarray] = []
    s.audio_taps.append(lambda _i, frames: chunks.append(frames.copy()))
    return s, chunks


def first_seconds(chunks: list[np.ndarray], rate: int, seconds: float) -> np.ndarray:
    audio = np.concatenate(chunks)
    n = int(seconds * rate)
    assert len(audio) >= n, f"only {len(audio) / rate:.2f} s were played"
    return audio[:n]


def wait_for(chunks: list[np.ndarray], rate: int, seconds: float, timeout: float = 30) -> None:
    end = time.time() + timeout
    while sum(len(x) for x in chunks) < seconds * rate and time.time() < end:
        time.sleep(0.05)


def test_session_sounds_the_same_alone_and_in_company(tiny):
    rate, seconds = tiny.sample_rate, 6.0  # past a window slide (4 s window)
    group = SessionGroup(tiny, max_sessions=3)
    group.start()
    try:
        a, alone = recorded(tiny, "warm pads", seed=1)
        group.add(a)
        wait_for(alone, rate, seconds)
        group.remove(a)
    finally:
        group.close()
    reference = first_seconds(alone, rate, seconds)

    group = SessionGroup(tiny, max_sessions=3)
    group.start()
    try:
        a, with_others = recorded(tiny, "warm pads", seed=1)
        b, b_audio = recorded(tiny, "drums", seed=2)
        d, _ = recorded(tiny, "choir", seed=3)
        group.add(a)
        group.add(b)
        wait_for(with_others, rate, 1.0)
        assert b.submit(c.Set("cfg", 6.0)).wait(10) and b.submit(c.Set("temperature", 1.5)).wait(10)
        assert b.submit(c.SetPrompt("jungle breaks", fade_s=0.5)).wait(10)  # a crossfade: an extra row
        group.add(d)
        wait_for(with_others, rate, 3.0)
        group.remove(b)
        wait_for(with_others, rate, seconds)
        assert b_audio, "the second session played too"
        for s in (a, d):
            snap = s.snapshot()
            assert snap["state"] == PLAYING and snap["errors"] == 0, (s is a, snap)
        assert a.snapshot()["slides"] >= 1
    finally:
        group.close()
    # the same codes; the audio differs at most in float rounding (the codec batches the streams)
    np.testing.assert_allclose(first_seconds(with_others, rate, seconds), reference, rtol=0, atol=1e-5)


def test_full_group_refuses_a_newcomer_and_close_releases_a_session_not_yet_joined(tiny):
    group = SessionGroup(tiny, max_sessions=1)  # not started: `first` stays a pending join
    try:
        first = recorded(tiny, "a", 0)[0]
        group.add(first)
        with pytest.raises(ValueError, match="full"):
            group.add(recorded(tiny, "b", 0)[0])
    finally:
        group.close()
    assert not first.output._thread.is_alive(), "a session that had not joined yet was left playing"


def test_decode_frames_changes_when_audio_is_released_not_what_it_is(tiny):
    """`[stream] decode_frames` gathers frames per codec push (less decode work, more latency): the
    same session must sound the same with 1 or 3 frames a push, alone and in a group, where the
    batched codec sees streams with and without frames due in the same step."""
    rate, seconds = tiny.sample_rate, 3.0
    solo, chunks_1 = recorded(tiny, "warm pads", seed=4)
    solo.start()
    try:
        wait_for(chunks_1, rate, seconds)
    finally:
        solo.close()
    solo, chunks_3 = recorded(tiny, "warm pads", seed=4, decode_frames=3)
    solo.start()
    try:
        wait_for(chunks_3, rate, seconds)
        assert solo.snapshot()["underruns"] == 0
    finally:
        solo.close()
    reference = first_seconds(chunks_1, rate, seconds)
    np.testing.assert_allclose(first_seconds(chunks_3, rate, seconds), reference, rtol=0, atol=1e-5)
    assert min(len(x) for x in chunks_3[1:-1]) >= 3 * tiny.spec.codec.hop  # released 3 frames at a time

    group = SessionGroup(tiny, max_sessions=2)
    group.start()
    try:
        a, grouped = recorded(tiny, "warm pads", seed=4, decode_frames=3)
        b, _ = recorded(tiny, "drums", seed=5, decode_frames=2)
        group.add(a)
        group.add(b)
        wait_for(grouped, rate, seconds)
    finally:
        group.close()
    np.testing.assert_allclose(first_seconds(grouped, rate, seconds), reference, rtol=0, atol=1e-5)
