"""Text prompt -> cross-attention keys/values, with a small cache of recent prompts.

A live performer flips between a handful of prompts; T5 plus the per-layer K/V projections cost
milliseconds to seconds, so re-sending a recent prompt must cost nothing: results are kept in an
LRU keyed by (prompt, guided).

`guided` mirrors how the reference shapes its batch: with CFG it encodes [cond; null] together,
without CFG only [cond]. A matmul's last bits depend on its row count, so parity needs the same
shapes; for live use either form is fine whatever the current cfg.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import torch

from .lm import CrossKV, LanguageModel


@dataclass(frozen=True)
class Condition:
    """One prompt, ready for the LM: cross-attention K/V of its conditional row."""

    text: str
    cross: CrossKV
    tokens: int  # text tokens (S), for diagnostics


class TextConditioner:
    def __init__(self, tokenizer: Any, t5: torch.nn.Module, lm: LanguageModel, cache_size: int = 16) -> None:
        self.tokenizer = tokenizer
        self.t5 = t5
        self.lm = lm
        self.cache_size = cache_size
        self._cache: OrderedDict[tuple[str, bool], Condition] = OrderedDict()

    @torch.no_grad()
    def encode_text(self, text: str) -> tuple[torch.Tensor, torch.Tensor]:
        """T5 last hidden state (1, S, text_hidden) in fp32 and the attention mask (1, S)."""
        enc = self.tokenizer([text], return_tensors="pt", padding=True)
        device = next(self.t5.parameters()).device
        ids = enc["input_ids"].to(device)
        mask = enc["attention_mask"].to(device)
        states = self.t5(input_ids=ids, attention_mask=mask).last_hidden_state
        return states, mask

    @torch.no_grad()
    def condition(self, text: str, guided: bool = True) -> Condition:
        key = (text, guided)
        hit = self._cache.get(key)
        if hit is not None:
            self._cache.move_to_end(key)
            return hit
        states, mask = self.encode_text(text)
        if guided:
            states = torch.cat([states, torch.zeros_like(states)], dim=0)
            mask = torch.cat([mask, torch.zeros_like(mask)], dim=0)
        projected = self.lm.project_condition(states, mask)
        cond = Condition(text=text, cross=self.lm.cross_kv(projected, n_cond=1), tokens=states.shape[1])
        self._cache[key] = cond
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return cond

    def cached(self, text: str, guided: bool = True) -> bool:
        return (text, guided) in self._cache
