"""`musicgen-live bench`: our generation against transformers' `generate`, in one process.

Both sides run the same checkpoint with MusicGen's default sampling (top-k 250, CFG 3) and both
include decoding to audio (ours streams every frame through the codec as it completes; the peer
decodes once at the end). The sides are interleaved and repeated, and medians reported, because
these machines are shared and one pair of timings is not to be trusted.

With `streams` > 1 both sides generate that many pieces (different prompts) together: ours as
streams of one `Batch`, transformers as one batched `generate`; frames/s is the aggregate. With
`quality`, the reduced precision's predictions are compared against float32 (`bench.quality`).
"""

from __future__ import annotations

import platform
import resource
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from musicgen_live.bridges.bench.codec import CodecFidelity, codec_fidelity, format_fidelity
from musicgen_live.bridges.bench.quality import Quality, compare_precision, format_quality, with_outlier_channels
from musicgen_live.engine.checkpoint import BUILTIN_SEED, from_hf_model, load_checkpoint
from musicgen_live.engine.kvcache import cache_kernels
from musicgen_live.engine.model import MusicGen
from musicgen_live.engine.presets import BUILT_IN_MODELS, arch_for, random_hf_model, random_tokenizer
from musicgen_live.engine.render import decode_streamed, render, render_batch
from musicgen_live.engine.sampling import SamplingParams
from musicgen_live.engine.stats import median, percentile

PROMPTS = [
    "lo-fi hip hop beat with warm keys and vinyl crackle",
    "driving techno with a rolling bassline",
    "solo piano, slow and sparse",
    "orchestral strings swelling into a climax",
    "dub reggae with deep bass and echoing snare",
    "ambient drone with shimmering pads",
    "funky disco guitar and slap bass",
    "80s synthwave with gated drums",
]
PROMPT = PROMPTS[0]


@dataclass
class SideResult:
    frames_per_s: float
    real_time_factor: float  # > 1 is faster than real time
    step_ms_p50: float | None
    step_ms_p99: float | None
    seconds: list[float]


@dataclass
class BenchResult:
    model: str
    frames: int
    streams: int
    exact: bool
    precision: str
    decode_chunk: int
    device: str
    threads: int
    ours: SideResult
    peer: SideResult | None
    ratio: float | None
    peak_rss_mb: float
    weights_mb: float
    kv_cache_mb: float
    step_weights_mb: float
    machine: str
    quality: Quality | None = None
    guidance: str = "batched"  # CFG's rows in one forward or two (`engine.model.GUIDANCE`)
    kv: str = "float32"  # how the KV cache is stored (`engine.kvcache`)
    codec: str = "float32"  # the streaming decoder's matrices (`engine.codec.CODEC_PRECISIONS`)
    codec_fidelity: CodecFidelity | None = None
    # decoding the same codes to audio, ms per frame: ours streamed `decode_chunk` frames a push,
    # transformers' `EncodecModel.decode` once over the whole clip (one stream, with the peer)
    ours_decode_ms: float | None = None
    peer_decode_ms: float | None = None

    @property
    def decode_ceiling(self) -> float | None:
        """The ratio an engine would reach if it decoded as fast as the peer's one-shot decode and
        spent nothing else per frame: the peer's whole time per frame over its decode alone."""
        if self.peer is None or not self.peer_decode_ms:
            return None
        return (1000 / self.peer.frames_per_s) / self.peer_decode_ms


