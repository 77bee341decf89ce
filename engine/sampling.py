"""Choosing the next token of every codebook from fp32 logits.

Greedy is argmax (ties go to the lowest index, as torch.argmax does). Sampling applies temperature,
then top-k, then top-p (the order transformers uses), and draws from a per-stream `torch.Generator`
so a seed reproduces a stream no matter what other streams do.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

TINY = torch.finfo(torch.float32).tiny  # an Exp(1) draw of exactly 0 would turn a dropped token's 0 / 0 into NaN


@dataclass(frozen=True)
class SamplingParams:
    """MusicGen's defaults: sample with top-k 250, temperature 1, CFG 3."""

    greedy: bool = False
    temperature: float = 1.0
    top_k: int = 250  # 0 = off
    top_p: float = 0.0  # 0 = off
    cfg: float = 3.0
    cfg_beta: float | None = None  # MusicGen-Style's second coefficient (double guidance); None = off

    def validated(self) -> SamplingParams:
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if not 0.0 <= self.top_p <= 1.0:
            raise ValueError(f"top_p must be within 0..1, got {self.top_p}")
        if not self.cfg >= 0:
            raise ValueError(f"cfg must be >= 0, got {self.cfg}")
        if self.cfg_beta is not None and not self.cfg_beta >= 0:
            raise ValueError(f"cfg_beta must be >= 0, got {self.cfg_beta}")
        return self


def guide(cond: torch.Tensor, uncond: torch.Tensor, cfg: float) -> torch.Tensor:
    """Classifier-free guidance, in the reference's exact op order."""
    return uncond + (cond - uncond) * cfg


def guide_double(
    both: torch.Tensor, style: torch.Tensor, uncond: torch.Tensor, cfg: float, beta: float
) -> torch.Tensor:
    """MusicGen-Style's double guidance, in audiocraft's op order: z_u + cfg * (z_s + beta *
    (z_ts - z_s) - z_u), `both` the text-and-style row, `style` the style-alone one."""
    return uncond + cfg * (style + beta * (both - style) - uncond)


def sample(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> torch.Tensor:
    """Logits (..., V) fp32 -> token ids (...).

    Works on the top-k candidates only (sorted, so top-p needs no second sort) and draws with an
    exponential race: argmax_i p_i / E_i with E_i ~ Exp(1) picks i with probability p_i. Same
    distribution as `torch.multinomial`, ~4x cheaper per step (one top-k, a 250-wide softmax and
    one noise draw instead of masking, softmax and a cumulative search over the whole vocabulary).
    Exactly k candidates are kept (transformers keeps ties with the k-th as well; with float
    logits a tie there is vanishingly rare).
    """
    if params.greedy:
        return logits.argmax(dim=-1)
    vocab = logits.shape[-1]
    k = params.top_k if 0 < params.top_k < vocab else vocab
    values, index = torch.topk(logits, k, dim=-1)  # descending; temperature > 0 keeps the order
    scores = values / params.temperature
    if 0.0 < params.top_p < 1.0:
        ascending = scores.flip(-1)
        drop = ascending.softmax(dim=-1).cumsum(dim=-1) <= (1 - params.top_p)
        drop[..., -1] = False  # always keep the most likely token
        scores = scores.masked_fill(drop.flip(-1), float("-inf"))
    probs = scores.softmax(dim=-1)
    noise = torch.empty_like(probs).exponential_(generator=generator).clamp_(min=TINY)
    return index.gather(-1, (probs / noise).argmax(dim=-1, keepdim=True)).squeeze(-1)
