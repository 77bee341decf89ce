"""Live-stream mechanics of the generator, each against its one-shot equivalent.

Protects: a window prefilled a chunk at a time equals one prefilled at once; endless streams slide
without a gap and without a step doing a whole prefill; prompt changes and crossfades land at frame
boundaries and keep history; restarting from codes equals starting a new stream from them."""

import pytest
import torch
from musicgen_live.engine.errors import ContextError
from musicgen_live.engine.generator import Phase, StreamGenerator
from musicgen_live.engine.lm import Segment
from musicgen_live.engine.model import MusicGen
from musicgen_live.engine.sampling import SamplingParams

GREEDY = SamplingParams(greedy=True, cfg=3.0)


@pytest.fixture(scope="module")
def model(checkpoint_dir):
    return MusicGen.load(str(checkpoint_dir("h64-l2-h4")), progress=None)


@pytest.fixture(scope="module", params=["batched", "two-step"])
def each_guidance(request, checkpoint_dir):
    """The model with guidance in one forward, then in two (audiocraft's two_step_cfg)."""
    return MusicGen.load(str(checkpoint_dir("h64-l2-h4")), guidance=request.param, progress=None)


def test_chunked_prefill_equals_one_shot_prefill(model):
    cond = model.conditioner.condition("ambient pads")
    tokens = torch.randint(0, 2048, (2, 4, 50), generator=torch.Generator().manual_seed(0))
    one = model.lm.new_cache(2, 64)
    ref = model.lm.forward(tokens, 0, one, [cond.cross])
    chunked = model.lm.new_cache(2, 64)
    for s in range(0, 50, 16):
        out = model.lm.forward(tokens[..., s : s + 16], s, chunked, [cond.cross])
    assert (out - ref).abs().max() < 1e-4
    assert (chunked.k[..., :50, :] - one.k[..., :50, :]).abs().max() < 1e-4


def test_endless_stream_slides_without_gaps(each_guidance):
    model = each_guidance
    gen = StreamGenerator(model, SamplingParams(top_k=50), seed=1)
    cond = model.conditioner.condition("drum and bass")
    released = gen.start(
        [(cond, 1.0)], capacity_frames=120, context_frames=40, guided=True, slide_chunk=8, max_prompts=2
    ).audio.shape[-1]
    hop, hold = model.spec.codec.hop, model.codec.hold_back
    for i in range(600):
        before = gen.frames_done
        released += gen.step().audio.shape[-1]
        if i >= 4:  # past the delay pattern's warm-up every step completes exactly one frame
            assert gen.frames_done == before + 1
        # no gap, no repeat: exactly the final samples of every complete frame are out
        assert released == max(0, gen.frames_done * hop - hold)
    assert gen.slides >= 3


def test_same_prompt_again_changes_nothing(model):
    cond = model.conditioner.condition("jazz trio")
    runs = []
    for resend in (False, True):
        gen = StreamGenerator(model, GREEDY)
        gen.start([(cond, 1.0)], total_frames=None, capacity_frames=200, guided=True, max_prompts=2)
        codes = []
        for i in range(40):
            if resend and i == 10:
                gen.set_prompts([(cond, 1.0)], fade_frames=0)
            codes.append(gen.step().codes)
        runs.append(torch.cat(codes, dim=1))
    assert torch.equal(*runs)


def test_prompt_change_lands_at_the_next_frame_and_fades_drop_old_rows(model):
    a, b = model.conditioner.condition("harp"), model.conditioner.condition("distorted guitar")
    gen = StreamGenerator(model, GREEDY)
    gen.start([(a, 1.0)], capacity_frames=300, guided=True, max_prompts=2)
    for _ in range(5):
        gen.step()
    gen.set_prompts([(b, 1.0)], fade_frames=10)
    assert [r.condition.text for r in gen.rows] == ["harp", "distorted guitar"]
    weights = []
    for _ in range(10):
        gen.step()
        weights.append([round(r.weight, 3) for r in gen.rows])
    assert weights[0] == [0.9, 0.1] and weights[4] == [0.5, 0.5]
    assert [r.condition.text for r in gen.rows] == ["distorted guitar"]
    assert gen.rows[0].weight == 1.0


def test_new_prompt_row_continues_the_old_rows_history(model):
    """Switching to a new prompt at once must equal having run that prompt's row with the loudest
    row's history: with the cache rows really moving (the blend's quieter row dropped, the
    unconditional row moving up), the next logits match a cache built by hand from those histories
    whose cross-attention alone changed."""
    a, b, new = (model.conditioner.condition(t) for t in ("harp", "organ", "glockenspiel"))
    gen = StreamGenerator(model, GREEDY)
    gen.start([(a, 0.7), (b, 0.3)], capacity_frames=300, guided=True, max_prompts=2)  # rows [harp, organ, uncond]
    for _ in range(6):
        gen.step()
    tokens, seg = gen.step_input()
    filled = seg.start  # columns already in the cache
    by_hand = model.lm.new_cache(2, 300)
    for mine, theirs in ((by_hand.k, seg.cache.k), (by_hand.v, seg.cache.v)):
        mine[:, 0, :, :filled] = theirs[:, 0, :, :filled]  # the loudest prompt's history
        mine[:, 1, :, :filled] = theirs[:, 2, :, :filled]  # the unconditional row's
    gen.set_prompts([(new, 1.0)], fade_frames=0)
    assert [r.condition.text for r in gen.rows] == ["glockenspiel"]
    tokens, seg = gen.step_input()
    got = model.lm.forward_segments(tokens, [seg])
    want = model.lm.forward_segments(tokens, [Segment(2, filled, by_hand, [new.cross])])
    assert torch.equal(got, want)


