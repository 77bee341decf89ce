"""Text prompt -> cross-attention keys/values, with a small cache of recent prompts.

A live performer flips between a handful of prompts; T5 plus the per-layer K/V projections cost
milliseconds to seconds, so re-sending a recent prompt must cost nothing: results are kept in an
LRU keyed by (prompt, guided). A prompt heard for the first time can be encoded a piece at a time
(`condition_steps`: one T5 block, then the projections, per piece) so that a live stream spreads
the work over its steps instead of stalling.

`guided` mirrors how the reference shapes its batch: with CFG it encodes [cond; null] together,
without CFG only [cond]. A matmul's last bits depend on its row count, so parity needs the same
shapes; for live use either form is fine whatever the current cfg.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

import torch

from .kvcache import CrossKV
from .lm import LanguageModel
from .pieces import run


@dataclass(frozen=True)
class Condition:
    """One prompt, ready for the LM: cross-attention K/V of its conditional row - or, for a
    prefix-conditioned (melody) checkpoint, the prefix states of its rows (`engine.melody`)."""

    text: str
    cross: CrossKV | None
    tokens: int  # text tokens (S), for diagnostics
    prefix: torch.Tensor | None = None  # melody: (rows, L, D), conditional row then unconditional

    @property
    def kv(self) -> CrossKV:
        """The cross-attention K/V (every condition of a cross-attention checkpoint has them)."""
        if self.cross is None:
            raise ValueError("a prefix (melody) condition has no cross-attention keys/values")
        return self.cross


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
        return run(self.encode_steps(text))

    def encode_steps(self, text: str) -> Generator[None, None, tuple[torch.Tensor, torch.Tensor]]:
        """`encode_text`, yielding before the first T5 block and after every block. The blocks are
        called exactly as transformers' T5Stack calls them (same arguments, same order), so the
        states are the same bit for bit."""
        from transformers.masking_utils import create_bidirectional_mask

        yield

        enc = self.tokenizer([text], return_tensors="pt", padding=True)
        device = next(self.t5.parameters()).device
        ids = enc["input_ids"].to(device)
        mask = enc["attention_mask"].to(device)
        stack: Any = self.t5.encoder  # transformers' T5Stack
        with torch.no_grad():
            x = stack.embed_tokens(ids)
            extended = create_bidirectional_mask(config=stack.config, inputs_embeds=x, attention_mask=mask)
            x = stack.dropout(x)
        bias = None
        for block in stack.block:
            with torch.no_grad():
                x, bias, _ = block(x, extended, bias, None, None, None, past_key_values=None)
            yield
        with torch.no_grad():
            x = stack.dropout(stack.final_layer_norm(x))
        return x, mask

    @torch.no_grad()
    def condition(self, text: str, guided: bool = True) -> Condition:
        return run(self.condition_steps(text, guided))

    def condition_steps(self, text: str, guided: bool = True) -> Generator[None, None, Condition]:
        """`condition`, a piece at a time: exhaust it with `run`, or advance it between the steps of
        a live stream (it does no work before its first yield). A cached prompt costs nothing: it
        returns at once."""
        key = (text, guided)
        hit = self._cache.get(key)
        if hit is not None:
            self._cache.move_to_end(key)
            return hit
        states, mask = yield from self.encode_steps(text)
        with torch.no_grad():
            if guided:
                states = torch.cat([states, torch.zeros_like(states)], dim=0)
                mask = torch.cat([mask, torch.zeros_like(mask)], dim=0)
            projected = self.lm.project_condition(states, mask)
        yield
        cross = yield from self.lm.cross_kv_steps(projected, n_cond=1)
        cond = Condition(text=text, cross=cross, tokens=states.shape[1])
        self._cache[key] = cond
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return cond

    def cached(self, text: str, guided: bool = True) -> bool:
        return (text, guided) in self._cache

    def lookup(self, text: str, guided: bool = True) -> Condition | None:
        """The condition of a prompt encoded before, or None (nothing is computed)."""
        key = (text, guided)
        hit = self._cache.get(key)
        if hit is not None:
            self._cache.move_to_end(key)
        return hit
