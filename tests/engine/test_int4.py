"""4-bit weights (`engine.int4`, `kernels/int4_linear.cpp`).

Protects: the kernel is the plain-PyTorch reference's arithmetic (rows quantized the same to the
bit; products equal within float32 rounding of the terms it adds) on both of its paths (AVX2 and the
portable loop), for odd shapes (widths not a multiple of a block or a superblock, odd row counts,
one row to nine); a row's result never depends on the other rows; the format keeps a quiet block
beside a loud one; zero weights and zero rows give zeros; a machine that cannot run it hears one
sentence."""

from __future__ import annotations

import sys

import pytest
import torch
from musicgen_live.engine import int4
from musicgen_live.engine.cpu_kernels import kernels
from musicgen_live.engine.errors import UserError
from musicgen_live.engine.linear import check_precision, make_linear

SHAPES = [(64, 64, 1), (100, 70, 3), (37, 33, 9), (33, 300, 5), (5, 1000, 2), (256, 512, 8), (7, 31, 4)]


def paths() -> list[str]:
    k = kernels()
    return ["scalar"] + (["avx2"] if k.int4_path(0) == "avx2" else [])


def _made(n: int, k: int, m: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, k, generator=g) * 0.05, torch.randn(m, k, generator=g)


@pytest.mark.parametrize(("n", "k", "m"), SHAPES)
def test_rows_are_quantized_as_the_reference_does_to_the_bit(n, k, m):
    _, x = _made(n, k, m, seed=n + k)
    x[0, :5] = torch.tensor([0.5, -0.5, 1.5, 2.5, -2.5]) * x[0].abs().max() / 127  # ties round to even
    q, s = kernels().int4_quantize_rows(x)
    want_q, want_s = int4.quantize_rows(x)
    assert torch.equal(q, want_q) and torch.equal(s, want_s)


@pytest.mark.parametrize(("n", "k", "m"), SHAPES)
def test_the_kernel_is_the_references_arithmetic_on_every_path(n, k, m):
    w, x = _made(n, k, m, seed=n * k)
    qs, sc, ds = int4.quantize_weights(w)
    wc = int4.weight_sums(qs, sc)
    want = int4.reference_linear(x, qs, sc, ds).double()
    bound = 8 * torch.finfo(torch.float32).eps * int4.term_magnitude(x, qs, sc, ds) + 1e-30
    for path in paths():
        got = kernels().int4_linear(x, qs, sc, ds, wc, int4.ISAS[path]).double()
        assert got.shape == (m, n)
        assert ((got - want).abs() <= bound).all(), path


def test_a_rows_result_does_not_depend_on_the_other_rows():
    w, x = _made(300, 520, 8, seed=3)
    lin = make_linear(w, "int4")
    together = lin(x)
    for i in range(8):
        assert torch.equal(lin(x[i : i + 1]), together[i : i + 1])
    loud = x.clone()
    loud[1:] *= 1000  # other rows 1000x louder: row 0 unchanged
    assert torch.equal(lin(loud)[0], together[0])


