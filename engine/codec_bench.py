"""`musicgen-live bench-codec`: streaming decode cost per frame against re-decoding the history.

The widely used `MusicgenStreamer` re-decodes everything generated so far at every chunk, so its
cost per chunk grows with the length of the piece; ours keeps per-layer state and costs the same
at second 5 and second 30. Both are timed here on random codes at a few history lengths.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import torch

from .codec import Codec


@dataclass
class CodecPoint:
    seconds: float
    ours_ms_per_frame: float  # median push time around this point of the stream, per frame
    redecode_ms_per_chunk: float  # whole-history decode at this length (one chunk's cost)


def run_codec_bench(codec: Codec, seconds: list[float], chunk_frames: int = 1, window: int = 25) -> list[CodecPoint]:
    rate = codec.spec.frame_rate
    total = int(max(seconds) * rate) + window
    codes = torch.randint(0, codec.spec.codebook_size, (1, codec.spec.num_quantizers, total))
    st = codec.new_stream(1)
    push_ms: list[float] = []
    for i in range(0, total, chunk_frames):
        chunk = codes[..., i : i + chunk_frames]
        t0 = time.perf_counter()
        codec.push(st, chunk)
        push_ms.append(1000 * (time.perf_counter() - t0) / chunk.shape[-1])
    points = []
    for s in seconds:
        at = int(s * rate) // chunk_frames
        ours = statistics.median(push_ms[max(0, at - window // chunk_frames) : at + 1])
        n = int(s * rate)
        redecode = []
        for _ in range(3):
            t0 = time.perf_counter()
            codec.decode(codes[..., :n])
            redecode.append(1000 * (time.perf_counter() - t0))
        points.append(CodecPoint(s, ours, statistics.median(redecode)))
    return points


def format_codec_bench(points: list[CodecPoint]) -> str:
    lines = [f"{'history':>8} | {'ours ms/frame':>14} | {'re-decode ms/chunk':>19}"]
    for p in points:
        lines.append(f"{p.seconds:7.0f}s | {p.ours_ms_per_frame:14.2f} | {p.redecode_ms_per_chunk:19.1f}")
    return "\n".join(lines)
