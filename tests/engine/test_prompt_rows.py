"""The prompt rows of a stream's batch, apart from any cache. Protects: a blend says which cache
rows to copy (a new prompt continues from the loudest row's history) and which to drop, as one
order that equals applying its steps one after the other; a crossfade ramps weights a frame at a
time and drops the silent rows when it ends; no room for old and new together stops the quietest
leaving prompts at once; bad weights are refused in one sentence and change nothing."""

import pytest
import torch
from musicgen_live.engine.conditioning import Condition
from musicgen_live.engine.errors import ContextError
from musicgen_live.engine.prompt_rows import PromptRow, PromptRows
from musicgen_live.engine.sampling import SamplingParams


def cond(text: str) -> Condition:
    return Condition(text=text, cross=None, tokens=1)


def rows(*weighted: tuple[str, float], capacity: int = 4, style_row: bool = False) -> PromptRows:
    return PromptRows([PromptRow(cond(t), w) for t, w in weighted], guided=True, style_row=style_row, capacity=capacity)


def texts(r: PromptRows) -> list[tuple[str, float]]:
    return [(row.condition.text, round(row.weight, 6)) for row in r.rows]


def apply(order: list[int], cache: list[str]) -> list[str]:
    return [cache[i] for i in order]


def test_a_new_prompt_at_once_replaces_the_rows_and_starts_from_the_loudest_history():
    r = rows(("a", 0.25), ("b", 0.75))
    cache = ["hist a", "hist b", "uncond"]
    order, cut = r.blend_to([(cond("c"), 2.0)], fade_frames=0)
    assert cut == 0 and texts(r) == [("c", 1.0)]
    assert apply(order, cache) == ["hist b", "uncond"]  # c continues b's music; a and b are gone


def test_one_order_equals_the_blend_then_the_drop():
    """Kept 'b' at 1, 'a' to 0 and dropped, new 'c' at 0: the rows without a fade."""
    r = rows(("a", 0.5), ("b", 0.5))
    order, _ = r.blend_to([(cond("b"), 1.0), (cond("c"), 0.0)], fade_frames=0)
    assert texts(r) == [("b", 1.0)]
    assert apply(order, ["A", "B", "U"]) == ["B", "U"]


def test_a_crossfade_ramps_a_frame_at_a_time_and_drops_silence_at_its_end():
    r = rows(("a", 1.0))
    order, cut = r.blend_to([(cond("b"), 1.0)], fade_frames=4)
    assert cut == 0 and apply(order, ["A", "U"]) == ["A", "A", "U"]  # b starts as a copy of a
    steps = []
    for _ in range(4):
        steps.append(r.advance_fade())
        if r.fade is not None:
            assert abs(sum(row.weight for row in r.rows) - 1.0) < 1e-9
    assert steps[:3] == [None, None, None] and texts(r) == [("b", 1.0)]
    assert apply(steps[3], ["A", "B", "U"]) == ["B", "U"]
    assert r.advance_fade() is None and r.fade is None


def test_no_room_for_old_and_new_stops_the_quietest_leaving_prompts():
    r = rows(("a", 0.1), ("b", 0.6), ("c", 0.3), capacity=4)
    order, cut = r.blend_to([(cond("x"), 1.0), (cond("y"), 1.0)], fade_frames=8)
    assert cut == 1  # a (quietest) stops at once; c and b fade out beside x and y
    assert [row.condition.text for row in r.rows] == ["b", "c", "x", "y"]
    assert apply(order, ["A", "B", "C", "U"]) == ["B", "C", "B", "B", "U"]
    with pytest.raises(ContextError, match="at most 4 prompts"):
        rows(("a", 1.0), capacity=4).blend_to([(cond(t), 1.0) for t in "pqrst"], fade_frames=0)


@pytest.mark.parametrize("prompts", [[], [("x", -1.0), ("y", 2.0)], [("x", 0.0)]])
def test_bad_weights_are_refused_and_change_nothing(prompts):
    r = rows(("a", 1.0))
    with pytest.raises(ContextError):
        r.blend_to([(cond(t), w) for t, w in prompts], fade_frames=0)
    assert texts(r) == [("a", 1.0)] and r.fade is None


def test_the_tail_follows_the_prompts_and_guidance_reads_the_unconditional_row_last():
    r = rows(("a", 1.0), style_row=True, capacity=1)
    assert (r.tail, r.count, r.tail_rows()) == (2, 3, [1, 2])
    logits = torch.stack([torch.full((2, 3), v) for v in (5.0, 3.0, 1.0)])  # prompt, style, uncond
    mixed = r.mix(logits, SamplingParams(cfg=3.0))  # no cfg_beta: plain guidance, style row unread
    assert torch.equal(mixed, torch.full((2, 3), 1.0 + 3.0 * (5.0 - 1.0)))
