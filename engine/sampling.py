"""Choosing the next token of every codebook from fp32 logits.

Greedy is argmax (ties go to the lowest index, as torch.argmax does). Sampling applies temperature,
then top-k, then top-p (the order transformers uses), and draws from a per-stream `torch.Generator`
so a seed reproduces a stream no matter what other streams do.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SamplingParams:
    """MusicGen's defaults: sample with top-k 250, temperature 1, CFG 3."""

    greedy: bool = False
    temperature: float = 1.0
    top_k: int = 250  # 0 = off
    top_p: float = 0.0  # 0 = off
    cfg: float = 3.0

    def validated(self) -> "SamplingParams":
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if not 0.0 <= self.top_p <= 1.0:
            raise ValueError(f"top_p must be within 0..1, got {self.top_p}")
        if not self.cfg >= 0:
            raise ValueError(f"cfg must be >= 0, got {self.cfg}")
        return self


def guide(cond: torch.Tensor, uncond: torch.Tensor, cfg: float) -> torch.Tensor:
    """Classifier-free guidance, in the reference's exact op order."""
    return uncond + (cond - uncond) * cfg


def sample(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> torch.Tensor:
    """Logits (..., V) fp32 -> token ids (...)."""
    if params.greedy:
        return logits.argmax(dim=-1)
    scores = logits / params.temperature
    vocab = scores.shape[-1]
    if 0 < params.top_k < vocab:
        kth = torch.topk(scores, params.top_k, dim=-1).values[..., -1:]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if 0.0 < params.top_p < 1.0:
        sorted_scores, order = torch.sort(scores, dim=-1, descending=False)
        cumulative = sorted_scores.softmax(dim=-1).cumsum(dim=-1)
        drop_sorted = cumulative <= (1 - params.top_p)
        drop_sorted[..., -1] = False  # always keep the most likely token
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        scores = scores.masked_fill(drop, float("-inf"))
    probs = scores.softmax(dim=-1)
    flat = probs.reshape(-1, vocab)
    return torch.multinomial(flat, 1, generator=generator).view(probs.shape[:-1])
