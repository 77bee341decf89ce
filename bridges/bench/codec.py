"""`musicgen-live bench-codec`: streaming decode cost per frame against re-decoding the history,
and the encoder's cost a frame by the size of the pieces a continuation encodes in.

The widely used `MusicgenStreamer` re-decodes everything generated so far at every chunk, so its
cost per chunk grows with the length of the piece; ours keeps per-layer state and costs the same
at second 5 and second 30. Both are timed here on random codes at a few history lengths.

A live continuation encodes its audio a few frames between two steps (`Codec.encode_steps`); what
a frame costs at each piece size against the whole clip at once is `run_encoder_bench`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from musicgen_live.engine.codec import Codec
from musicgen_live.engine.stats import median


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
        ours = median(push_ms[max(0, at - window // chunk_frames) : at + 1])
        n = int(s * rate)
        redecode = []
        for _ in range(3):
            t0 = time.perf_counter()
            codec.decode(codes[..., :n])
            redecode.append(1000 * (time.perf_counter() - t0))
        points.append(CodecPoint(s, ours, median(redecode)))
    return points


def format_codec_bench(points: list[CodecPoint]) -> str:
    lines = [f"{'history':>8} | {'ours ms/frame':>14} | {'re-decode ms/chunk':>19}"]
    for p in points:
        lines.append(f"{p.seconds:7.0f}s | {p.ours_ms_per_frame:14.2f} | {p.redecode_ms_per_chunk:19.1f}")
    return "\n".join(lines)


def run_encoder_bench(codec: Codec, seconds: float, pieces: list[int], rounds: int = 3) -> dict[int, float]:
    """ms a frame to encode `seconds` of noise at each piece size (frames a piece; 0 = the whole
    clip in one call), the sizes interleaved in `rounds` rounds; the median round of each."""
    g = torch.Generator().manual_seed(0)
    audio = 0.3 * torch.randn(1, codec.spec.channels, int(seconds * codec.spec.sample_rate), generator=g)
    times: dict[int, list[float]] = {n: [] for n in pieces}
    for _ in range(rounds):
        for n in pieces:
            steps = codec.encode_steps(audio)
            t0 = time.perf_counter()
            next(steps)
            try:
                while True:
                    steps.send(n or None)
            except StopIteration as done:
                frames = done.value.shape[-1]
            times[n].append(1000 * (time.perf_counter() - t0) / frames)
    return {n: median(t) for n, t in times.items()}


def format_encoder_bench(seconds: float, costs: dict[int, float]) -> str:
    lines = [f"encoding {seconds:g} s of audio | frames a piece | ms a frame"]
    for n, ms in costs.items():
        lines.append(f"{'':>25} | {'whole clip' if n == 0 else n:>14} | {ms:10.2f}")
    return "\n".join(lines)


@dataclass
class CodecFidelity:
    precision: str
    seconds: float
    snr_db: float  # exact decode's power over the difference's, dB
    max_abs: float  # largest sample difference (full scale 1.0)


def codec_fidelity(exact: Codec, other: Codec, seconds: float = 10.0, seed: int = 0) -> CodecFidelity:
    """Stream the same random codes through both decoders, one frame a push as live, and compare."""
    g = torch.Generator().manual_seed(seed)
    frames = int(seconds * exact.spec.frame_rate)
    codes = torch.randint(0, exact.spec.codebook_size, (1, exact.spec.num_quantizers, frames), generator=g)
    outs = []
    for codec in (exact, other):
        st = codec.new_stream(1)
        audio = [codec.push(st, codes[..., i : i + 1]) for i in range(frames)]
        outs.append(torch.cat([*audio, codec.flush(st)], dim=-1))
    ref, got = outs
    err = got - ref
    snr = 10 * torch.log10(ref.pow(2).mean() / err.pow(2).mean().clamp_min(1e-30))
    return CodecFidelity(other.precision, seconds, float(snr), float(err.abs().max()))


def format_fidelity(f: CodecFidelity) -> str:
    return (
        f"codec {f.precision} against float32 ({f.seconds:g} s of random codes, one frame a push): "
        f"SNR {f.snr_db:.1f} dB, largest sample difference {f.max_abs:.2e}"
    )