def run_bench(
    source: str,
    frames: int,
    peer: bool,
    exact: bool = False,
    repeats: int = 3,
    device: str = "cpu",
    decode_chunk: int = 1,
    precision: str = "float32",
    guidance: str = "auto",
    kv: str = "float32",
    codec: str = "float32",
    streams: int | list[int] = 1,
    quality: bool = False,
    outliers: bool = False,
    say: Callable[[str], None] = print,
) -> list[BenchResult]:
    """One result per stream count in `streams` (the checkpoint is built or loaded once).
    `outliers`: the decoder given outlier channels first (`bench.quality.with_outlier_channels`)."""
    hf = None
    if source in BUILT_IN_MODELS:
        say(f"building a random '{source}'-sized checkpoint in memory")
        hf = random_hf_model(arch_for(source), seed=BUILTIN_SEED)
        ckpt = from_hf_model(hf, random_tokenizer(), source)
    else:
        ckpt = load_checkpoint(source, say)
        if peer:
            from transformers import MusicgenForConditionalGeneration, MusicgenMelodyForConditionalGeneration

            melody = ckpt.spec.lm.prefix_conditioned
            cls = MusicgenMelodyForConditionalGeneration if melody else MusicgenForConditionalGeneration
            hf = cls.from_pretrained(source).eval()
    if outliers:
        say("giving the decoder outlier channels (4 per layer norm, 30x)")
        ckpt = with_outlier_channels(ckpt)
    say(f"preparing our model ({'float32 exact' if exact else precision})")
    cache_kernels(kv, say)
    model = MusicGen(ckpt, device=device, exact=exact, precision=precision, guidance=guidance, kv=kv, codec=codec)
    if peer and hf is not None:
        hf.to(device)
    results = []
    for n in [streams] if isinstance(streams, int) else streams:
        results.append(_run_side_by_side(model, ckpt, hf if peer else None, n, frames, repeats, decode_chunk, say))
    if quality and not exact and (precision, kv) != ("float32", "float32"):
        say("comparing predictions against float32")
        results[0].quality = compare_precision(MusicGen(ckpt, device=device), model, PROMPT, min(frames, 200))
    if quality and codec != "float32":
        say("comparing the codec against float32")
        results[0].codec_fidelity = codec_fidelity(model.codec.with_precision("float32"), model.codec)
    return results


def _run_side_by_side(
    model: MusicGen,
    ckpt: Any,
    hf: Any,
    streams: int,
    frames: int,
    repeats: int,
    decode_chunk: int,
    say: Callable[[str], None],
) -> BenchResult:
    params = SamplingParams()
    rate = model.spec.frame_rate
    tokenizer = ckpt.tokenizer
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(streams)]

    last_codes: torch.Tensor | None = None  # of our latest lone-stream run, for timing the decode

    def ours(n_frames: int = frames) -> tuple[float, list[float]]:
        nonlocal last_codes
        t0 = time.perf_counter()
        if streams == 1:  # a lone stream steps on its own, as a single live session does
            piece = render(model, prompts[0], n_frames, params, seed=0, decode_chunk=decode_chunk)
            steps, last_codes = piece.step_seconds, piece.codes
        else:
            _, steps = render_batch(model, prompts, n_frames, params, seed=0, decode_chunk=decode_chunk)
        return time.perf_counter() - t0, steps

    def theirs(n_frames: int = frames) -> float:
        inputs = tokenizer(prompts, return_tensors="pt", padding=True)
        t0 = time.perf_counter()
        with torch.no_grad():
            hf.generate(**inputs, do_sample=True, top_k=250, guidance_scale=3.0, max_new_tokens=n_frames + 3)
        return time.perf_counter() - t0

    say(f"{streams} stream(s): warming up")
    ours(8)
    if hf is not None:
        theirs(8)
    total = frames * streams
    our_times, peer_times, steps = [], [], []
    for r in range(repeats):
        t, st = ours()
        our_times.append(t)
        steps.extend(st)
        line = f"run {r + 1}/{repeats}: ours {total / t:.1f} frames/s"
        if hf is not None:
            peer_times.append(theirs())
            line += f", transformers {total / peer_times[-1]:.1f} frames/s"
        say(line)
    ours_res = _side(total, our_times, rate, steps)
    peer_res = _side(total, peer_times, rate, []) if peer_times else None
    cache = model.lm.new_cache(2 * streams, model.pattern.columns_for_frames(frames))
    ours_decode = peer_decode = None
    if streams == 1 and hf is not None:
        say("timing the decode to audio on both sides")
        assert last_codes is not None
        ours_decode, peer_decode = _decode_ms(model, hf, last_codes, decode_chunk, repeats)
    return BenchResult(
        model=model.source,
        frames=frames,
        streams=streams,
        exact=model.lm.exact,
        precision=model.lm.precision,
        decode_chunk=decode_chunk,
        device=str(model.device),
        threads=torch.get_num_threads(),
        ours=ours_res,
        peer=peer_res,
        ratio=(ours_res.frames_per_s / peer_res.frames_per_s) if peer_res else None,
        peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        weights_mb=sum(v.numel() * v.element_size() for v in ckpt.tensors.values()) / 1e6,
        kv_cache_mb=sum(
            t.numel() * t.element_size() for t in (cache.k, cache.v, cache.k_scale, cache.v_scale) if t is not None
        )
        / 1e6,
        step_weights_mb=model.lm.step_weight_bytes / 1e6,
        guidance=model.guidance,
        kv=model.lm.kv,
        codec=model.codec.precision,
        machine=f"{platform.machine()} {platform.processor() or ''} {_cpu_name()}".strip(),
        ours_decode_ms=ours_decode,
        peer_decode_ms=peer_decode,
    )


