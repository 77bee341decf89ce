"""A finite run over any codebook pattern, step by step as audiocraft's `LMModel.generate` walks it.

The streaming engine (`engine.generator`) steps the delay pattern - every released MusicGen
checkpoint's - through window slides, continuations and crossfades. A checkpoint trained with
another pattern (`engine.codebook_patterns`: parallel with empty steps, delay with flatten_first /
empty_initial, unroll, coarse_first, musiclm) renders here: one window, the pattern's sequence
built from the prompt's codes, each step feeding the steps since the last and sampling the
positions it holds, the same forward (`LanguageModel.forward`) and sampling as the stream. It is
also the one-shot equivalent a streamed pattern is tested against.

Units: *frames* are codec frames (prompt included); *steps* are the pattern's LM positions.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from .codebook_patterns import PatternSpec, max_frames_for
from .conditioning import Condition
from .errors import ContextError
from .model import MusicGen
from .sampling import SamplingParams, guide, sample

UNKNOWN = -1  # a position not generated yet (audiocraft's `unknown_token`)


@torch.no_grad()
def generate_with_pattern(
    model: MusicGen,
    pattern: PatternSpec,
    condition: Condition,
    frames: int,
    params: SamplingParams,
    prompt_codes: torch.Tensor | None = None,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[torch.Tensor, list[float]]:
    """Codes (K, frames) of a run of `frames` frames (prompt included) under `pattern`, and each
    step's time in seconds. Greedy codes are audiocraft's token for token."""
    spec = model.spec.lm
    if spec.prefix_conditioned:
        raise ContextError("melody and style checkpoints play the delay pattern only")
    K, special = spec.num_codebooks, spec.special_token
    P = 0 if prompt_codes is None else int(prompt_codes.shape[-1])
    if frames <= P:
        raise ContextError(f"nothing to generate: {frames} frames requested with a {P}-frame prompt")
    layout = pattern.layout(frames)
    if layout.length > spec.max_positions:
        fit = max_frames_for(pattern, spec.max_positions)
        raise ContextError(
            f"{frames} frames of the '{pattern.describe()}' pattern take {layout.length} steps, more than the "
            f"model's {spec.max_positions} positions (at most {fit} frames, "
            f"{fit / model.spec.frame_rate:.1f} s, fit)"
        )
    first = layout.first_step_with(P)
    if not first:
        raise ContextError(f"the '{pattern.describe()}' pattern has no step before its first frame: it needs a prompt")
    codes = torch.full((K, frames), UNKNOWN, dtype=torch.long)
    if prompt_codes is not None:
        codes[:, :P] = prompt_codes.to(torch.long).cpu()
    sequence = layout.build(codes, special)  # (K, S): prompt codes, the special token, UNKNOWN to generate
    holds = torch.from_numpy(layout.at >= 0)  # (K, S)
    guided = params.cfg != 1.0
    rows = 2 if guided else 1
    cache = model.lm.new_cache(rows, layout.length)
    generator = torch.Generator().manual_seed(seed)
    cross = [condition.kv]
    complete_at = layout.completed_by()  # (frames,) the step that completes each frame
    times, prev = [], 0
    for step in range(first, layout.length):
        t0 = time.perf_counter()
        tokens = sequence[:, prev:step].unsqueeze(0).expand(rows, -1, -1).to(model.device)
        logits = model.lm.forward(tokens, prev, cache, cross, all_positions=prev == 0)
        scores = guide(logits[0], logits[1], params.cfg) if guided else logits[0]
        drawn = sample(scores, params, generator).cpu()
        drawn = torch.where(holds[:, step], drawn, special)
        column = sequence[:, step]
        sequence[:, step] = torch.where(column == UNKNOWN, drawn, column)
        prev = step
        times.append(time.perf_counter() - t0)
        if progress:  # new frames complete, of those asked for
            progress(int(((complete_at >= 0) & (complete_at <= step)).sum()) - P, frames - P)
    out = layout.revert(sequence, UNKNOWN)
    if bool((out == UNKNOWN).any()):
        raise RuntimeError(f"the '{pattern.describe()}' pattern left positions ungenerated")  # a bug, never input
    return out, times
