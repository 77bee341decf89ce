"""The compiled decoder step (`kernels/decoder_step.cpp`): with int8 weights over float16 caches, a
forward that needs no batch-independent rows runs in one C++ call. Protects: it gives the Python
fast path's logits bit for bit through every phase of a live stream (the prefill, slides and
continuations prefilled in chunks inside the live steps, a crossfade between prompts, a melody
prefix, two-step guidance), and it is the path those steps really take."""

from __future__ import annotations

import pytest
import torch
from musicgen_live.engine.batch import Batch
from musicgen_live.engine.generator import Generator
from musicgen_live.engine.model import MusicGen
from musicgen_live.engine.sampling import SamplingParams


def _stream(m: MusicGen, compiled: bool, steps: int = 200) -> tuple[torch.Tensor, list[torch.Tensor], list[int]]:
    """A live stream's codes, the logits of every forward, and the segment count of each forward
    the compiled step ran."""
    step, calls, logits = m.lm._step, [], []
    assert step is not None

    def counted(x, segments, *args):
        calls.append(len(segments))
        return step(x, segments, *args)

    forward = m.lm.forward_segments

    def spy(*args, **kwargs):
        z = forward(*args, **kwargs)
        logits.append(z.clone())
        return z

    m.lm._step = counted if compiled else None
    m.lm.forward_segments = spy  # type: ignore[method-assign]
    try:
        g = Generator(m, SamplingParams(top_k=50), seed=5)
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
        return g.codes(), logits, calls
    finally:
        m.lm._step = step
        del m.lm.forward_segments


@pytest.mark.parametrize(("name", "guidance"), [("tiny", "batched"), ("tiny-melody", "auto"), ("tiny", "two-step")])
def test_the_compiled_step_gives_the_python_steps_logits_bit_for_bit(name, guidance):
    m = MusicGen.load(name, progress=None, precision="int8", kv="float16", guidance=guidance)
    codes, logits, calls = _stream(m, compiled=True)
    want_codes, want_logits, _ = _stream(m, compiled=False)
    # steps carrying a slide's or a continuation's chunk (two segments) took it too
    assert calls.count(2) >= 5
    if guidance != "two-step":  # two-step pads each pass of a plain step to fixed rows (`engine.batch`):
        assert len(calls) >= 200  # padded rows must stay independent, which only the Python path computes
    assert len(logits) == len(want_logits)
    assert all(torch.equal(a, b) for a, b in zip(logits, want_logits))
    assert torch.equal(codes, want_codes)


def test_only_int8_weights_over_a_float16_cache_get_the_compiled_step():
    assert MusicGen.load("tiny", progress=None, precision="int8", kv="float16").lm._step is not None
    assert MusicGen.load("tiny", progress=None, precision="int8").lm._step is None
    assert MusicGen.load("tiny", progress=None, kv="float16").lm._step is None
    assert MusicGen.load("tiny", progress=None, exact=True).lm._step is None


def _batch_run(m: MusicGen, compiled: bool, steps: int = 120) -> tuple[torch.Tensor, list[torch.Tensor], list[int]]:
    """Two streams stepped together in a `Batch` (padding rows, batch-independent rows): the codes,
    every forward's logits, and the segment counts of the forwards the compiled step ran."""
    step, calls, logits = m.lm._step, [], []
    assert step is not None

    def counted(x, segments, *args):
        calls.append(len(segments))
        return step(x, segments, *args)

    forward = m.lm.forward_segments

    def spy(*args, **kwargs):
        z = forward(*args, **kwargs)
        logits.append(z.clone())
        return z

    m.lm._step = counted if compiled else None
    m.lm.forward_segments = spy  # type: ignore[method-assign]
    try:
        batch = Batch(m, rows=6)
        streams = []
        for seed, text in ((1, "warm pads"), (2, "drums")):
            g = Generator(m, SamplingParams(top_k=50), seed=seed)
            cond = m.conditioner.condition(text)
            g.start([(cond, 1.0)], capacity_frames=80, context_frames=20, guided=True, max_prompts=2)
            streams.append(g)
        codes = []
        for i in range(steps):
            if i == 20:
                streams[1].set_prompts([(m.conditioner.condition("bass"), 1.0)], fade_frames=10)
            codes.append(torch.cat([r.codes for r in batch.step(streams)], dim=-1))
        assert streams[0].slides >= 1
        return torch.cat(codes, dim=-1), logits, calls
    finally:
        m.lm._step = step
        del m.lm.forward_segments


def test_a_batch_of_streams_gets_the_python_batchs_logits_bit_for_bit():
    m = MusicGen.load("tiny", progress=None, precision="int8", kv="float16")
    codes, logits, calls = _batch_run(m, compiled=True)
    want_codes, want_logits, _ = _batch_run(m, compiled=False)
    assert len(calls) >= 120  # every batched step took it, padding rows and all
    assert len(logits) == len(want_logits)
    assert all(torch.equal(a, b) for a, b in zip(logits, want_logits))
    assert torch.equal(codes, want_codes)
