"""`musicgen-live bench-matrices`: one decoder's matrices at each weight format, as a live step reads them.

A live step multiplies 2-8 rows by every matrix of the decoder once, so the weights come from
memory, not from the cache: this bench cycles through as many copies of each shape as a whole
decoder has (24 layers for small: ~310 MB at int8), so no matrix is still cached when it is read
again. Formats are timed in interleaved rounds (format A, B, A, B ...) and each shape's best round
is kept. Beside them: the host's read bandwidth (a sum over a 256 MB tensor) and each format's
byte floor at that bandwidth.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from musicgen_live.engine.linear import Linear, make_linear
from musicgen_live.engine.presets import arch_for

ROUNDS = 5
CARD = 2048  # codes per codebook (every MusicGen)


@dataclass
class MatrixPoint:
    name: str  # qkv, o, cross q / o, fc1, fc2, heads
    shape: tuple[int, int]  # (out, in)
    count: int  # matrices of this shape a step reads
    rows: int
    us: dict[str, float]  # format -> microseconds a matrix (best round)
    nbytes: dict[str, int]  # format -> bytes a matrix


@dataclass
class MatrixBench:
    model: str
    read_gbs: float  # the host's read bandwidth (sum over 256 MB)
    formats: list[str]
    points: list[MatrixPoint]

    def step_ms(self, fmt: str, rows: int) -> float:
        """A step's matrices at `rows` rows, in ms."""
        return sum(p.us[fmt] * p.count for p in self.points if p.rows == rows) / 1000

    def step_bytes(self, fmt: str) -> int:
        rows = self.points[0].rows
        return sum(p.nbytes[fmt] * p.count for p in self.points if p.rows == rows)


def read_bandwidth(mb: int = 256, rounds: int = 5) -> float:
    """GB/s of a sum over `mb` MB of float32 (the best of `rounds`)."""
    t = torch.ones(mb * 2**20 // 4)
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        t.sum()
        best = min(best, time.perf_counter() - t0)
    return t.numel() * 4 / best / 1e9


def small_shapes(model: str) -> list[tuple[str, tuple[int, int], int]]:
    """(name, (out, in), count a step) of a built-in model's decoder matrices."""
    arch = arch_for(model)
    d, layers = arch.hidden, arch.layers
    ff = arch.ffn or 4 * d
    heads = arch.num_codebooks * CARD
    return [
        ("qkv", (3 * d, d), layers),
        ("o / cross q / cross o", (d, d), 3 * layers),
        ("fc1", (ff, d), layers),
        ("fc2", (d, ff), layers),
        ("heads", (heads, d), 1),
    ]


def _time(mats: list[Linear], x: torch.Tensor) -> float:
    """Microseconds a matrix, once through every copy."""
    t0 = time.perf_counter()
    for m in mats:
        m(x)
    return (time.perf_counter() - t0) / len(mats) * 1e6


def run_matrix_bench(
    model: str = "small",
    formats: tuple[str, ...] = ("int8", "int4"),
    rows: tuple[int, ...] = (2, 3, 8),
    say: object = None,
) -> MatrixBench:
    gen = torch.Generator().manual_seed(0)
    points: list[MatrixPoint] = []
    for name, (n, k), count in small_shapes(model):
        copies = count  # as many distinct matrices as a step reads: none cached when read again
        w = torch.randn(n, k, generator=gen) * 0.02
        made = {f: [make_linear(w + 1e-4 * i, f) for i in range(copies)] for f in formats}
        for r in rows:
            x = torch.randn(r, k, generator=gen)
            for f in formats:
                _time(made[f][:2], x)  # first calls pick kernels
            us = {f: float("inf") for f in formats}
            for _ in range(ROUNDS):
                for f in formats:
                    us[f] = min(us[f], _time(made[f], x))
            nbytes = {f: int(made[f][0].nbytes) for f in formats}
            points.append(MatrixPoint(name, (n, k), count, r, us, nbytes))
            if callable(say):
                say(format_point(points[-1], formats))
        del made
    return MatrixBench(model, read_bandwidth(), list(formats), points)


def format_point(p: MatrixPoint, formats: list[str] | tuple[str, ...]) -> str:
    cells = "  ".join(f"{f} {p.us[f]:7.0f} us ({p.nbytes[f] / p.us[f] / 1e3:5.1f} GB/s)" for f in formats)
    return f"  {p.name:22s} {p.shape[0]:5d} x {p.shape[1]:<5d} x{p.count:<3d} rows {p.rows}: {cells}"


def format_matrix_bench(b: MatrixBench) -> str:
    lines = [f"bench-matrices --model {b.model}: each shape cycled through as many copies as a step reads"]
    lines += [format_point(p, b.formats) for p in b.points]
    lines.append(f"host read bandwidth (sum over 256 MB): {b.read_gbs:.1f} GB/s")
    for r in sorted({p.rows for p in b.points}):
        cells = []
        for f in b.formats:
            mb = b.step_bytes(f) / 1e6
            floor = b.step_bytes(f) / b.read_gbs / 1e6
            cells.append(f"{f} {b.step_ms(f, r):6.1f} ms ({mb:.0f} MB, floor {floor:.1f} ms)")
        lines.append(f"a step's matrices at {r} rows: " + "  ".join(cells))
    return "\n".join(lines)


def run_thread_bench(
    model: str, formats: tuple[str, ...], rows: int, threads: tuple[int, ...], rounds: int = 2
) -> list[tuple[int, MatrixBench]]:
    """A step's matrices with torch's (and our kernels') pool at each of `threads`, interleaved for
    `rounds` rounds: whether one core reads most of what two do (then the codec could run beside
    the decoder on the other). The pool's size is put back after."""
    before = torch.get_num_threads()
    out: list[tuple[int, MatrixBench]] = []
    try:
        for _ in range(rounds):
            for n in threads:
                torch.set_num_threads(n)
                out.append((n, run_matrix_bench(model, formats, (rows,))))
    finally:
        torch.set_num_threads(before)
    return out


def format_thread_line(n: int, b: MatrixBench) -> str:
    rows = b.points[0].rows
    cells = "  ".join(
        f"{f} {b.step_ms(f, rows):5.1f} ms ({b.step_bytes(f) / b.step_ms(f, rows) / 1e6:4.1f} GB/s)" for f in b.formats
    )
    return f"{n} thread{'s' if n > 1 else ''}: read {b.read_gbs:4.1f} GB/s; a step's matrices at {rows} rows: {cells}"
