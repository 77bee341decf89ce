"""An 8-bit KV cache (`engine.kvcache`, `kernels/kv8_attention.cpp`).

Protects: the quantizer is the plain-PyTorch reference's to the bit (ties to even, zero vectors);
the attention equals a float64 attention over the dequantized cache within float32 rounding, for
one query column and for a chunk of several (causal), at any start; the cache holds a byte a value
and a scale a vector; the cache type is refused where it cannot run. (The compiled step against
the Python path on it: tests/engine/test_compiled_step.py; batches: test_batch.py.)"""

from __future__ import annotations

import math

import pytest
import torch
from musicgen_live.engine.cpu_kernels import kernels
from musicgen_live.engine.errors import UserError
from musicgen_live.engine.kvcache import check_kv, quantize, reference_quantize
from musicgen_live.engine.model import MusicGen


def test_the_quantizer_is_the_references_to_the_bit():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, 50, 64, generator=g) * torch.rand(3, 4, 50, 1, generator=g) * 10
    x[0, 0, 0] = 0  # an all-zero vector: scale 0, values 0
    x[0, 0, 1, :4] = torch.tensor([0.5, 1.5, -2.5, 127.0]) * (x[0, 0, 1].abs().max() / 127)  # ties to even
    q, s = quantize(x)
    want_q, want_s = reference_quantize(x)
    assert q.dtype == torch.int8 and s.shape == x.shape[:-1]
    assert torch.equal(q, want_q) and torch.equal(s, want_s)
    assert torch.equal(s[0, 0, 0], torch.tensor(0.0)) and not q[0, 0, 0].any()
    back = q.float() * s.unsqueeze(-1)
    assert ((back - x).abs() <= s.unsqueeze(-1) / 2 + 1e-6).all()  # within half a step


def _reference_attention(q, k, ks, v, vs, start, scale):
    """float64 attention of q's columns over the dequantized cache, column j seeing 0..start+j."""
    kd = (k.double() * ks.double().unsqueeze(-1))[:, :, : start + q.shape[2]]
    vd = (v.double() * vs.double().unsqueeze(-1))[:, :, : start + q.shape[2]]
    scores = q.double() @ kd.transpose(-1, -2) * scale
    cols = torch.arange(kd.shape[2])
    mask = cols[None, :] <= (start + torch.arange(q.shape[2]))[:, None]
    scores = scores.masked_fill(~mask, -math.inf)
    return torch.softmax(scores, dim=-1) @ vd


@pytest.mark.parametrize(("start", "columns"), [(1, 1), (37, 1), (200, 1), (64, 8), (5, 3)])
def test_the_attention_over_an_int8_cache_is_the_float_attention_of_its_values(start, columns):
    g = torch.Generator().manual_seed(start)
    R, H, cap, d = 2, 3, 260, 64
    k, ks = quantize(torch.randn(R, H, cap, d, generator=g))
    v, vs = quantize(torch.randn(R, H, cap, d, generator=g))
    q = torch.randn(R, H, columns, d, generator=g)
    got = kernels().decode_attention_q8(q, k, ks, v, vs, start, d**-0.5)
    want = _reference_attention(q, k, ks, v, vs, start, d**-0.5)
    assert got.shape == (R, H, columns, d)
    assert torch.allclose(got.double(), want, atol=2e-5, rtol=1e-4)


def test_an_int8_cache_holds_a_byte_a_value_and_a_scale_a_vector():
    m = MusicGen.load("tiny", progress=None, precision="int4", kv="int8")
    full = MusicGen.load("tiny", progress=None)
    c8, c32 = m.lm.new_cache(2, 100), full.lm.new_cache(2, 100)
    assert c8.k_scale is not None and c8.v_scale is not None
    bytes8 = sum(t.numel() * t.element_size() for t in (c8.k, c8.v, c8.k_scale, c8.v_scale))
    bytes32 = c32.k.numel() * 4 * 2
    assert bytes8 / bytes32 == pytest.approx((16 + 4) / 64, rel=0.01)  # tiny's heads are 16 wide
    rows = c8.rows(1, 2)
    assert rows.k_scale is not None and rows.k_scale.shape[1] == 1


def test_an_int8_cache_is_refused_where_it_cannot_run():
    with pytest.raises(UserError, match="an int8 KV cache is read by a CPU kernel"):
        check_kv("int8", torch.device("cuda"))
    with pytest.raises(UserError, match="keep the KV cache in float32"):
        check_kv("int8", torch.device("cpu"), exact=True)
