"""The window as a speed setting (`musicgen-live bench-window`). Protects: the comparison reads the
same history as its reference until a window slides (KL exactly 0 there), slides where a full
window must, reports figures in range and the same ones on a second run, and every comparison that
cannot run says why in one sentence."""

from __future__ import annotations

import math

import pytest
from musicgen_live.bridges.bench.quality import compare_windows
from musicgen_live.engine.errors import ContextError
from musicgen_live.engine.model import MusicGen


@pytest.fixture(scope="module")
def tiny() -> MusicGen:
    return MusicGen.load("tiny", progress=None)


def test_a_window_that_slides_is_compared_after_its_first_slide(tiny):
    # 300 frames; a 100-frame window (104 columns with BOS and the delay tail) keeping 40 frames
    # fills at column 103, then every 60 columns: slides at 103, 163, 223, 283
    first, again = compare_windows(tiny, "dub", [(100, 40)], 300), compare_windows(tiny, "dub", [(100, 40)], 300)
    q = first[0]
    assert q.slides == 4 and q.frames == 300
    assert q.columns == 300 + 3 - 103  # every column from the first slide's to the last
    assert q.kl_before == 0.0  # the same history read the same way
    # tiny's near-flat distributions: a shorter history moves nearly every greedy token (0.5 %
    # agree), never all of them the same way as the long window's
    assert 0.0 <= q.top1_agreement < 0.5
    assert 0.0 < q.kl_mean <= q.kl_p99 <= q.kl_max and math.isfinite(q.kl_max)
    assert again == first  # the same seed, the same codes, the same figures
    assert (q.window_s, q.context_s) == (2.0, 0.8)


def test_the_more_context_a_window_keeps_the_more_often_it_slides(tiny):
    # after a slide the window holds the context plus the delay tail (3 columns) and refills when
    # its 104 columns are full: keeping 10 frames it slides every 90 columns, keeping 90 every 10
    short, long = compare_windows(tiny, "dub", [(100, 10), (100, 90)], 200)
    assert (short.slides, long.slides) == (2, 10)
    assert short.columns == long.columns == 200 + 3 - 103
    assert long.kl_mean < short.kl_mean  # more of the history kept: closer to the long window
    assert short.kl_before == long.kl_before == 0.0


@pytest.mark.parametrize(
    ("windows", "frames", "says"),
    [
        ([(100, 99)], 300, "must keep less context than it holds"),
        ([(100, 0)], 300, "must keep less context than it holds"),
        ([(300, 40)], 300, "does not slide within the 6 s compared"),
        ([(100, 40)], 5000, "must hold 1..2044 frames"),
    ],
)
def test_comparisons_that_cannot_run_say_why(tiny, windows, frames, says):
    with pytest.raises(ContextError, match=says):
        compare_windows(tiny, "dub", windows, frames)


def test_a_melody_checkpoint_is_refused_by_name():
    with pytest.raises(ContextError, match="text \\(cross-attention\\) checkpoints"):
        compare_windows(MusicGen.load("tiny-melody", progress=None), "dub", [(100, 40)], 300)