def test_the_format_keeps_a_quiet_block_beside_a_loud_one():
    """Outlier structure: one block of a superblock 100x louder than the rest; the quiet blocks keep
    4-bit precision (a shared float scale per superblock would leave them a level or two)."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(16, 256, generator=g) * 0.01
    w[:, :32] *= 100
    qs, sc, ds = int4.quantize_weights(w)
    back = int4.dequantize(qs, sc, ds, 256)
    quiet = (back[:, 32:] - w[:, 32:]).norm() / w[:, 32:].norm()
    assert quiet < 0.12  # ~0.085 is 4-bit's own rounding
    peak = w.abs().argmax(dim=1)
    assert torch.allclose(back.gather(1, peak[:, None]), w.gather(1, peak[:, None]), rtol=1e-3)


def test_zero_weights_and_zero_rows_give_zeros():
    lin = make_linear(torch.zeros(40, 70), "int4")
    assert torch.equal(lin(torch.randn(3, 70)), torch.zeros(3, 40))
    w, _ = _made(40, 70, 1, seed=1)
    assert torch.equal(make_linear(w, "int4")(torch.zeros(2, 70)), torch.zeros(2, 40))


def test_it_multiplies_like_the_float_matrix_within_four_bit_rounding():
    w, x = _made(512, 1024, 2, seed=9)
    got, want = make_linear(w, "int4")(x), x @ w.T
    assert (got - want).norm() / want.norm() < 0.12
    assert make_linear(w, "int4").nbytes == 512 * 32 * (16 + 2) + 512 * 4 * 8  # 4.625 bits a weight


def test_a_machine_that_cannot_run_it_hears_one_sentence(monkeypatch):
    with pytest.raises(UserError, match="int4 weights run on the CPU only"):
        check_precision("int4", torch.device("cuda"))
    import musicgen_live.engine.cpu_kernels as cpu_kernels

    monkeypatch.setattr(cpu_kernels.shutil, "which", lambda tool: None)
    monkeypatch.setitem(sys.modules, "ninja", None)
    monkeypatch.setattr(cpu_kernels, "_load", cpu_kernels._load.__wrapped__)  # not the cached build
    with pytest.raises(UserError, match="int4 weights needs our CPU kernels built once, which needs c\\+\\+"):
        check_precision("int4", torch.device("cpu"))


def test_bench_matrices_times_every_shape_of_a_decoder_at_each_format():
    from musicgen_live.bridges.bench.matrices import format_matrix_bench, run_matrix_bench, small_shapes

    b = run_matrix_bench("tiny", ("float32", "int4"), (2, 3))
    assert [(p.name, p.rows) for p in b.points] == [(name, r) for name, _, _ in small_shapes("tiny") for r in (2, 3)]
    assert all(p.us["int4"] > 0 and p.nbytes["int4"] < p.nbytes["float32"] / 5 for p in b.points)
    assert b.read_gbs > 0.1
    text = format_matrix_bench(b)
    assert "a step's matrices at 2 rows: float32" in text and "floor" in text


def test_bench_matrices_times_a_step_at_each_thread_count_and_puts_the_pool_back():
    from musicgen_live.bridges.bench.matrices import format_thread_line, run_thread_bench

    before = torch.get_num_threads()
    runs = run_thread_bench("tiny", ("float32", "int4"), 2, (1, 2), rounds=1)
    assert [n for n, _ in runs] == [1, 2] and torch.get_num_threads() == before
    assert all(b.step_ms("int4", 2) > 0 and b.points[0].rows == 2 for _, b in runs)
    assert format_thread_line(*runs[0]).startswith("1 thread: read")


def test_bench_step_splits_each_formats_steps_into_forward_codec_and_the_rest():
    from musicgen_live.bridges.bench.step import format_step_bench, run_step_bench

    said: list[str] = []
    formats = ["int8", "int4", "int8/float16/python"]  # the last: the codec's Python decoder, not the kernel
    splits = run_step_bench("tiny", formats, rounds=2, steps=5, say=said.append)
    assert [s.precision for s in splits] == formats
    for s in splits:
        assert len(s.step_ms) == 10 and len(s.forward_ms) >= 10 and len(s.codec_ms) >= 10
        assert sum(s.forward_ms) + sum(s.codec_ms) < sum(s.step_ms)  # parts of the step, timed inside it
    assert splits[1].weight_mb < splits[0].weight_mb  # int4 reads fewer bytes
    assert sum("round" in line for line in said) == 2
    assert "| int4 |" in format_step_bench("tiny", "float16", "int8", splits)
    assert any("codec int8 python" in line for line in said)
    with pytest.raises(UserError, match="'numba' in 'int8/float16/numba' is not a codec decoder"):
        run_step_bench("tiny", ["int8/float16/numba"], rounds=1, steps=1)


def test_outlier_channels_keep_the_float_model_and_make_a_few_channels_loud():
    from musicgen_live.bridges.bench.quality import with_outlier_channels
    from musicgen_live.engine.checkpoint import load_checkpoint
    from musicgen_live.engine.generator import StreamGenerator
    from musicgen_live.engine.model import MusicGen
    from musicgen_live.engine.sampling import SamplingParams

    ckpt = load_checkpoint("tiny", None)
    loud = with_outlier_channels(ckpt, channels=4, factor=30.0)
    norm = "decoder.model.decoder.layers.0.final_layer_norm.weight"
    ratio = loud.tensors[norm] / ckpt.tensors[norm]
    assert sorted(ratio.tolist()).count(30.0) == 4 and torch.allclose(ratio.sort().values[:-4], torch.ones(60))
    assert torch.equal(ckpt.tensors[norm], load_checkpoint("tiny", None).tensors[norm])  # the original untouched
    codes = []
    for c in (ckpt, loud):
        m = MusicGen(c)
        g = StreamGenerator(m, SamplingParams(greedy=True, cfg=3.0), seed=0)
        g.start(m.conditioner.condition("pads"), total_frames=30)
        for _ in range(30):
            g.step()
        codes.append(g.codes())
    assert torch.equal(codes[0], codes[1])  # the same function: float32 greedy codes unchanged
