"""`musicgen-live bench-patterns`: what a codebook pattern costs, steps/s and frames/s side by side.

A pattern with more steps than frames (flattening: one step per codebook group a frame) needs a
faster step to play in real time; this says how much faster. One model (a built-in size, random
weights) plays each pattern in turn, rounds interleaved (A, B, C, A, B, C ...) so a host's slow
minute falls on every pattern alike; every pattern is stepped by the same loop
(`engine.pattern_run`, as audiocraft's `generate` steps it), guided, greedy, over one window of
`frames` frames.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from musicgen_live.engine.codebook_patterns import PatternSpec
from musicgen_live.engine.model import MusicGen
from musicgen_live.engine.pattern_run import generate_with_pattern
from musicgen_live.engine.sampling import SamplingParams
from musicgen_live.engine.stats import median

PROMPT = "lo-fi hip hop beat with warm keys and vinyl crackle"


@dataclass
class PatternTiming:
    pattern: PatternSpec
    frames: int
    steps: int = 0  # decoder forwards a run takes (one per step sampled; the pattern's tail included)
    seconds: list[float] = field(default_factory=list)  # one per round

    @property
    def steps_per_s(self) -> float:
        return self.steps / median(self.seconds)

    @property
    def frames_per_s(self) -> float:
        return self.frames / median(self.seconds)


def run_pattern_bench(
    model: MusicGen,
    patterns: list[PatternSpec],
    frames: int,
    rounds: int,
    cfg: float = 3.0,
    say: Callable[[str], None] = print,
) -> list[PatternTiming]:
    """Each pattern's run of `frames` frames, `rounds` times, interleaved; the model ends on the
    pattern it started with."""
    own = model.codebook_pattern
    timings = [PatternTiming(p, frames) for p in patterns]
    params = SamplingParams(greedy=True, cfg=cfg)
    cond = model.conditioner.condition(PROMPT, guided=cfg != 1.0)
    try:
        for r in range(rounds):
            for t in timings:
                model.play_pattern(t.pattern)
                t0 = time.perf_counter()
                _, steps = generate_with_pattern(model, t.pattern, cond, frames, params)
                t.seconds.append(time.perf_counter() - t0)
                t.steps = len(steps)
            say(f"round {r + 1}/{rounds}: " + ", ".join(f"{t.seconds[-1]:.2f} s" for t in timings))
    finally:
        model.play_pattern(own)
    return timings


def format_pattern_bench(timings: list[PatternTiming], frame_rate: float) -> str:
    width = max(len(t.pattern.describe()) for t in timings)
    lines = [f"  {'pattern':{width}s}  steps  steps/frame  steps/s  frames/s  x real time"]
    for t in timings:
        lines.append(
            f"  {t.pattern.describe():{width}s}  {t.steps:5d}  {t.steps / t.frames:11.2f}  {t.steps_per_s:7.1f}  "
            f"{t.frames_per_s:8.1f}  {t.frames_per_s / frame_rate:11.2f}"
        )
    return "\n".join(lines)
