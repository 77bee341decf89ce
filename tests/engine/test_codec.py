"""The streaming EnCodec decoder against its one-shot equivalent, and the prompt encoder.

Protects: any chunking equals `EncodecModel.decode` of the whole sequence (1e-5), flush exactness,
the 2402-sample hold-back of the 32 kHz codec and its release schedule, batch independence, reset,
the short-sequence fallback, clear errors for bad codes; the encoder gives the reference's codes,
whole or a piece at a time.
"""

from __future__ import annotations

import pytest
import torch
from musicgen_live.engine.checkpoint import from_hf_model
from musicgen_live.engine.codec import Codec
from musicgen_live.engine.errors import CodesError
from musicgen_live.engine.presets import ENCODEC_32K, Arch, random_hf_model, random_tokenizer

TOL = 1e-5


@pytest.fixture(scope="module")
def codec32k():
    """The 32 kHz-sized codec MusicGen ships (64 filters, 2 LSTM layers), random weights."""
    hf = random_hf_model(Arch(codec=dict(ENCODEC_32K)), seed=21)
    ckpt = from_hf_model(hf, random_tokenizer(), "test")
    return hf.audio_encoder, Codec(ckpt.spec.codec, ckpt.tensors)


def codes(frames: int, batch: int = 1, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 2048, (batch, 4, frames), generator=torch.Generator().manual_seed(seed))