def _decode_ms(model: MusicGen, hf: Any, codes: torch.Tensor, chunk: int, repeats: int) -> tuple[float, float]:
    """Median ms per frame to turn `codes` (K, F) into audio: ours through the streaming decoder
    `chunk` frames a push (what `render` does inside its loop), transformers' audio encoder once
    over the whole clip (what its `generate` does after the last step)."""
    frames = codes.shape[-1]
    layout = model.codes_to_codec(codes.to(model.device)).unsqueeze(0)  # (1, channels, K / channels, F)
    ours, theirs = [], []
    with torch.no_grad():
        for _ in range(max(repeats, 1)):
            t0 = time.perf_counter()
            decode_streamed(model, codes, chunk)
            ours.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            hf.audio_encoder.decode(layout, [None] * layout.shape[1])
            theirs.append(time.perf_counter() - t0)
    return 1000 * median(ours) / frames, 1000 * median(theirs) / frames


def _side(frames: int, seconds: list[float], rate: float, steps: list[float]) -> SideResult:
    med = median(seconds)
    fps = frames / med
    ordered = [1000 * s for s in sorted(steps)]
    return SideResult(fps, fps / rate, percentile(ordered, 0.5), percentile(ordered, 0.99), seconds)


def _cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def format_result(r: BenchResult) -> str:
    mode = (
        "exact (parity kernels)" if r.exact else f"fast, {r.precision} weights, {r.kv} KV cache, {r.codec} codec"
    ) + f", {r.guidance} guidance, decode every {r.decode_chunk} frame(s)"
    each = f"{r.streams} streams x {r.frames} frames (aggregate frames/s)" if r.streams > 1 else f"{r.frames} frames"
    lines = [
        f"model {r.model}, {each}, {mode}, {r.device}, {r.threads} threads, {r.machine}",
        f"  ours:         {r.ours.frames_per_s:8.1f} frames/s  ({r.ours.real_time_factor:.2f}x real time)"
        f"  step p50 {r.ours.step_ms_p50:.1f} ms  p99 {r.ours.step_ms_p99:.1f} ms",
    ]
    if r.peer:
        lines.append(f"  transformers: {r.peer.frames_per_s:8.1f} frames/s  ({r.peer.real_time_factor:.2f}x real time)")
        lines.append(f"  ratio ours / transformers: {r.ratio:.2f}x")
    if r.ours_decode_ms is not None and r.peer_decode_ms is not None:
        lines.append(
            f"  decode to audio: ours {r.ours_decode_ms:.2f} ms/frame ({r.decode_chunk} frame(s) a push), "
            f"transformers {r.peer_decode_ms:.2f} ms/frame (once at the end)"
        )
        lines.append(
            f"  decode ceiling: decoding as fast as transformers' one-shot decode and spending nothing "
            f"else per frame would reach {r.decode_ceiling:.1f}x"
        )
    lines.append(
        f"  memory: peak RSS {r.peak_rss_mb:.0f} MB (whole process{', both models' if r.peer else ''}), "
        f"weights {r.weights_mb:.0f} MB (read per step {r.step_weights_mb:.0f} MB), KV cache {r.kv_cache_mb:.1f} MB"
    )
    if r.quality:
        lines.append(format_quality(r.quality))
    if r.codec_fidelity:
        lines.append("  " + format_fidelity(r.codec_fidelity))
    return "\n".join(lines)


def as_dict(r: BenchResult) -> dict[str, Any]:
    return {**asdict(r), "decode_ceiling": r.decode_ceiling}
