"""The [stream] section of config.toml: how the real-time session runs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

from msgspec import Meta
from musicgen_live.engine.config import Seconds

MAX_DECODE_FRAMES = 50  # one second: past that the added latency defeats a live tool
MAX_SESSIONS = 8  # sessions one serve runs on one engine


@dataclass(frozen=True)
class StreamConfig:
    output: Annotated[str, Meta(min_length=1)] = "default"  # default | null | file:PATH | a device name or index
    input: str = ""  # capture device for "continue from input" ("" = none)
    buffer_ms: Annotated[float, Meta(gt=0, le=10_000)] = 200.0  # audio kept ready ahead of the output
    blocksize: Annotated[int, Meta(ge=16, le=8192)] = 256  # frames per output callback
    window_s: Seconds = 30.0  # LM context window before it slides (at most the model's)
    context_s: Seconds = 12.0  # context kept across a slide (audiocraft keeps 12 s)
    slide_chunk: Annotated[int, Meta(ge=0, le=256)] = 0  # columns a slide / continuation prefills a step; 0 = measured
    decode_frames: Annotated[int, Meta(ge=1, le=MAX_DECODE_FRAMES)] = 1  # frames per codec push (2: +20 ms, -25 %)
    fade_s: Annotated[float, Meta(ge=0, le=60)] = 0.0  # default crossfade for prompt changes
    history_s: Annotated[float, Meta(gt=0, le=600)] = 30.0  # own output kept for "continue"
    autoplay: bool = True  # start playing when the session starts
    gain: Annotated[float, Meta(ge=0, le=4)] = 1.0
    prompt: Annotated[str, Meta(max_length=2000)] = ""  # the prompt the session starts with
    sessions: Annotated[int, Meta(ge=1, le=MAX_SESSIONS)] = 1  # streams on one engine (on OSC / WebSocket port + i)
    extra_outputs: list[str] = field(default_factory=list)  # outputs of sessions 2.. (missing: null)
    read_timeout_s: Annotated[float, Meta(gt=0, le=600)] = 10.0  # a file / input / upload read's deadline
    max_file_mb: Annotated[float, Meta(gt=0)] = 1024.0  # larger files are refused unread
    stall_s: Annotated[float, Meta(gt=0, le=600)] = 1.0  # no step for this long while playing: "stalled"

    def check(self) -> None:
        if len(self.extra_outputs) > self.sessions - 1:
            raise ValueError(f"extra_outputs: {len(self.extra_outputs)} given for {self.sessions - 1} extra session(s)")
