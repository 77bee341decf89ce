"""Offline generation of a finite piece: codes and audio, through the same streaming path.

A finite run ends the way the reference ends it (pad tokens fed for frames past the end), so
greedy codes equal `transformers`' `generate` token for token in exact mode.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from .batch import Batch
from .conditioning import Condition
from .errors import CodesError, ContextError
from .generator import StreamGenerator
from .model import MusicGen
from .pattern_run import generate_with_pattern
from .sampling import SamplingParams


@dataclass
class Rendered:
    codes: torch.Tensor  # (K, prompt + generated frames), int64
    audio: torch.Tensor  # (channels, samples)
    step_seconds: list[float]


def render(
    model: MusicGen,
    prompt: str,
    frames: int,
    params: SamplingParams,
    seed: int = 0,
    prompt_audio: torch.Tensor | None = None,
    progress: Callable[[int, int], None] | None = None,
    decode_chunk: int = 1,
    condition: Condition | None = None,
) -> Rendered:
    """Generate `frames` new frames after an optional prompt clip (channels, samples at model rate).
    `condition` replaces the text prompt's (a melody checkpoint's `melody_condition`, a style
    checkpoint's `style_condition`)."""
    if frames <= 0:
        raise ContextError(f"the number of frames must be positive, got {frames}")
    prompt_codes = model.encode_audio(prompt_audio) if prompt_audio is not None else None
    P = 0 if prompt_codes is None else prompt_codes.shape[-1]
    total = P + frames  # the generator refuses a run longer than the model's window
    guided = params.cfg != 1.0 or params.cfg_beta is not None
    if not model.streams:  # another codebook pattern than delay: one window, stepped as audiocraft steps it
        cond = condition or model.conditioner.condition(prompt, guided=guided)
        codes, times = generate_with_pattern(
            model, model.codebook_pattern, cond, total, params, prompt_codes, seed, progress
        )
        return Rendered(codes=codes, audio=decode_streamed(model, codes, decode_chunk), step_seconds=times)
    gen = StreamGenerator(model, params, seed, decode_chunk=decode_chunk)
    if condition is not None:
        cond = condition
    elif model.melody:  # text alone, as a melody checkpoint takes it
        cond = model.melody_condition(prompt, None, guided)
    elif model.style is not None:
        cond = model.style_condition(prompt, None, guided, double=params.cfg_beta is not None)
    else:
        cond = model.conditioner.condition(prompt, guided=guided)
    chunks = [gen.start(cond, prompt_codes, total_frames=total, guided=guided).audio]
    times = []
    while not gen.done:
        t0 = time.perf_counter()
        chunks.append(gen.step().audio)
        times.append(time.perf_counter() - t0)
        if progress:
            progress(gen.frames_done - P, frames)
    chunks.append(gen.finish())
    return Rendered(codes=gen.codes(), audio=torch.cat(chunks, dim=-1), step_seconds=times)


def render_batch(
    model: MusicGen, prompts: list[str], frames: int, params: SamplingParams, seed: int = 0, decode_chunk: int = 1
) -> tuple[list[Rendered], list[float]]:
    """`len(prompts)` pieces of `frames` frames generated together in one `Batch` (stream i seeded
    `seed + i`); also returns the time of each batched step (seconds). Each piece is what `render`
    would give for it in a batch of this size (see `engine.batch`)."""
    if frames <= 0:
        raise ContextError(f"the number of frames must be positive, got {frames}")
    if model.spec.lm.prefix_conditioned:
        raise ContextError("several pieces in one batch are not supported for melody or style checkpoints yet")
    if not model.streams:
        raise ContextError(
            f"several pieces in one batch play the delay pattern, not '{model.codebook_pattern.describe()}'"
        )
    guided = params.cfg != 1.0
    gens = [StreamGenerator(model, params, seed + i, decode_chunk=decode_chunk) for i in range(len(prompts))]
    chunks = [
        [g.start(model.conditioner.condition(p, guided=guided), total_frames=frames).audio]
        for g, p in zip(gens, prompts)
    ]
    batch = Batch(model, rows=len(prompts) * (2 if guided else 1))
    times = []
    while not gens[0].done:
        t0 = time.perf_counter()
        for out, r in zip(chunks, batch.step(gens)):
            out.append(r.audio)
        times.append(time.perf_counter() - t0)
    pieces = []
    for g, out in zip(gens, chunks):
        out.append(g.finish())
        pieces.append(Rendered(codes=g.codes(), audio=torch.cat(out, dim=-1), step_seconds=[]))
    return pieces, times


def load_codes(path: str, model: MusicGen) -> torch.Tensor:
    """A (K, frames) integer .npy written by `render --codes-out`, checked against the model."""
    try:
        arr = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise CodesError(f"codes file '{path}' does not exist") from None
    except Exception as e:
        raise CodesError(f"codes file '{path}' is not a readable .npy array ({type(e).__name__}: {e})") from None
    if arr.ndim != 2:
        raise CodesError(f"codes must be a 2-D (codebooks, frames) array, '{path}' has shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer):
        raise CodesError(f"codes must be integers, '{path}' holds {arr.dtype}")
    K = model.spec.lm.num_codebooks
    if arr.shape[0] != K:
        raise CodesError(f"'{path}' has {arr.shape[0]} codebooks, the model uses {K}")
    if arr.shape[1] == 0:
        raise CodesError(f"'{path}' holds no frames")
    card = model.spec.lm.card
    if arr.min() < 0 or arr.max() >= card:
        raise CodesError(f"codes must lie in 0..{card - 1}, '{path}' has {arr.min()}..{arr.max()}")
    return torch.from_numpy(arr.astype(np.int64))


def decode_streamed(model: MusicGen, codes: torch.Tensor, chunk_frames: int = 1) -> torch.Tensor:
    """(K, F) codes -> (channels, F * hop) samples through the streaming decoder, `chunk_frames` a push."""
    if chunk_frames <= 0:
        raise CodesError(f"--chunk-frames must be positive, got {chunk_frames}")
    batch = model.codes_to_codec(codes.to(model.device))
    model.codec.check_codes(batch)
    st = model.codec.new_stream(batch=batch.shape[0])
    out = [model.codec.push(st, batch[..., i : i + chunk_frames]) for i in range(0, batch.shape[-1], chunk_frames)]
    out.append(model.codec.flush(st))
    return torch.cat(out, dim=-1).squeeze(1)
