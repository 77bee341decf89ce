"""How many columns a continuation prefills a step. Protects: a machine at or above real time keeps
every preparing step within the live-safe bound; one below real time (it has holes in the music
whatever it does) takes the chunk with the least extra cost per column, so a continuation is heard
seconds, not minutes, later; the generator takes a new size for a continuation under way."""

from __future__ import annotations

import pytest
import torch
from musicgen_live.engine.generator import StreamGenerator
from musicgen_live.engine.sampling import SamplingParams
from musicgen_live.streamer.calibrate import CANDIDATES, continuation_chunk

# step costs against a plain step, as measured on the 2-core host (BENCHMARKS.md)
SMALL_INT8 = {16: 2.2, 8: 1.8, 6: 1.7, 4: 1.6, 3: 1.5, 2: 1.4, 1: 1.3}
TINY = {c: 1.0 + 0.004 * c for c in CANDIDATES}


@pytest.mark.parametrize(
    ("costs", "pace", "chunk"),
    [
        (SMALL_INT8, 1.2, 3),  # just real time: the largest chunk within 1.5x
        (SMALL_INT8, 0.4, 16),  # far below: 16 columns at 2.2x = 0.075 of a step each, 1 at 1.3x = 0.3
        (TINY, 9.0, 16),
        (TINY, 0.9, 16),
        ({c: 1.6 + 0.1 * c for c in CANDIDATES}, 1.0, 1),  # nothing within the bound: one column a step
        ({16: 9.0, 8: 3.0, 6: 2.6, 4: 2.2, 3: 1.9, 2: 1.5, 1: 1.2}, 0.5, 1),  # bulk is not always cheaper
    ],
)
def test_the_continuation_chunk_follows_the_pace(costs, pace, chunk):
    assert continuation_chunk(costs, pace) == chunk


def test_a_larger_continuation_chunk_is_ready_in_fewer_steps(tiny):
    steps_to_ready = []
    for columns in (1, 8):
        g = StreamGenerator(tiny, SamplingParams(), seed=1)
        cond = tiny.conditioner.condition("pads", guided=True)
        g.start([(cond, 1.0)], capacity_frames=400, context_frames=100, guided=True, max_prompts=4, slide_chunk=8)
        for _ in range(20):
            g.step()
        g.set_continue_chunk(columns)
        cont = g.continue_from(torch.randint(0, 2048, (4, 80), generator=torch.Generator().manual_seed(3)))
        n = 0
        while cont.frame is None:
            g.step()
            n += 1
            assert n < 500
        steps_to_ready.append(n)
    assert steps_to_ready[0] >= 80 and steps_to_ready[1] <= 80 // 8 + 3, steps_to_ready