def test_restart_from_codes_equals_a_new_stream_from_them(model):
    cond = model.conditioner.condition("lofi")
    prompt = torch.randint(0, 2048, (4, 20), generator=torch.Generator().manual_seed(4))
    fresh = StreamGenerator(model, GREEDY)
    fresh.start([(cond, 1.0)], prompt_codes=prompt, capacity_frames=300, guided=True, max_prompts=2)
    want = torch.cat([fresh.step().codes for _ in range(15)], dim=1)
    live = StreamGenerator(model, GREEDY)
    live.start([(cond, 1.0)], capacity_frames=300, guided=True, max_prompts=2, context_frames=40)
    for _ in range(30):
        live.step()
    live.restart(prompt)
    live.step()  # feeds the prompt's last column: where `start` left the fresh stream
    got = torch.cat([live.step().codes for _ in range(15)], dim=1)
    assert torch.equal(got, want)


def test_live_controls_reject_bad_values(model):
    gen = StreamGenerator(model, GREEDY)
    gen.start(model.conditioner.condition("x"), capacity_frames=100, guided=True, max_prompts=2)
    with pytest.raises(ContextError, match="at most"):
        gen.set_prompts([(model.conditioner.condition(t), 1.0) for t in "abc"])
    with pytest.raises(ContextError, match="weights"):
        gen.set_prompts([(model.conditioner.condition("a"), 0.0)])
    with pytest.raises(ValueError):
        gen.set_params(SamplingParams(temperature=0))


def test_a_crossfade_with_no_room_stops_the_quietest_leaving_prompts_at_once(model):
    """Four rows: [x 0.7, y 0.3] -> [a, b, c] over a fade needs five; y (the quietest leaving) stops
    at once, x fades out, and the fade ends on the three new prompts alone."""
    gen = StreamGenerator(model, GREEDY)
    cond = model.conditioner.condition
    gen.start([(cond("x"), 0.7), (cond("y"), 0.3)], capacity_frames=100, guided=True, max_prompts=4)
    gen.step()
    assert gen.set_prompts([(cond(t), 1.0) for t in "abc"], fade_frames=5) == 1
    assert [r.condition.text for r in gen.rows] == ["x", "a", "b", "c"]
    for _ in range(8):
        gen.step()
    assert sorted(r.condition.text for r in gen.rows) == ["a", "b", "c"]
    assert gen.set_prompts([(cond("a"), 1.0)], fade_frames=5) == 0  # room enough: nothing cut


# -- phases: a change at any step of a slide (the bug that silenced streams for good) ----------------

WINDOW, CONTEXT, CHUNK = 60, 20, 4  # a slide every ~40 frames, ~8 steps long


def sliding_stream(model, continue_chunk=None):
    gen = StreamGenerator(model, SamplingParams(top_k=50), seed=7, decode_chunk=25)  # the codec is not under test here
    gen.start(
        [(model.conditioner.condition("harp"), 1.0)],
        capacity_frames=WINDOW,
        context_frames=CONTEXT,
        guided=True,
        max_prompts=2,
        slide_chunk=CHUNK,
        continue_chunk=continue_chunk,
    )
    return gen


@pytest.fixture(scope="module")
def first_slide(model):
    """(steps before the first slide begins, steps it lasts) for `sliding_stream`."""
    gen, steps, begun = sliding_stream(model), 0, None
    while gen.slides == 0:
        gen.step()
        steps += 1
        if begun is None and gen.phase == Phase.SLIDING:
            begun = steps
    return begun, steps - begun


CHANGES = {
    "new prompt": lambda m, g: g.set_prompts([(m.conditioner.condition("organ"), 1.0)]),
    "crossfade": lambda m, g: g.set_prompts([(m.conditioner.condition("choir"), 1.0)], fade_frames=10),
    "blend": lambda m, g: g.set_prompts([(m.conditioner.condition("harp"), 0.3), (m.conditioner.condition("x"), 0.7)]),
    "longer context": lambda m, g: g.set_context(10_000),
    "shorter context": lambda m, g: g.set_context(3),
    "continuation": lambda m, g: g.continue_from(
        torch.randint(0, 2048, (4, 35), generator=torch.Generator().manual_seed(1))
    ),
}


