"""`musicgen-live bench-stream`: a real-time session measured the way a performer feels it.

Plays for `seconds`, sending a command every `every` seconds (alternating prompt and cfg changes)
and a stop -> play cycle now and then, and reports underruns, step times, the worst step while a
window slide was being prepared, command -> audible latency and time to first audio after play.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable

from engine.config import SamplingConfig
from engine.model import MusicGen
from engine.stats import percentile

from . import commands as c
from .config import StreamConfig
from .outputs import RingOutput
from .session import Session

PROMPTS = ["dark minimal techno", "bright disco strings", "ambient drone with bells", "broken beat jazz"]


@dataclass
class StreamBench:
    seconds: float
    output: str
    buffer_ms: float
    underruns: int
    device_underflows: int
    step_ms_p50: float
    step_ms_p99: float
    slides: int
    slide_step_ms_max: float | None
    command_latency_ms: list[float]
    first_audio_ms: list[float]


def run_stream_bench(
    model: MusicGen,
    output: RingOutput,
    stream: StreamConfig,
    seconds: float,
    every: float = 2.0,
    say: Callable[[str], None] = print,
) -> StreamBench:
    session = Session(model, output, stream, SamplingConfig())
    session.start()
    latency, first_audio = [], []
    t0 = time.perf_counter()
    n = 0
    try:
        while time.perf_counter() - t0 < seconds:
            time.sleep(every)
            n += 1
            if n % 10 == 0:  # a stop -> play cycle: time to first audio
                session.submit(c.Stop()).wait(5)
                time.sleep(0.3)
                t = session.submit(c.Play())
                time.sleep(1.0)
                if t.latency_ms is not None:
                    first_audio.append(t.latency_ms)
                continue
            cmd = c.SetPrompt(PROMPTS[n % len(PROMPTS)], fade_s=0) if n % 2 else c.Set("cfg", 3.0 + n % 4)
            t = session.submit(cmd)
            time.sleep(min(1.0, every * 0.9))
            if t.latency_ms is not None:
                latency.append(t.latency_ms)
            if n % 5 == 0:
                snap = session.snapshot()
                say(f"{snap['seconds']:6.1f} s  underruns {snap['underruns']}  step p50 {snap['step_ms_p50']:.1f} ms")
        snap = session.snapshot()
    finally:
        session.close()
    return StreamBench(
        seconds=snap["seconds"],
        output=output.describe(),
        buffer_ms=stream.buffer_ms,
        underruns=snap["underruns"],
        device_underflows=getattr(output, "device_underflows", 0),
        step_ms_p50=snap["step_ms_p50"],
        step_ms_p99=snap["step_ms_p99"],
        slides=snap["slides"],
        slide_step_ms_max=snap["prepare_step_ms_max"],
        command_latency_ms=latency,
        first_audio_ms=first_audio,
    )


def format_stream_bench(r: StreamBench) -> str:
    def pct(values: list[float], q: float) -> str:
        v = percentile(sorted(values), q)
        return "-" if v is None else f"{v:.0f}"

    return "\n".join(
        [
            f"{r.seconds:.1f} s of music to {r.output}, buffer {r.buffer_ms:.0f} ms",
            f"  underruns {r.underruns} (device underflow flags {r.device_underflows})",
            f"  step p50 {r.step_ms_p50:.1f} ms, p99 {r.step_ms_p99:.1f} ms; {r.slides} window slides, "
            f"worst step while sliding {r.slide_step_ms_max or 0:.1f} ms",
            f"  command -> audible: p50 {pct(r.command_latency_ms, 0.5)} ms, p99 {pct(r.command_latency_ms, 0.99)} ms "
            f"({len(r.command_latency_ms)} commands)",
            f"  time to first audio after play: median "
            f"{statistics.median(r.first_audio_ms) if r.first_audio_ms else 0:.0f} ms ({len(r.first_audio_ms)} stop/play cycles)",
        ]
    )
