"""The encoder fed in pieces against its whole-clip form.

Protects: each layer fed a piece at a time (`ConvFeed`) gives the whole-signal convolution's
outputs (`conv_whole`: the reference's padding and frame grid) within float rounding, whatever the
stride, dilation, padding mode, causality, signal length and piece sizes; the whole encoder fed in
pieces gives the whole clip's latents and codes, including clips too short to stream.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from musicgen_live.engine.checkpoint import from_hf_model
from musicgen_live.engine.codec import Codec
from musicgen_live.engine.codec_encoder import ConvFeed, EncoderFeed
from musicgen_live.engine.codec_layers import conv_whole
from musicgen_live.engine.presets import ENCODEC_32K, Arch, random_hf_model, random_tokenizer

TOL = 1e-5


@pytest.fixture(scope="module")
def codec32k() -> Codec:
    hf = random_hf_model(Arch(codec=dict(ENCODEC_32K)), seed=23)
    ckpt = from_hf_model(hf, random_tokenizer(), "test")
    return Codec(ckpt.spec.codec, ckpt.tensors)


def feed_in_pieces(feed, x: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    out, i, p = [], 0, 0
    n = x.shape[-1]
    while True:
        j = min(n, i + sizes[p % len(sizes)])
        out.append(feed.push(x[..., i:j], final=j == n))
        i, p = j, p + 1
        if i == n:
            return torch.cat(out, dim=-1)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("mode", ["reflect", "constant"])
@pytest.mark.parametrize("k, stride, dilation", [(7, 1, 1), (3, 1, 3), (1, 1, 1), (16, 8, 1), (10, 5, 1), (8, 4, 1)])
def test_a_layer_fed_in_pieces_gives_the_whole_signals_outputs(codec32k, causal, mode, k, stride, dilation):
    spec = dataclasses.replace(codec32k.spec, causal=causal, pad_mode=mode)
    gen = torch.Generator().manual_seed(k * 100 + stride * 10 + dilation)
    w = torch.randn(5, 3, k, generator=gen)
    b = torch.randn(5, generator=gen)
    for length in (40, 41, 57, 203):
        x = torch.randn(2, 3, length, generator=gen)
        if not ConvFeed(w, b, stride, dilation, length, spec).fits:
            continue
        want = conv_whole(x, w, b, stride, dilation, spec)
        for sizes in ([1], [3, 1, 7], [length]):
            feed = ConvFeed(w, b, stride, dilation, length, spec)
            got = feed_in_pieces(feed, x, sizes)
            assert feed.outputs == want.shape[-1]
            assert got.shape == want.shape, (length, sizes)
            assert (got - want).abs().max() < TOL, (length, sizes)


def test_a_layer_refuses_more_or_less_than_its_signal(codec32k):
    w, b = torch.randn(2, 1, 3), torch.zeros(2)
    feed = ConvFeed(w, b, 1, 1, 10, codec32k.spec)
    feed.push(torch.randn(1, 1, 6), final=False)
    with pytest.raises(ValueError, match="fed 9 samples to a layer built for 10"):
        feed.push(torch.randn(1, 1, 3), final=True)


@pytest.mark.parametrize("samples", [640 * 20 + 7, 640 * 5])
def test_the_encoder_fed_in_pieces_gives_the_whole_clips_latents(codec32k, samples):
    enc = codec32k.encoder
    audio = 0.3 * torch.randn(1, 1, samples, generator=torch.Generator().manual_seed(samples))
    lstm_at = [kind for kind, _ in enc.layers].index("lstm")
    with torch.no_grad():
        pre = enc._run_encoder_steps(enc.layers[:lstm_at], audio).permute(2, 0, 1)
        lstm = enc.layers[lstm_at][1].lstm
        want = enc._run_encoder_steps(enc.layers[lstm_at + 1 :], (lstm(pre)[0] + pre).permute(1, 2, 0))
        for sizes in ([640], [1, 640 * 3, 17], [samples]):
            assert EncoderFeed(enc, samples).streams
            got = feed_in_pieces(EncoderFeed(enc, samples), audio, sizes)
            assert got.shape == want.shape
            assert (got - want).abs().max() < 1e-4 * want.abs().max()


@pytest.mark.parametrize("samples", [640, 641, 640 * 2 - 1])
def test_clips_too_short_to_stream_are_encoded_whole(codec32k, samples):
    """The reference zero-extends a signal shorter than a layer's padding: such clips (a frame or
    two) take the whole-clip path even when asked for pieces, and give its codes."""
    audio = 0.3 * torch.randn(1, 1, samples, generator=torch.Generator().manual_seed(1))
    assert not EncoderFeed(codec32k.encoder, samples).streams
    steps = codec32k.encode_steps(audio)
    next(steps)
    with pytest.raises(StopIteration) as done:
        steps.send(1)
    assert torch.equal(done.value.value, codec32k.encode(audio))
