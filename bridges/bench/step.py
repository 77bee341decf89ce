"""`musicgen-live bench-step`: where a live step's time goes, for several weight formats side by side.

Each format gets its own model (random weights of a built-in size, or a checkpoint) and its own
guided stream; the streams are stepped in interleaved rounds (A for `steps` steps, then B, then A
...) so a host's slow minute falls on every format alike, and all stand at the same cache length.
A step is split where Python can see it: the decoder's forward (weights, attention, norms: one
compiled call with int8 / int4 over a float16 cache), the codec's push (one frame to audio), and the
rest (sampling, the pattern, bookkeeping). `bench-matrices` splits the forward further.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from musicgen_live.engine.errors import UserError
from musicgen_live.engine.generator import StreamGenerator
from musicgen_live.engine.model import MusicGen
from musicgen_live.engine.sampling import SamplingParams
from musicgen_live.engine.stats import median

# a format's third field: how the codec runs ("": as a live session runs it)
CODEC_DECODERS: dict[str, bool | None] = {"": None, "python": False, "compiled": True}


@dataclass
class StepSplit:
    precision: str  # weights, or "weights/kv" where the cache type differs from the run's
    weight_mb: float  # decoder matrices a step reads
    step_ms: list[float] = field(default_factory=list)
    forward_ms: list[float] = field(default_factory=list)
    codec_ms: list[float] = field(default_factory=list)

    def mean(self, what: list[float]) -> float:
        return statistics.fmean(what) if what else 0.0


def _timed(fn: Callable[..., Any], into: list[float]) -> Callable[..., Any]:
    def timed(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        out = fn(*args, **kwargs)
        into.append(1000 * (time.perf_counter() - t0))
        return out

    return timed


def run_step_bench(
    model: str,
    precisions: list[str],
    kv: str = "float16",
    codec: str = "int8",
    rounds: int = 6,
    steps: int = 50,
    window_frames: int = 1500,
    warmup: int = 20,
    say: Callable[[str], None] | None = None,
) -> list[StepSplit]:
    """`rounds` x `steps` timed steps per format, after `warmup` untimed ones (frames: a large one
    times the late window, where the cache is long, and its slide). A format is a weight precision,
    "precision/kv" for a cache type other than `kv`, and "precision/kv/python" or ".../compiled"
    to choose how the codec runs (`Codec(compiled=...)`; by default as a live session runs it)."""
    splits, gens = [], []
    for fmt in precisions:
        p, _, rest = fmt.partition("/")
        own_kv, _, decoder = rest.partition("/")
        if decoder not in CODEC_DECODERS:
            raise UserError(f"'{decoder}' in '{fmt}' is not a codec decoder ({', '.join(CODEC_DECODERS)})")
        if say:
            say(f"loading {model} with {p} weights, kv {own_kv or kv}, codec {codec} {decoder}".rstrip())
        m = MusicGen.load(model, progress=None, precision=p, kv=own_kv or kv, codec=codec)
        if decoder:
            m.codec = m.codec.with_precision(codec, compiled=CODEC_DECODERS[decoder])
        split = StepSplit(fmt, m.lm.step_weight_bytes / 1e6)
        # the instance's own attributes, read by the step: the model is this bench's alone
        if m.lm._step is not None:
            m.lm._step = _timed(m.lm._step, split.forward_ms)  # type: ignore[assignment]
        else:
            m.lm.forward_segments = _timed(m.lm.forward_segments, split.forward_ms)  # type: ignore[method-assign]
        m.codec.push = _timed(m.codec.push, split.codec_ms)  # type: ignore[method-assign]
        g = StreamGenerator(m, SamplingParams(top_k=250), seed=1)
        g.start(
            [(m.conditioner.condition("warm pads"), 1.0)],
            capacity_frames=min(window_frames, m.max_frames),
            context_frames=min(window_frames, m.max_frames) // 3,
            guided=True,
        )
        for _ in range(warmup):
            g.step()
        split.forward_ms.clear()
        split.codec_ms.clear()
        splits.append(split)
        gens.append(g)
    for r in range(rounds):
        for split, g in zip(splits, gens):
            for _ in range(steps):
                t0 = time.perf_counter()
                g.step()
                split.step_ms.append(1000 * (time.perf_counter() - t0))
        if say:
            say(f"round {r + 1}/{rounds}: " + ", ".join(f"{s.precision} {s.mean(s.step_ms):.1f} ms" for s in splits))
    return splits


def format_step_bench(model: str, kv: str, codec: str, splits: list[StepSplit]) -> str:
    lines = [
        f"bench-step --model {model} (kv {kv}, codec {codec}): mean ms a step, interleaved rounds",
        "| weights | MB read a step | step (p50) | decoder forward | codec push | the rest | frames/s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for s in splits:
        step, fwd, cod = s.mean(s.step_ms), s.mean(s.forward_ms), s.mean(s.codec_ms)
        p50 = median(s.step_ms) if s.step_ms else 0.0
        lines.append(
            f"| {s.precision} | {s.weight_mb:.0f} | {step:.1f} ({p50:.1f}) | {fwd:.1f} | {cod:.1f} | "
            f"{step - fwd - cod:.1f} | {1000 / step if step else 0:.1f} |"
        )
    return "\n".join(lines)
