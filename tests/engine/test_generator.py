"""The per-stream generator. Protects: streamed audio equals the one-shot decode of its codes,
the decode chunk size changes nothing but timing, prompt audio can be withheld exactly, and a
finite stream refuses to run past its end."""

import pytest
import torch
from musicgen_live.engine.errors import ContextError
from musicgen_live.engine.generator import StreamGenerator
from musicgen_live.engine.model import MusicGen
from musicgen_live.engine.sampling import SamplingParams


@pytest.fixture(scope="module")
def model(checkpoint_dir):
    return MusicGen.load(str(checkpoint_dir("h64-l2-h4")), progress=None)


def run(model, decode_chunk=1, prompt=None, emit_prompt_audio=True, frames=40):
    gen = StreamGenerator(model, SamplingParams(top_k=50), seed=3, decode_chunk=decode_chunk)
    cond = model.conditioner.condition("minimal techno")
    P = 0 if prompt is None else prompt.shape[-1]
    out = [gen.start(cond, prompt, total_frames=P + frames, emit_prompt_audio=emit_prompt_audio).audio]
    while not gen.done:
        out.append(gen.step().audio)
    out.append(gen.finish())
    with pytest.raises(ContextError):
        gen.step()
    return gen.codes(), torch.cat(out, dim=-1)


def test_streamed_audio_equals_one_shot_decode_of_the_codes(model):
    codes, audio = run(model)
    whole = model.codec.decode(codes[None])[0]
    assert audio.shape == whole.shape
    assert (audio - whole).abs().max() < 1e-5


def test_decode_chunk_size_changes_nothing_but_timing(model):
    codes1, audio1 = run(model, decode_chunk=1)
    codes7, audio7 = run(model, decode_chunk=7)
    assert torch.equal(codes1, codes7)
    assert (audio1 - audio7).abs().max() < 1e-5


def test_prompt_audio_can_be_withheld_exactly(model):
    prompt = torch.randint(0, 2048, (4, 12), generator=torch.Generator().manual_seed(1))
    codes, with_prompt = run(model, prompt=prompt)
    codes2, without = run(model, prompt=prompt, emit_prompt_audio=False)
    assert torch.equal(codes, codes2)
    assert torch.equal(codes[:, :12], prompt)
    hop = model.spec.codec.hop
    assert without.shape[-1] == with_prompt.shape[-1] - 12 * hop
    assert (without - with_prompt[..., 12 * hop :]).abs().max() < 1e-6


def test_a_run_longer_than_the_window_is_refused(model):
    gen = StreamGenerator(model)
    with pytest.raises(ContextError, match="window"):
        gen.start(model.conditioner.condition(""), total_frames=model.max_frames + 1)


def test_cache_rows_rearrange_as_an_indexed_copy_would():
    """Prompt changes move cache rows in place (one copy per moved row, none for rows that stay:
    a full indexed copy of small's cache stalled a fade for ~0.4 s); every order, cycles included,
    must give what the plain indexed copy gives."""
    import itertools

    from musicgen_live.engine.kvcache import KVCache

    for n in (1, 2, 3, 4):
        for order in itertools.product(range(4), repeat=n):
            k, v = torch.randn(2, 4, 2, 5, 3), torch.randn(2, 4, 2, 5, 3)
            want_k, want_v = k.clone(), v.clone()
            want_k[:, :n, :, :4] = k[:, list(order), :, :4]
            want_v[:, :n, :, :4] = v[:, list(order), :, :4]
            cache = KVCache(k=k, v=v)
            cache.rearrange_rows(list(order), 4)
            assert torch.equal(cache.k, want_k) and torch.equal(cache.v, want_v), order
