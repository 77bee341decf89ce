"""`bench-quantize`: how close to the bar a quantized change is heard, on the output's sample clock.

A session plays into a file (the sample clock: sample n plays at `started_at + n / rate`) on a
Link-shaped steady beat clock; every bar a gain change (silence, then sound again) is sent at a
random moment of the bar before, quantized to the next bar. Each change's edge in the file is
compared with the bar's sample.
"""

from __future__ import annotations

import random
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from musicgen_live.engine.model import MusicGen
from musicgen_live.engine.stats import percentile
from musicgen_live.streamer import commands as c
from musicgen_live.streamer.config import StreamConfig
from musicgen_live.streamer.outputs import FileOutput, make_output
from musicgen_live.streamer.quantize import SteadyClock
from musicgen_live.streamer.session import Session


@dataclass
class QuantizeBench:
    tempo: float
    quantum: float
    changes: int
    offsets_ms: list[float]  # heard edge minus the bar, per change (negative: early)
    late_notes: int
    underruns: int

    @property
    def within_frame(self) -> int:
        return sum(abs(o) <= 20.0 for o in self.offsets_ms)


def run_quantize_bench(model: MusicGen, bars: int, tempo: float, quantum: float, seed: int = 0) -> QuantizeBench:
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "quantized.wav"
        out = make_output(f"file:{wav}", 2, 0.2)
        assert isinstance(out, FileOutput)
        s = Session(model, out, StreamConfig(buffer_ms=200))
        clock = SteadyClock(tempo=tempo, quantum=quantum)
        s.attach_clock(clock, quantum)
        s.start()
        tickets = []
        try:
            while s.output.ring.read < s.output.rate:  # a second heard
                time.sleep(0.05)
            bar_s = quantum * 60.0 / tempo
            for i in range(bars):
                time.sleep(rng.uniform(0.05, 0.9) * bar_s)  # anywhere in the bar
                t = s.submit(c.Set("gain", 0.0 if i % 2 == 0 else 1.0))
                t.wait(2 * bar_s + 5)
                tickets.append(t)
                while clock.beat_at(time.perf_counter()) < (t.beat or 0.0) + 0.1:
                    time.sleep(0.01)
            time.sleep(0.5)
        finally:
            s.close()
        import soundfile as sf

        audio, rate = sf.read(str(wav), dtype="float32")
    loud = np.abs(audio).max(axis=1) > 0
    started = out.started_at or 0.0
    offsets = []
    for i, t in enumerate(tickets):
        if t.beat is None or t.error:
            continue
        bar = (clock.time_at(t.beat) - started) * rate
        lo, hi = int(bar - 0.2 * rate), int(bar + 0.2 * rate)
        window = loud[max(lo, 0) : hi]
        # silence starts (gain 0) or sound resumes (gain 1): the first sample of the new state
        edge = np.flatnonzero(~window if i % 2 == 0 else window)
        if len(edge):
            offsets.append(1000 * (lo + int(edge[0]) - bar) / rate)
    late = sum(1 for t in tickets if t.note and "late" in t.note)
    return QuantizeBench(tempo, quantum, len(tickets), offsets, late, s.output.underruns)


def format_quantize_bench(r: QuantizeBench) -> str:
    a = [abs(o) for o in r.offsets_ms]
    p50 = percentile(sorted(r.offsets_ms), 0.5) or 0.0
    return "\n".join(
        [
            f"{r.changes} gain changes quantized to bars of {r.quantum:g} beats at {r.tempo:g} bpm (file output clock)",
            f"  heard - bar: p50 {p50:+.1f} ms, |worst| {max(a, default=0):.1f} ms; "
            f"within one frame (20 ms): {r.within_frame}/{len(r.offsets_ms)}",
            f"  late notes {r.late_notes}, underruns {r.underruns}",
        ]
    )
