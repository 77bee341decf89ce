"""How many columns a step can prefill for a slide or a continuation on this machine.

A window being prepared rides in the live step's own forward (`engine.generator`), so it costs only
the extra columns' compute, not another read of the weights - but that compute still grows with the
chunk, and more than the weight reads suggest: the extra segment has its own attention ops in every
layer. On the 2-core Intel host a musicgen-small int8 step at column 1 024 costs 1.35x with 1
extra column a row, 1.44x with 2 and 1.63x with 4 (the codec's share of a step dilutes the LM's
1.5-1.8x), while tiny takes
16 almost for free (BENCHMARKS.md). `[stream] slide_chunk = 0` asks for the most columns that keep
a step within `limit` x a plain one, measured once per model on scratch caches: a slide takes at
least 2 (it must gain on the live window), a continuation may take 1.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable

import torch
from musicgen_live.engine.generator import MIN_CHUNK
from musicgen_live.engine.lm import Segment
from musicgen_live.engine.model import MusicGen
from musicgen_live.engine.stats import median

CANDIDATES = (16, 8, 6, 4, 3, 2, 1)
LIMIT = 1.5  # a preparing step may cost this much of a plain one (the live-safe bound)
# where the live column sits: late in a 30 s window, where preparations run (a step's attention
# reads every cached column: small int8 at chunk 3 costs 1.49x at column 256, 1.55x at 1 024)
POSITION = 1024


def prefill_chunk(model: MusicGen, minimum: int = MIN_CHUNK, limit: float = LIMIT) -> int:
    """The largest candidate chunk (at least `minimum`) whose step costs at most `limit` x a plain
    step; `minimum` when none does."""
    return _largest_within(step_costs(model), minimum, limit)


def _largest_within(costs: dict[int, float], minimum: int, limit: float) -> int:
    """The largest candidate (at least `minimum`) whose step costs at most `limit` x a plain one."""
    return next((c for c in CANDIDATES if c >= minimum and costs[c] <= limit), minimum)


def continuation_chunk(costs: dict[int, float], pace: float, limit: float = LIMIT) -> int:
    """Columns a continuation prefills a step, from `step_costs` and the stream's real-time
    factor `pace`. A machine at or above real time keeps every step within `limit` x a plain one
    (the live-safe bound: no hole in the music). One below real time has holes whatever it does,
    and there the bound only delays the continuation (musicgen-small at 0.4x: 1 column a step, a
    12 s continuation heard ~94 s later); it takes the chunk with the least extra cost per column
    instead (extra rows are cheapest in bulk), which also adds the least to the holes."""
    if pace >= 1.0:
        return _largest_within(costs, 1, limit)
    return min(CANDIDATES, key=lambda c: ((costs[c] - 1.0) / c, -c))


@functools.lru_cache(maxsize=4)  # once per loaded model (several sessions share one)
def step_costs(model: MusicGen, repeats: int = 7) -> dict[int, float]:
    """A step carrying each candidate chunk, against a plain step (codec included); each timing
    the median of `repeats` calls, plain and chunked interleaved so that a slow spell hits both."""
    lm, K = model.lm, model.spec.lm.num_codebooks
    conds = [] if model.spec.lm.prefix_conditioned else [model.conditioner.condition("", guided=True).kv]  # a prefix
    pos = min(POSITION, model.spec.lm.max_positions - 2)
    live, prep = lm.new_cache(2, pos + 1), lm.new_cache(2, pos + 1)
    gen = torch.Generator().manual_seed(0)
    tokens = lambda n: torch.randint(0, model.spec.lm.card, (2, K, n), generator=gen).to(model.device)  # noqa: E731
    one = tokens(1)

    def plain() -> None:
        lm.forward_segments(one, [Segment(2, pos, live, conds)])

    def fused(chunk: int, chunk_tokens: torch.Tensor) -> Callable[[], object]:
        segments = [
            Segment(2, pos, live, conds),
            Segment(2, pos // 2, prep, conds, columns=chunk, logits=False),
        ]
        return lambda: lm.forward_segments([one, chunk_tokens], segments)

    codec = _codec_ms(model, repeats)
    calls: dict[int, Callable[[], object]] = {0: plain, **{c: fused(c, tokens(c)) for c in CANDIDATES}}
    times = _interleaved_ms(calls, repeats)
    base = codec + times[0]
    return {c: (codec + times[c]) / base for c in CANDIDATES}


def _codec_ms(model: MusicGen, repeats: int) -> float:
    """One frame through the streaming decoder, past its warm-up."""
    codec = model.codec
    state = codec.new_stream(batch=model.audio_channels)
    frames = torch.zeros(
        model.audio_channels,
        model.spec.lm.num_codebooks // model.audio_channels,
        1,
        dtype=torch.long,
        device=model.device,
    )
    for _ in range(6):
        codec.push(state, frames)
    return _median_ms(lambda: codec.push(state, frames), repeats)


def _interleaved_ms(calls: dict[int, Callable[[], object]], repeats: int) -> dict[int, float]:
    """Median milliseconds of each call, timed in rounds of one call each."""
    for fn in calls.values():
        fn()  # warm-up: first calls pick kernels
    times: dict[int, list[float]] = {k: [] for k in calls}
    for _ in range(repeats):
        for k, fn in calls.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(1000 * (time.perf_counter() - t0))
    return {k: median(v) for k, v in times.items()}


def _median_ms(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up: first calls pick kernels
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(1000 * (time.perf_counter() - t0))
    return median(times)


def pace_line(model: str, device: str, precision: str, pace: float) -> str:
    """The start-up line: how fast this model plays here and, below real time, what to try (only
    what is not in use already). `precision`: the kernels, e.g. "int8" or "int8, kv float16, two-step
    guidance"."""
    line = f"{model} on {device} ({precision}) plays at {pace:.1f}x real time here"
    if pace >= 1.1:
        return line
    cpu = device == "cpu"
    unused = [
        tip
        for tip, useful in (
            ("--guidance batched", "two-step" in precision),  # first: it halves the weight reads
            ("--precision int8", cpu and not precision.startswith(("int8", "int4"))),
            ("--kv float16", cpu and "kv float16" not in precision and "kv int8" not in precision),
            ("--codec int8", cpu and "codec int8" not in precision),
        )
        if useful
    ]
    tips = unused + ["a shorter --window", "fewer sessions"] + (["a GPU"] if cpu else [])
    return line + ": expect gaps - try " + ", ".join(tips[:-1]) + " or " + tips[-1]
