"""The compiled decoder step (`kernels/decoder_step.cpp`): with int8 or int4 weights over float16 or int8 caches,
every fast-path forward runs in one C++ call. Protects: it gives the Python fast path's logits bit
for bit through every phase of a live stream (the prefill, slides and continuations prefilled in
chunks inside the live steps, a crossfade between prompts, a melody prefix, two-step guidance) and
through a batch of streams (padding and batch-independent rows), and it is the path those steps
really take."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
import torch
from musicgen_live.engine.batch import Batch
from musicgen_live.engine.generator import StreamGenerator
from musicgen_live.engine.model import MusicGen
from musicgen_live.engine.sampling import SamplingParams


@contextmanager
def _recorded(m: MusicGen, compiled: bool) -> Iterator[tuple[list[torch.Tensor], list[int]]]:
    """The logits of every forward run inside, and the segment count of each forward the compiled
    step ran; with `compiled` False the Python path runs them all."""
    step, calls, logits = m.lm._step, [], []
    assert step is not None
    forward = m.lm.forward_segments

    def counted(x, segments, *args):
        calls.append(len(segments))
        return step(x, segments, *args)

    def spy(*args, **kwargs):
        z = forward(*args, **kwargs)
        logits.append(z.clone())
        return z

    m.lm._step = counted if compiled else None
    m.lm.forward_segments = spy  # type: ignore[method-assign]
    try:
        yield logits, calls
    finally:
        m.lm._step = step
        del m.lm.forward_segments


def _stream(m: MusicGen, steps: int = 200) -> torch.Tensor:
    """A live stream through every phase; its codes."""
    g = StreamGenerator(m, SamplingParams(top_k=50), seed=5)
    if m.spec.lm.prefix_conditioned:
        first = second = m.melody_condition("a folk tune", None, True)
    else:
        first, second = m.conditioner.condition("warm pads"), m.conditioner.condition("drums")
    g.start([(first, 1.0)], capacity_frames=100, context_frames=30, guided=True, max_prompts=3, slide_chunk=8)
    for i in range(steps):
        if i == 30 and not m.spec.lm.prefix_conditioned:
            g.set_prompts([(first, 0.5), (second, 0.5)], fade_frames=10)  # two conditional rows
        if i == 150:
            assert g.slides >= 1
            g.continue_from(g.codes()[:, -20:])
        g.step()
    return g.codes()


def _batch(m: MusicGen, steps: int = 120) -> torch.Tensor:
    """Two streams stepped together in a `Batch` (padding rows, batch-independent rows), one of
    them crossfading to another prompt; their codes."""
    batch, streams = Batch(m, rows=6), []
    for seed, text in ((1, "warm pads"), (2, "drums")):
        g = StreamGenerator(m, SamplingParams(top_k=50), seed=seed)
        cond = m.conditioner.condition(text)
        g.start([(cond, 1.0)], capacity_frames=80, context_frames=20, guided=True, max_prompts=2)
        streams.append(g)
    codes = []
    for i in range(steps):
        if i == 20:
            streams[1].set_prompts([(m.conditioner.condition("bass"), 1.0)], fade_frames=10)
        codes.append(torch.cat([r.codes for r in batch.step(streams)], dim=-1))
    assert streams[0].slides >= 1
    return torch.cat(codes, dim=-1)


def _both(m: MusicGen, run: Callable[[MusicGen], torch.Tensor]) -> list[int]:
    """`run` on the compiled step and on the Python path: the same codes and the same logits of
    every forward, bit for bit; the compiled step's calls (their segment counts)."""
    with _recorded(m, compiled=True) as (logits, calls):
        codes = run(m)
    with _recorded(m, compiled=False) as (want_logits, _):
        want_codes = run(m)
    assert len(logits) == len(want_logits)
    assert all(torch.equal(a, b) for a, b in zip(logits, want_logits))
    assert torch.equal(codes, want_codes)
    return calls


@pytest.mark.parametrize(
    ("name", "guidance", "precision"),
    [
        ("tiny", "batched", "int8"),
        ("tiny-melody", "auto", "int8"),
        ("tiny", "two-step", "int8"),
        ("tiny", "batched", "int4"),
        ("tiny-melody", "auto", "int4"),
        ("tiny", "batched", "int4-kv8"),
        ("tiny-melody", "auto", "int8-kv8"),
        ("tiny", "two-step", "int4-kv8"),
    ],
)
def test_the_compiled_step_gives_the_python_steps_logits_bit_for_bit(name, guidance, precision):
    precision, _, kv = precision.partition("-kv")
    kv = {"": "float16", "8": "int8"}[kv]
    m = MusicGen.load(name, progress=None, precision=precision, kv=kv, guidance=guidance)
    calls = _both(m, _stream)
    assert len(calls) >= 200  # every step took it
    assert calls.count(2) >= 5  # steps carrying a slide's or a continuation's chunk (two segments) too


@pytest.mark.parametrize(("precision", "kv"), [("int8", "float16"), ("int4", "float16"), ("int4", "int8")])
def test_a_batch_of_streams_gets_the_python_batchs_logits_bit_for_bit(precision, kv):
    calls = _both(MusicGen.load("tiny", progress=None, precision=precision, kv=kv), _batch)
    assert len(calls) >= 120  # every batched step took it, padding rows and all


def test_only_int8_or_int4_weights_over_a_float16_cache_get_the_compiled_step():
    assert MusicGen.load("tiny", progress=None, precision="int8", kv="float16").lm._step is not None
    assert MusicGen.load("tiny", progress=None, precision="int4", kv="float16").lm._step is not None
    assert MusicGen.load("tiny", progress=None, precision="int4").lm._step is None
    assert MusicGen.load("tiny", progress=None, precision="int4", kv="int8").lm._step is not None
    assert MusicGen.load("tiny", progress=None, kv="int8").lm._step is None
    assert MusicGen.load("tiny", progress=None, precision="int8").lm._step is None
    assert MusicGen.load("tiny", progress=None, kv="float16").lm._step is None
    assert MusicGen.load("tiny", progress=None, exact=True).lm._step is None
