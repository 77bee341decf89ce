"""How many columns a step can prefill for a slide or a continuation on this machine.

A window being prepared rides in the live step's own forward (`engine.generator`), so it costs only
the extra columns' compute, not another read of the weights - but that compute still grows with the
chunk: on a 2-core CPU musicgen-small's step costs ~1.15x with 2 extra columns a row and ~1.5x with 4
(BENCHMARKS.md), while tiny takes 16 almost for free. `[stream] slide_chunk = 0` asks for the most
columns that keep a step within `limit` x a plain one, measured once at start on scratch caches.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable

import torch
from musicgen_live.engine.generator import MIN_CHUNK
from musicgen_live.engine.lm import Segment
from musicgen_live.engine.model import MusicGen

CANDIDATES = (16, 8, 6, 4, 3, 2)
LIMIT = 1.4  # a preparing step may cost this much of a plain one
POSITION = 256  # where the timed columns sit: a context of a few seconds


@functools.lru_cache(maxsize=4)  # once per loaded model (several sessions share one)
def prefill_chunk(model: MusicGen, limit: float = LIMIT, repeats: int = 5) -> int:
    """The largest candidate chunk whose step costs at most `limit` x a plain step (at least 2)."""
    lm, K = model.lm, model.spec.lm.num_codebooks
    cross = model.conditioner.condition("", guided=True).cross
    live, prep = lm.new_cache(2, POSITION + 1), lm.new_cache(2, POSITION + 1)
    gen = torch.Generator().manual_seed(0)
    tokens = lambda n: torch.randint(0, model.spec.lm.card, (2, K, n), generator=gen).to(model.device)  # noqa: E731
    one = tokens(1)

    def plain() -> None:
        lm.forward_segments(one, [Segment(2, POSITION, live, [cross])])

    def fused(chunk: int, chunk_tokens: torch.Tensor) -> Callable[[], object]:
        segments = [
            Segment(2, POSITION, live, [cross]),
            Segment(2, POSITION // 2, prep, [cross], columns=chunk, logits=False),
        ]
        return lambda: lm.forward_segments([one, chunk_tokens], segments)

    codec = _codec_ms(model, repeats)
    base = codec + _median_ms(plain, repeats)
    for chunk in CANDIDATES:
        if codec + _median_ms(fused(chunk, tokens(chunk)), repeats) <= limit * base:
            return chunk
    return MIN_CHUNK


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


def _median_ms(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up: first calls pick kernels
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(1000 * (time.perf_counter() - t0))
    return sorted(times)[len(times) // 2]