def reference(hf_codec, c: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return hf_codec.decode(c[None], [None]).audio_values


def stream(codec: Codec, c: torch.Tensor, sizes: list[int]) -> tuple[torch.Tensor, list[int]]:
    st = codec.new_stream(c.shape[0])
    out, released, i = [], [], 0
    for n in sizes:
        out.append(codec.push(st, c[..., i : i + n]))
        released.append(out[-1].shape[-1])
        i += n
    assert i == c.shape[-1]
    out.append(codec.flush(st))
    return torch.cat(out, dim=-1), released


def test_hold_back_is_2402_samples_for_the_32k_codec(codec32k):
    _hf, codec = codec32k
    assert codec.hold_back == 2402
    assert codec.spec.hop == 640


def test_release_schedule_first_audio_after_4_frames_then_640_per_frame(codec32k):
    _hf, codec = codec32k
    _, released = stream(codec, codes(12), [1] * 12)
    assert released[:3] == [0, 0, 0]
    assert released[3] == 4 * 640 - 2402
    assert released[4:] == [640] * 8
    # after frames 0..F are pushed, exactly [0, 640 (F+1) - 2402) has been released
    total = 0
    for f, n in enumerate(released):
        total += n
        assert total == max(0, 640 * (f + 1) - 2402)


@pytest.mark.parametrize("frames", [4, 5, 17, 60])
def test_one_frame_per_push_equals_whole_decode(codec32k, frames):
    hf, codec = codec32k
    c = codes(frames, seed=frames)
    out, _ = stream(codec, c, [1] * frames)
    ref = reference(hf, c)
    assert out.shape == ref.shape
    assert (out - ref).abs().max() < TOL


def test_random_chunking_equals_whole_decode(codec32k):
    hf, codec = codec32k
    gen = torch.Generator().manual_seed(4)
    c = codes(90, seed=3)
    ref = reference(hf, c)
    for _ in range(3):
        sizes, left = [], 90
        while left:
            n = min(left, int(torch.randint(1, 12, (1,), generator=gen)))
            sizes.append(n)
            left -= n
        out, _ = stream(codec, c, sizes)
        assert (out - ref).abs().max() < TOL, sizes


def test_flush_returns_exactly_the_held_back_tail(codec32k):
    hf, codec = codec32k
    c = codes(20, seed=8)
    st = codec.new_stream(1)
    head = codec.push(st, c)
    tail = codec.flush(st)
    assert tail.shape[-1] == codec.hold_back
    ref = reference(hf, c)
    assert (tail - ref[..., -codec.hold_back :]).abs().max() < TOL
    assert (head - ref[..., : -codec.hold_back]).abs().max() < TOL


@pytest.mark.parametrize("frames", [1, 2, 3])
def test_sequences_shorter_than_the_warm_up_decode_whole(codec32k, frames):
    hf, codec = codec32k
    c = codes(frames, seed=frames)
    out, released = stream(codec, c, [1] * frames)
    assert sum(released) == 0
    assert (out - reference(hf, c)).abs().max() < TOL


def test_two_streams_in_one_batch_equal_two_separate_runs(codec32k):
    _hf, codec = codec32k
    a, b = codes(30, seed=1), codes(30, seed=2)
    both, _ = stream(codec, torch.cat([a, b]), [3] * 10)
    alone_a, _ = stream(codec, a, [3] * 10)
    alone_b, _ = stream(codec, b, [3] * 10)
    assert (both[0] - alone_a[0]).abs().max() < TOL
    assert (both[1] - alone_b[0]).abs().max() < TOL


def test_push_many_equals_separate_streams(codec32k):
    """Independent streams decoded together (`push_many`): streams at different points, one still
    warming up, one pushing two frames while the others push one, one joining late."""
    _hf, codec = codec32k
    srcs = [codes(40, seed=s) for s in range(4)]
    starts = [0, 7, 12, 20]  # stream i begins at step starts[i]
    together = [codec.new_stream() for _ in srcs]
    alone = [codec.new_stream() for _ in srcs]
    pos = [0] * 4
    outs_t, outs_a = [[] for _ in srcs], [[] for _ in srcs]
    for step in range(24):
        live = [i for i in range(4) if step >= starts[i]]
        chunks = [srcs[i][..., pos[i] : pos[i] + (2 if i == 3 and step % 3 == 0 else 1)] for i in live]
        for i, c in zip(live, chunks):
            pos[i] += c.shape[-1]
            outs_a[i].append(codec.push(alone[i], c))
        for i, y in zip(live, codec.push_many([together[i] for i in live], chunks)):
            outs_t[i].append(y)
    for i in range(4):
        t = torch.cat(outs_t[i] + [codec.flush(together[i])], -1)
        a = torch.cat(outs_a[i] + [codec.flush(alone[i])], -1)
        assert t.shape == a.shape and t.shape[-1] > 0
        assert (t - a).abs().max() < TOL


def test_reset_starts_a_fresh_stream(codec32k):
    _hf, codec = codec32k
    st = codec.new_stream(1)
    codec.push(st, codes(15, seed=5))  # some other material first
    codec.reset(st)
    c = codes(15, seed=6)
    out = torch.cat([codec.push(st, c), codec.flush(st)], dim=-1)
    fresh, _ = stream(codec, c, [15])
    assert torch.equal(out, fresh)


def test_whole_decode_helper_matches_reference(codec32k):
    hf, codec = codec32k
    c = codes(33, seed=9)
    assert (codec.decode(c) - reference(hf, c)).abs().max() < TOL


def test_encoder_gives_the_reference_codes(codec32k):
    hf, codec = codec32k
    audio = 0.3 * torch.randn(2, 1, 640 * 30 + 5, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = hf.encode(audio).audio_codes[0]
    assert torch.equal(codec.encode(audio), ref)


def encode_in_pieces(codec: Codec, audio: torch.Tensor, sizes: list[int]) -> tuple[torch.Tensor, int]:
    steps = codec.encode_steps(audio)
    next(steps)  # primes it: no work before the first yield
    pieces = 0
    try:
        while True:
            steps.send(sizes[pieces % len(sizes)])
            pieces += 1
    except StopIteration as done:
        return done.value, pieces


@pytest.mark.parametrize("sizes", [[1], [3], [7, 2, 11], [1000]])
def test_encoding_a_piece_at_a_time_gives_the_one_shot_codes(codec32k, sizes):
    """A live continuation encodes a few frames per step; the codes must be the whole-clip ones.
    Lengths that do not fill the last frame, and audio near silence at the start, included."""
    _hf, codec = codec32k
    gen = torch.Generator().manual_seed(5)
    for samples in (640 * 45 + 123, 640 * 12):
        audio = 0.3 * torch.randn(1, 1, samples, generator=gen)
        audio[..., :3000] *= 1e-3
        want = codec.encode(audio)
        got, pieces = encode_in_pieces(codec, audio, sizes)
        assert torch.equal(got, want)
        assert pieces >= min(want.shape[-1] // max(sizes), 2)  # it really went piece by piece


@pytest.mark.parametrize(
    "bad, message",
    [
        (torch.full((1, 4, 5), 2048), "0..2047"),
        (torch.full((1, 4, 5), -1), "0..2047"),
        (torch.zeros((1, 3, 5), dtype=torch.long), "3 codebooks"),
        (torch.zeros((4, 5), dtype=torch.long), "shape"),
        (torch.zeros((1, 4, 5)), "integers"),
    ],
)
def test_bad_codes_get_a_clear_error(codec32k, bad, message):
    _hf, codec = codec32k
    with pytest.raises(CodesError, match=message):
        codec.check_codes(bad)


def test_an_int8_codec_streams_close_to_the_exact_one_and_releases_the_same_samples(codec32k):
    """`[model] codec = "int8"`: a quarter of the decoder's bytes; the same samples released at the
    same pushes, the audio close to the exact decode (SNR measured on the 32 kHz-sized codec)."""
    from musicgen_live.bridges.bench.codec import codec_fidelity

    _hf, exact = codec32k
    int8 = exact.with_precision("int8")
    assert int8.precision == "int8" and exact.precision == "float32"
    c = codes(120, batch=2, seed=5)  # two streams in one push: each row quantised on its own
    sizes = [1] * 60 + [3] * 20
    want, want_released = stream(exact, c, sizes)
    got, released = stream(int8, c, sizes)
    assert released == want_released and got.shape == want.shape
    snr = 10 * torch.log10(want.pow(2).mean() / (got - want).pow(2).mean())
    assert snr > 35, f"{snr:.1f} dB"
    # a stream's audio hardly depends on what shares its push: each row is quantised on its own, but
    # the float32 layers' last bits differ with the batch and can flip a value's int8 level
    alone, _ = stream(int8, c[1:], sizes)
    apart = 10 * torch.log10(alone.pow(2).mean() / (alone - got[1:]).pow(2).mean())
    assert apart > 40, f"{apart:.1f} dB"
    assert codec_fidelity(exact, int8, seconds=2.0).snr_db > 35


def test_where_an_int8_codec_cannot_run_it_says_so():
    from musicgen_live.engine.codec import check_codec_precision
    from musicgen_live.engine.errors import UserError

    with pytest.raises(UserError, match="exact .* decodes in float32"):
        check_codec_precision("int8", torch.device("cpu"), exact=True)
    with pytest.raises(UserError, match="CPU only"):
        check_codec_precision("int8", torch.device("cuda"))
    with pytest.raises(UserError, match="unknown codec precision 'int4'"):
        check_codec_precision("int4", torch.device("cpu"))
