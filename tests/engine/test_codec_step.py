"""The compiled codec step (`engine.codec_step`) against the Python streaming decoder it replaces.

Protects: past the warm-up a stream hands over to the kernel and its samples equal the Python
decoder's (float32: 1e-5, and so the one-shot decode; int8: the same arithmetic, to float
rounding) for one-frame pushes, uneven chunks, a batch of two and the flush; the release schedule
is unchanged; reset, push_many and a batch-mate leave a stream's samples alone; a returned block
is the caller's (not a buffer the next push overwrites); a machine without a compiler hears one
sentence when it asks for the kernel, and plays the Python decoder when it did not.
"""

from __future__ import annotations

import sys

import pytest
import torch
from musicgen_live.engine.checkpoint import from_hf_model
from musicgen_live.engine.codec import Codec
from musicgen_live.engine.codec_step import steady
from musicgen_live.engine.errors import UserError
from musicgen_live.engine.presets import ENCODEC_32K, Arch, random_hf_model, random_tokenizer

from .test_codec import codes, reference, stream

TOL = 1e-5


@pytest.fixture(scope="module")
def codecs():
    """The 32 kHz-sized codec (64 filters, 2 LSTM layers), random weights: Python and compiled."""
    hf = random_hf_model(Arch(codec=dict(ENCODEC_32K)), seed=23)
    ckpt = from_hf_model(hf, random_tokenizer(), "test")
    python = Codec(ckpt.spec.codec, ckpt.tensors)
    compiled = Codec(ckpt.spec.codec, ckpt.tensors, compiled=True)
    return hf.audio_encoder, python, compiled


def uneven(frames: int, seed: int) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    sizes, left = [], frames
    while left:
        sizes.append(min(left, int(torch.randint(1, 6, (1,), generator=g))))
        left -= sizes[-1]
    return sizes


@pytest.mark.parametrize(("batch", "chunks"), [(1, "one"), (2, "one"), (1, "uneven"), (2, "uneven")])
def test_the_compiled_float32_stream_equals_the_python_one_and_the_whole_decode(codecs, batch, chunks):
    hf, python, compiled = codecs
    assert python.compiled is None and compiled.compiled is not None
    c = codes(70, batch=batch, seed=batch)
    sizes = [1] * 70 if chunks == "one" else uneven(70, seed=batch)
    want, want_released = stream(python, c, sizes)
    got, released = stream(compiled, c, sizes)
    assert released == want_released and got.shape == want.shape
    assert (got - want).abs().max() < TOL
    assert (got - reference(hf, c)[..., : got.shape[-1]]).abs().max() < TOL


def test_the_stream_hands_over_once_every_layer_is_past_its_warm_up(codecs):
    _hf, _python, compiled = codecs
    st = compiled.new_stream(1)
    c = codes(12, seed=4)
    handed = []
    for i in range(12):
        compiled.push(st, c[..., i : i + 1])
        handed.append(st.compiled is not None)
    first = handed.index(True)
    assert 0 < first < 8 and all(handed[first:])  # a few frames of Python, then the kernel for good
    compiled.flush(st)
    assert st.compiled is None  # the flush's edge is Python's


def test_a_returned_block_is_the_callers(codecs):
    """The kernel writes into its buffers every push: what it returned must not change with them."""
    _hf, _python, compiled = codecs
    st = compiled.new_stream(1)
    c = codes(20, seed=8)
    outs = [compiled.push(st, c[..., i : i + 1]) for i in range(20)]
    kept = [o.clone() for o in outs]
    compiled.push(st, codes(3, seed=9))
    assert all(torch.equal(o, k) for o, k in zip(outs, kept))


def test_reset_and_push_many_leave_each_stream_as_if_alone(codecs):
    _hf, _python, compiled = codecs
    st = compiled.new_stream(1)
    compiled.push(st, codes(15, seed=5))  # past the hand-over, then a fresh start
    compiled.reset(st)
    assert st.compiled is None
    c = codes(15, seed=6)
    again, _ = stream(compiled, c, [1] * 15)
    fresh, _ = stream(compiled, c, [15])
    assert (again - fresh).abs().max() < TOL

    srcs = [codes(20, seed=s) for s in (10, 11)]
    together = [compiled.new_stream() for _ in srcs]
    outs: list[list[torch.Tensor]] = [[], []]
    for i in range(20):
        for o, y in zip(outs, compiled.push_many(together, [s[..., i : i + 1] for s in srcs])):
            o.append(y)
    for o, st, src in zip(outs, together, srcs):
        alone, _ = stream(compiled, src, [1] * 20)
        assert (torch.cat([*o, compiled.flush(st)], -1) - alone).abs().max() < TOL


def test_the_compiled_int8_stream_is_the_python_int8_arithmetic(codecs):
    """`[model] codec = "int8"`, the live CPU format: the kernel scales each row on its own as the
    Python decoder does, so from the same state a push gives the same samples, except where float
    rounding puts a value on the edge of an int8 level. Such a flip lives on in the LSTM's state, so
    two long streams drift apart by about the int8 noise itself: each stays as close to the exact
    decode as the other (47 dB on this codec), and a batch-mate changes a stream no more."""
    _hf, python, _compiled = codecs
    py8, c8 = python.with_precision("int8", compiled=False), python.with_precision("int8")
    assert py8.compiled is None and c8.compiled is not None  # int8 on the CPU compiles by default
    c = codes(40, batch=1, seed=12)
    st = py8.new_stream(1)
    same = 0
    for i in range(40):
        frame = c[..., i : i + 1]
        ready = steady(py8.decoder_layers, st.layers)
        kernel = c8.compiled.start(st.layers, 1) if ready else None
        want = py8.push(st, frame)
        if kernel is not None:
            got = kernel.push(frame)
            assert got.shape == want.shape
            same += int((got - want).abs().max() < TOL)
            assert (got - want).abs().max() < 0.03 * want.abs().max()  # a flip, not a different decode
    assert same >= 12, f"{same} of 36 pushes from a shared state equal"  # 22 on this codec

    def snr(ref: torch.Tensor, x: torch.Tensor) -> float:
        return float(10 * torch.log10(ref.pow(2).mean() / (x - ref).pow(2).mean()))

    c = codes(90, batch=2, seed=12)
    sizes = [1] * 50 + uneven(40, seed=3)
    exact, _ = stream(python, c, sizes)
    want, want_released = stream(py8, c, sizes)
    got, released = stream(c8, c, sizes)
    assert released == want_released and got.shape == want.shape
    assert snr(exact, got) > 35 and abs(snr(exact, got) - snr(exact, want)) < 2
    alone, _ = stream(c8, c[1:], sizes)
    assert snr(alone, got[1:]) > 40


def test_a_machine_without_a_compiler_hears_one_sentence_or_plays_the_python_decoder(codecs, monkeypatch):
    _hf, python, _compiled = codecs
    import musicgen_live.engine.cpu_kernels as cpu_kernels

    monkeypatch.setattr(cpu_kernels.shutil, "which", lambda tool: None)
    monkeypatch.setitem(sys.modules, "ninja", None)
    monkeypatch.setattr(cpu_kernels, "_load", cpu_kernels._load.__wrapped__)  # not the cached build
    with pytest.raises(UserError, match="the compiled codec needs our CPU kernels built once"):
        python.with_precision("float32", compiled=True)
    fallback = python.with_precision("int8")  # asked for nothing: the Python int8 decoder plays
    assert fallback.compiled is None
    c = codes(12, seed=2)
    assert stream(fallback, c, [1] * 12)[0].shape == stream(python, c, [1] * 12)[0].shape
