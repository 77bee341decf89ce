"""Live melody streams (MusicGen-Melody checkpoints), each against its one-shot equivalent.

Protects: a melody prefix prefilled a chunk at a time (riding in the live steps, like a slide)
equals one prefilled at once; an endless melody stream slides without a gap, its prefix first in
every window; a continuation spread over steps equals a restart from the same codes under the
same prefix; a new condition (melody and/or text, of another length) at any step around a slide
never stalls the stream and is live within a bounded number of steps; what a melody stream cannot
do is said in a sentence."""

from __future__ import annotations

import pytest
import torch
from musicgen_live.engine.errors import ContextError
from musicgen_live.engine.generator import Phase, StreamGenerator
from musicgen_live.engine.lm import Segment
from musicgen_live.engine.model import MusicGen
from musicgen_live.engine.presets import ENCODEC_32K, T5_TINY, Arch, save_random_checkpoint
from musicgen_live.engine.sampling import SamplingParams

from .test_melody import tones

GREEDY = SamplingParams(greedy=True, cfg=3.0)
WINDOW, CONTEXT, CHUNK = 60, 20, 4
ARCH = Arch(
    hidden=48,
    layers=2,
    heads=4,
    ffn=96,
    codec=dict(ENCODEC_32K, num_filters=8, hidden_size=32, codebook_dim=32),
    text=dict(T5_TINY, vocab_size=4096),
    melody=True,
    chroma_length=24,
)


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> MusicGen:
    path = tmp_path_factory.mktemp("live-melody")
    save_random_checkpoint(str(path), ARCH, seed=5)
    return MusicGen.load(str(path), progress=None)


def condition(model: MusicGen, prompt: str | None = "a folk tune", seconds: float | None = 2.0):
    chroma = None if seconds is None else model.chroma(tones(seconds))
    return model.melody_condition(prompt, None, True, chroma=chroma)


def stream(model: MusicGen, cond=None, **kw) -> StreamGenerator:
    gen = StreamGenerator(model, kw.pop("params", SamplingParams(top_k=50)), seed=7, decode_chunk=25)
    gen.start(
        cond or condition(model),
        capacity_frames=WINDOW,
        context_frames=CONTEXT,
        guided=True,
        slide_chunk=CHUNK,
        **kw,
    )
    return gen


def test_a_prefix_prefilled_in_chunks_equals_one_prefilled_at_once(model):
    cond = condition(model)
    prefix = cond.prefix
    assert prefix is not None
    L = prefix.shape[1]
    tokens = torch.randint(0, 2048, (2, 4, 1), generator=torch.Generator().manual_seed(0))
    from musicgen_live.engine.kvcache import PrefixKV

    one = model.lm.new_cache(2, L + 8)
    model.lm.forward_prefixed(tokens, one, PrefixKV(prefix))
    chunked = model.lm.new_cache(2, L + 8)
    zeros = torch.zeros(2, 4, 7, dtype=torch.long)
    for s in range(0, L, 7):
        n = min(7, L - s)
        seg = Segment(2, s, chunked, [], columns=n, logits=False, states=prefix[:, s : s + n])
        model.lm.forward_segments(zeros[..., :n], [seg])
    model.lm.forward_segments(tokens, [Segment(2, 0, chunked, [], offset=L)])
    assert (chunked.k[..., : L + 1, :] - one.k[..., : L + 1, :]).abs().max() < 1e-4
    assert (chunked.v[..., : L + 1, :] - one.v[..., : L + 1, :]).abs().max() < 1e-4


def test_an_endless_melody_stream_slides_without_gaps(model):
    gen = stream(model)
    released = 0
    hop, hold = model.spec.codec.hop, model.codec.hold_back
    for i in range(300):
        before = gen.frames_done
        released += gen.step().audio.shape[-1]
        if i >= 4:
            assert gen.frames_done == before + 1
        assert released >= max(0, gen.frames_done * hop - hold) - 25 * hop  # decode_chunk holds up to 25 frames
    assert gen.slides >= 3


def test_a_continuation_spread_over_steps_equals_a_restart_under_the_same_prefix(model):
    codes = torch.randint(0, 2048, (4, 18), generator=torch.Generator().manual_seed(3))

    def started():
        g = stream(model, params=GREEDY)
        for _ in range(10):
            g.step()
        return g

    spread = started()
    handle = spread.continue_from(codes)
    steps = 0
    while handle.frame is None:
        assert spread.phase == Phase.CONTINUING
        spread.step()
        steps += 1
    at_once = started()
    for _ in range(steps):
        at_once.step()
    at_once.restart(codes)
    assert at_once.next_frame == spread.next_frame == handle.frame
    got = torch.cat([spread.step().codes for _ in range(15)], dim=1)
    want = torch.cat([at_once.step().codes for _ in range(15)], dim=1)
    assert torch.equal(got, want)


@pytest.fixture(scope="module")
def first_slide(model):
    gen, steps, begun = stream(model), 0, None
    while gen.slides == 0:
        gen.step()
        steps += 1
        if begun is None and gen.phase == Phase.SLIDING:
            begun = steps
    return begun, steps - begun


CHANGES = {
    "new melody": lambda m: condition(m, seconds=3.0),
    "melody off": lambda m: condition(m, seconds=None),
    "longer text": lambda m: condition(m, "a much longer prompt about a folk tune over a droning bass"),
    "no text": lambda m: condition(m, None),
}


@pytest.mark.parametrize("change", list(CHANGES))
def test_a_new_condition_at_any_step_around_a_slide_never_stalls_and_goes_live(model, first_slide, change):
    begun, length = first_slide
    for offset in range(-2, length + 2, 2):
        gen = stream(model)
        for _ in range(begun + offset):
            gen.step()
        handle = gen.set_condition(CHANGES[change](model))
        live_after = None
        for i in range(2 * WINDOW):
            before = gen.next_frame
            gen.step()  # would raise ContextError at the window's end if a preparation missed its deadline
            took_over = gen.phase == Phase.PLAYING or gen.next_frame != before + 1
            assert gen.next_frame == before + 1 or took_over, (offset, i)
            if live_after is None and gen.condition_live(handle):
                live_after = i + 1
        assert live_after is not None and live_after <= WINDOW, (offset, live_after)
        assert gen.slides >= 2, offset


def test_a_new_condition_during_a_continuation_prefills_it_again_under_the_new_one(model):
    gen = stream(model)
    for _ in range(5):
        gen.step()
    cont = gen.continue_from(torch.randint(0, 2048, (4, 15), generator=torch.Generator().manual_seed(1)))
    gen.step()
    handle = gen.set_condition(condition(model, seconds=3.0))
    for _ in range(WINDOW):
        gen.step()
        if cont.frame is not None:
            break
    assert cont.frame is not None and not cont.superseded
    assert gen.condition_live(handle)


def test_what_a_melody_stream_cannot_do_is_said_in_a_sentence(model, tiny):
    gen = stream(model)
    with pytest.raises(ContextError, match="prompt and melody together"):
        gen.set_prompts([(condition(model), 1.0)])
    with pytest.raises(ContextError, match="positions this stream keeps"):
        gen.set_condition(condition(model, " ".join(["very long prompt"] * 60)))
    text_gen = StreamGenerator(tiny, SamplingParams(cfg=3.0))
    text_gen.start(tiny.conditioner.condition("x"), capacity_frames=100, guided=True)
    with pytest.raises(ContextError, match="only a melody checkpoint"):
        text_gen.set_condition(condition(model))
    for _ in range(3):
        gen.step()  # refused changes left the stream as it was