@pytest.mark.parametrize("change", list(CHANGES))
def test_a_change_at_any_step_around_a_slide_never_stalls_the_stream(model, first_slide, change):
    begun, length = first_slide
    for offset in range(-2, length + 2):  # just before, all through, and just after the slide
        gen = sliding_stream(model)
        for _ in range(begun + offset):
            gen.step()
        CHANGES[change](model, gen)
        for i in range(2 * WINDOW):  # more slides
            before = gen.next_frame
            gen.step()  # would raise ContextError at the window's end if a preparation missed its deadline
            took_over = gen.next_frame == gen.frames_done and gen.phase == Phase.PLAYING
            assert gen.next_frame == before + 1 or took_over, (offset, i)
        assert gen.slides >= 2, offset


def test_a_prompt_change_during_a_slide_does_not_restart_it(model, first_slide):
    begun, length = first_slide
    plain, changed = sliding_stream(model), sliding_stream(model)
    for gen in (plain, changed):
        for _ in range(begun + length // 2):
            gen.step()
    changed.set_prompts([(model.conditioner.condition("organ"), 1.0)])
    for _ in range(length):
        plain.step()
        changed.step()
        assert plain.slides == changed.slides  # the swap comes at the same step


def test_a_continuation_prefilled_a_chunk_per_step_equals_one_prefilled_at_once(each_guidance):
    """`continue_from` spreads the prefill over steps (riding in the live steps' forwards); the
    stream it hands over to must equal a restart that prefilled the same codes in one go."""
    model = each_guidance
    codes = torch.randint(0, 2048, (4, 30), generator=torch.Generator().manual_seed(3))
    cond = model.conditioner.condition("lofi")

    def stream():
        g = StreamGenerator(model, GREEDY)
        g.start([(cond, 1.0)], capacity_frames=200, context_frames=60, guided=True, max_prompts=2, slide_chunk=4)
        for _ in range(25):
            g.step()
        return g

    spread = stream()
    handle = spread.continue_from(codes)
    steps = 0
    while handle.frame is None:
        assert spread.phase == Phase.CONTINUING
        spread.step()
        steps += 1
    assert steps == -(-30 // 4)  # 4 columns a step
    at_once = stream()
    for _ in range(steps):
        at_once.step()  # the same frames before the take-over
    at_once.restart(codes)
    assert at_once.next_frame == spread.next_frame == handle.frame
    got = torch.cat([spread.step().codes for _ in range(20)], dim=1)
    want = torch.cat([at_once.step().codes for _ in range(20)], dim=1)
    assert torch.equal(got, want)


def test_a_newer_continuation_or_a_reset_supersedes_one_not_yet_heard(model):
    gen = sliding_stream(model)
    for _ in range(5):
        gen.step()
    first = gen.continue_from(torch.zeros(4, 20, dtype=torch.long))
    gen.step()
    second = gen.continue_from(torch.ones(4, 20, dtype=torch.long))
    assert first.superseded and gen.continuation is second
    gen.restart()
    assert second.superseded and gen.continuation is None and gen.phase == Phase.PLAYING
    third = gen.continue_from(torch.ones(4, 20, dtype=torch.long))
    gen.cancel(third)
    assert third.superseded and gen.continuation is None


def test_a_late_continuation_slides_first_rather_than_catch_up_in_dear_chunks(model, monkeypatch):
    """A continuation asked for too late in a window to be prefilled at its own pace before the
    window ends waits for a slide (begun at once) instead of catching up with chunks larger than a
    slide's: no step carries more than a slide's chunk, wherever in the window it was asked for.
    (A continuation rides one column a step here, as musicgen-small's does on a 2-core CPU.)"""
    fed: list[int] = []
    forward = model.lm.forward_segments

    def spy(tokens, segments, *a, **k):
        fed.append(sum(s.columns for s in segments if not s.logits))
        return forward(tokens, segments, *a, **k)

    monkeypatch.setattr(model.lm, "forward_segments", spy)
    codes = torch.randint(0, 2048, (4, 50), generator=torch.Generator().manual_seed(5))
    trimmed = []
    for offset in range(0, 100, 4):
        gen = StreamGenerator(model, SamplingParams(top_k=50), seed=7, decode_chunk=25)
        cond = model.conditioner.condition("harp")
        gen.start([(cond, 1.0)], capacity_frames=120, context_frames=50, guided=True, slide_chunk=2, continue_chunk=1)
        for _ in range(offset):
            gen.step()
        fed.clear()
        handle = gen.continue_from(codes)
        for _ in range(400):
            gen.step()
            if handle.frame is not None:
                break
        assert handle.frame is not None, offset
        assert gen.slide_chunk == 3  # 2 columns a step would keep this window sliding without end
        assert max(fed) <= gen.slide_chunk, (offset, max(fed))
        if handle.trimmed is not None:  # only its last frames fitted the window after the slide
            assert handle.trimmed == 50 and 0 < handle.frames < 50
            assert torch.equal(handle.codes, codes[:, -handle.frames :])
            trimmed.append(offset)
    assert len(trimmed) < 25  # early requests keep every frame
