"""The [stream] section of config.toml: how the real-time session runs."""

from __future__ import annotations

from dataclasses import dataclass, field


MAX_DECODE_FRAMES = 50  # one second: past that the added latency defeats a live tool


@dataclass(frozen=True)
class StreamConfig:
    output: str = "default"  # default | null | file:PATH | a device name or index
    input: str = ""  # capture device for "continue from input" ("" = none)
    buffer_ms: float = 200.0  # audio kept ready ahead of the output (the latency floor)
    blocksize: int = 256  # frames per output callback
    window_s: float = 30.0  # LM context window before it slides (at most the model's)
    context_s: float = 12.0  # context kept across a slide (audiocraft keeps 12 s)
    slide_chunk: int = 0  # columns a slide or continuation prefills per step; 0 = measured at start
    decode_frames: int = 1  # frames per codec push: 2 costs 20 ms more latency, saves ~25 % of the decode
    fade_s: float = 0.0  # default crossfade for prompt changes
    history_s: float = 30.0  # own output kept for "continue"
    autoplay: bool = True  # start playing when the session starts
    gain: float = 1.0
    prompt: str = ""  # the prompt the session starts with
    sessions: int = 1  # independent streams on one engine (each on OSC / WebSocket port + i)
    extra_outputs: list[str] = field(default_factory=list)  # outputs of sessions 2.. (missing: null)
