"""The float16 KV cache (`[model] kv = "float16"`). Protects: our kernel computes the same attention
as torch's over the same float16 values (one query column, a prefill chunk attending causally to
the past, cache views with row and column strides, head sizes off the vector width); a live stream
keeps it through slides, crossfades and continuations; what it costs against float32 is measured,
not assumed; and every place it cannot run says so in one sentence."""

from __future__ import annotations

import sys

import pytest
import torch
import torch.nn.functional as F
from musicgen_live.bridges.bench.quality import compare_precision
from musicgen_live.engine.errors import UserError
from musicgen_live.engine.generator import StreamGenerator
from musicgen_live.engine.kvcache import attention_kernel, check_kv
from musicgen_live.engine.model import MusicGen
from musicgen_live.engine.sampling import SamplingParams


@pytest.fixture(scope="module")
def kernel():
    return attention_kernel()


@pytest.mark.parametrize("d", [64, 16, 24, 5])
@pytest.mark.parametrize(("start", "T"), [(1, 1), (37, 1), (700, 1), (40, 3), (5, 16)])
def test_the_kernel_equals_torch_attention_over_the_same_float16_values(kernel, d, start, T):
    g = torch.Generator().manual_seed(start * 100 + d)
    rows, H, capacity = 2, 3, start + T + 9
    # a cache of 5 rows of which the stream uses 2: views with the cache's own strides
    k = (3 * torch.randn(5, H, capacity, d, generator=g)).half()
    v = torch.randn(5, H, capacity, d, generator=g).half()
    q = torch.randn(rows, T, H, d, generator=g).transpose(1, 2)  # (rows, H, T, d), not contiguous
    scale = d**-0.5
    got = kernel(q, k[:rows], v[:rows], start, scale)
    mask = torch.ones(T, start + T, dtype=torch.bool).tril(start)  # column j sees 0..start+j
    want = F.scaled_dot_product_attention(
        q, k[:rows, :, : start + T].float(), v[:rows, :, : start + T].float(), attn_mask=mask, scale=scale
    )
    assert got.shape == want.shape
    assert (got - want).abs().max() < 2e-5


def test_a_live_stream_on_a_float16_cache_slides_crossfades_and_continues():
    """Every phase of a live stream (sliding, a crossfade between prompts, a continuation being
    prefilled in chunks that attend causally to the past) runs on the half cache, and the audio
    stays finite; how close it stays to float32 is the next test's."""
    m = MusicGen.load("tiny", progress=None, kv="float16")
    assert m.lm.new_cache(2, 10).k.dtype == torch.float16
    g = StreamGenerator(m, SamplingParams(), seed=3)
    a, b = m.conditioner.condition("warm pads"), m.conditioner.condition("drums")
    g.start([(a, 1.0)], capacity_frames=120, context_frames=40, guided=True, max_prompts=4, slide_chunk=8)
    phases = set()
    for i in range(400):
        if i == 60:
            g.set_prompts([(a, 0.5), (b, 0.5)])
        if i == 150:
            g.continue_from(g.codes()[:, -30:])
        result = g.step()
        phases.add(g.phase.value)
        assert torch.isfinite(result.audio).all()
    assert g.slides >= 3 and "continuing" in phases


def test_what_a_float16_cache_costs_is_small_against_float32():
    reference = MusicGen.load("tiny", progress=None)
    half = MusicGen.load("tiny", progress=None, kv="float16")
    q = compare_precision(reference, half, "lo-fi beat", frames=120)
    assert q.precision == "float32, kv float16"
    # tiny's random weights give flat distributions full of near-ties, so agreement is pessimistic
    assert q.kl_mean < 1e-3 and q.top1_agreement > 0.9, q


def test_where_a_float16_cache_cannot_run_it_says_so():
    with pytest.raises(UserError, match="keep the KV cache in float32"):
        check_kv("float16", torch.device("cpu"), exact=True)
    with pytest.raises(UserError, match="on cuda keep kv float32"):
        check_kv("float16", torch.device("cuda"))
    with pytest.raises(UserError, match="unknown KV cache type 'int4'"):
        check_kv("int4", torch.device("cpu"))
    with pytest.raises(UserError, match="keep the KV cache in float32"):
        MusicGen.load("tiny", progress=None, exact=True, kv="float16")


def test_a_machine_without_a_compiler_is_told_what_to_install(monkeypatch):
    import musicgen_live.engine.cpu_kernels as cpu_kernels

    monkeypatch.setattr(cpu_kernels.shutil, "which", lambda tool: None)
    monkeypatch.setitem(sys.modules, "ninja", None)  # no pip ninja either
    with pytest.raises(UserError, match="needs c\\+\\+ and ninja .*apt install g\\+\\+ ninja-build"):
        cpu_kernels._load.__wrapped__()


def test_a_melody_stream_on_a_float16_cache_prefills_its_prefix_and_slides(tmp_path):
    """A melody checkpoint's prefix (chroma and text states in the first cache slots) is prefilled
    at every slide and attended to by every step: on the half cache too."""
    from musicgen_live.engine.presets import save_random_checkpoint

    from .test_live_melody import ARCH, CHUNK, CONTEXT, WINDOW, condition

    save_random_checkpoint(str(tmp_path), ARCH, seed=5)
    half = MusicGen.load(str(tmp_path), progress=None, kv="float16")
    full = MusicGen.load(str(tmp_path), progress=None)
    codes = []
    for m in (half, full):
        g = StreamGenerator(m, SamplingParams(greedy=True, cfg=3.0), seed=7)
        g.start(condition(m), capacity_frames=WINDOW, context_frames=CONTEXT, guided=True, slide_chunk=CHUNK)
        for _ in range(200):
            assert torch.isfinite(g.step().audio).all()
        assert g.slides >= 2
        codes.append(g.codes())
    # greedy on a small random model: the half cache's rounding may flip a near-tie now and then
    assert (codes[0] == codes[1]).float().mean() > 0.9
