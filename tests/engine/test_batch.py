"""Several streams in one forward (`engine.batch.Batch`).

Protects: a stream's codes do not depend on who shares its batch - streams with other prompts,
guidance, sampling, seeds and positions joining and leaving, a crossfade that overflows one forward,
a continuation restarting another stream, window slides - for fp32, int8 and int4 weights (over a
float16 cache: the compiled step), guidance in one forward and in two; int8 and int4 rows do not
even depend on the batch's size; sampled streams stay reproducible from their seed inside a batch."""

import pytest
import torch
from musicgen_live.engine.batch import Batch
from musicgen_live.engine.errors import ContextError
from musicgen_live.engine.generator import StreamGenerator
from musicgen_live.engine.model import MusicGen
from musicgen_live.engine.sampling import SamplingParams

GREEDY = SamplingParams(greedy=True, cfg=3.0)


KERNELS = {  # precision, guidance, KV cache (int8 / int4 over float16: the compiled decoder step)
    "float32": ("float32", "batched", "float32"),
    "int8": ("int8", "batched", "float32"),
    "float32-two-step": ("float32", "two-step", "float32"),
    "int8-kv16": ("int8", "batched", "float16"),
    "int4": ("int4", "batched", "float32"),
    "int4-kv16": ("int4", "batched", "float16"),
    "int4-kv8": ("int4", "batched", "int8"),
}


@pytest.fixture(scope="module", params=list(KERNELS))
def model(request, checkpoint_dir):
    precision, guidance, kv = KERNELS[request.param]
    path = str(checkpoint_dir("h96-l3-h6-ffn200"))
    return MusicGen.load(path, progress=None, precision=precision, guidance=guidance, kv=kv)


def live(model, text, params, seed=0, window=60, context=20):
    g = StreamGenerator(model, params, seed=seed)
    g.start(
        [(model.conditioner.condition(text, guided=params.cfg != 1.0), 1.0)],
        capacity_frames=window,
        context_frames=context,
        guided=params.cfg != 1.0,
        max_prompts=2,
        slide_chunk=8,
    )
    return g


def run_a(model, batch, companions, steps=140):
    """Stream A's codes and logits over `steps`, stepped in `batch` with `companions(i)`."""
    a = live(model, "warm analog synth arpeggio", GREEDY)
    seen, finish = [], a.step_output
    a.step_output = lambda logits, **kw: (seen.append(logits.clone()), finish(logits, **kw))[1]
    codes = []
    for i in range(steps):
        results = batch.step([a] + companions(i))
        codes.append(results[0].codes)
    assert a.slides >= steps // 60  # the window slid while others came and went
    return torch.cat(codes, dim=-1), torch.stack(seen)


def test_stream_is_identical_alone_and_with_others(model):
    batch = Batch(model, rows=6)
    alone = run_a(model, batch, lambda i: [])

    b = live(model, "fast breakbeat drums", SamplingParams(top_k=20, cfg=5.0), seed=3)
    c = live(model, "solo piano", SamplingParams(greedy=True, cfg=1.0), seed=9, window=80)
    d = live(model, "choir", SamplingParams(top_p=0.9, temperature=1.3, cfg=2.0), seed=5)

    def companions(i):
        if i == 30:  # B blends to two prompts over 20 frames: A+B+C+D need 7 rows for a while
            b.set_prompts(
                [
                    (model.conditioner.condition("fast breakbeat drums"), 0.5),
                    (model.conditioner.condition("dub bass"), 0.5),
                ],
                fade_frames=20,
            )
        group = []
        if 10 <= i < 120:
            group.append(b)  # joins at 10, leaves at 120
        if i < 60 or i >= 90:
            group.append(c)  # leaves at 60, back at 90
        if i == 70:  # D continues from given audio codes (a continuation): a prefill of its own
            d.restart(
                torch.randint(0, 2048, (model.spec.lm.num_codebooks, 12), generator=torch.Generator().manual_seed(4))
            )
        if i >= 25:
            group.append(d)
        return group

    together = run_a(model, batch, companions)
    assert torch.equal(alone[0], together[0])  # greedy codes
    assert torch.equal(alone[1], together[1])  # and the logits, bit for bit


def test_sampled_stream_reproducible_in_a_batch(model):
    params = SamplingParams(top_k=50, cfg=3.0)
    batch = Batch(model, rows=4)
    runs = []
    for with_other in (False, True):
        a = live(model, "lofi", params, seed=42)
        other = live(model, "metal", params, seed=1)
        runs.append(torch.cat([batch.step([a, other] if with_other else [a])[0].codes for _ in range(50)], -1))
    assert torch.equal(runs[0], runs[1])


def test_int8_rows_do_not_depend_on_the_batch_size(model):
    if model.lm.precision not in ("int8", "int4"):
        pytest.skip("fp32 matmul bits depend on the row count; int8 and int4 rows (integer sums) do not")
    small, _ = run_a(model, Batch(model, rows=2), lambda i: [], steps=80)
    large, _ = run_a(model, Batch(model, rows=9), lambda i: [], steps=80)
    assert torch.equal(small, large)


def test_stream_wider_than_the_batch_is_refused(model):
    with pytest.raises(ContextError, match="rows"):
        Batch(model, rows=1).step([live(model, "x", GREEDY)])
