"""The prompt rows of one stream's batch and how guidance mixes them: a row per sounding prompt
(each with its weight), then the rows guidance needs - MusicGen-Style's style-alone row where the
stream has one, the unconditional row where it is guided - and the crossfade that moves weights
from one set of prompts to the next, a frame at a time.

Guidance: z = z_u + cfg * sum_i w_i (z_i - z_u), in the reference's order of operations for one
row (so a single prompt is token-exact with transformers and audiocraft).

The cache rows follow the prompt rows: every change that adds, drops or reorders rows returns the
order `o` in which the caches' rows must be rearranged (cache row r <- old row o[r]); the
generator applies it to the live window and to a window being prepared alike. This module holds
no cache.
"""

from __future__ import annotations

import functools
import operator
from dataclasses import dataclass

import torch

from .conditioning import Condition
from .errors import ContextError
from .sampling import SamplingParams, guide, guide_double


@dataclass
class PromptRow:
    condition: Condition
    weight: float


@dataclass
class Fade:
    """A crossfade under way: weights move from `start` to `end` over `frames` frames."""

    start: list[float]
    end: list[float]
    frames: int
    done: int = 0


@dataclass
class PromptRows:
    """The rows a stream's batch carries, in cache order: prompts, then the tail (style-alone,
    unconditional). `capacity`: prompt rows the cache has room for."""

    rows: list[PromptRow]
    guided: bool  # the batch carries an unconditional row
    style_row: bool  # ... and a style-alone row before it (MusicGen-Style's double guidance)
    capacity: int
    fade: Fade | None = None

    @property
    def tail(self) -> int:
        """Rows after the prompts': the style-alone one, the unconditional one."""
        return int(self.style_row) + int(self.guided)

    @property
    def count(self) -> int:
        """Every row the stream runs (prompts and tail)."""
        return len(self.rows) + self.tail

    def tail_rows(self) -> list[int]:
        """The tail rows' indices, right after the prompts' rows."""
        n = len(self.rows)
        return list(range(n, n + self.tail))

    def replace(self, condition: Condition) -> None:
        """One prompt at full weight, at once (a melody stream's new condition): same row count."""
        self.rows = [PromptRow(condition, 1.0)]
        self.fade = None

    def blend_to(self, prompts: list[tuple[Condition, float]], fade_frames: int) -> tuple[list[int], int]:
        """Blend to `prompts` (weights normalised to sum 1) over `fade_frames` frames. Returns the
        cache order and how many old prompts stopped at once instead of fading out (0 unless old
        and new together are more than `capacity`: the quietest leaving ones go first).

        Rows already playing keep their place; a new prompt's row is a copy of the loudest row's
        (its history), so it continues the music rather than starting over."""
        if not prompts:
            raise ContextError("at least one prompt is needed")
        total = sum(w for _, w in prompts)
        if total <= 0 or any(w < 0 for _, w in prompts):
            raise ContextError("prompt weights must be >= 0 and not all zero")
        target: dict[str, tuple[Condition, float]] = {}
        for cond, w in prompts:
            prev = target.get(cond.text)
            target[cond.text] = (cond, (prev[1] if prev else 0.0) + w / total)
        rows = self.rows
        old = {r.condition.text for r in rows}
        kept = [i for i, r in enumerate(rows) if r.condition.text in target or fade_frames > 0]
        new = [t for t in target if t not in old]
        excess = len(kept) + len(new) - self.capacity
        leaving = sorted((i for i in kept if rows[i].condition.text not in target), key=lambda i: rows[i].weight)
        cut = set(leaving[: max(0, excess)])  # no room to fade these out: they stop at once
        kept = [i for i in kept if i not in cut]
        if len(kept) + len(new) > self.capacity:
            raise ContextError(f"at most {self.capacity} prompts can sound at once (a fade needs old and new together)")
        source = max(range(len(rows)), key=lambda i: rows[i].weight)
        order = kept + [source] * len(new) + self.tail_rows()
        fresh = [rows[i] for i in kept] + [PromptRow(target[t][0], 0.0) for t in new]
        end = [target[r.condition.text][1] if r.condition.text in target else 0.0 for r in fresh]
        for r in fresh:  # refresh conditions (same text, maybe recomputed by the conditioner)
            if r.condition.text in target:
                r.condition = target[r.condition.text][0]
        self.rows = fresh
        if fade_frames > 0:
            self.fade = Fade(start=[r.weight for r in fresh], end=end, frames=fade_frames)
            return order, len(cut)
        for r, w in zip(fresh, end):
            r.weight = w
        self.fade = None
        return _then(order, self.drop_silent()), len(cut)

    def advance_fade(self) -> list[int] | None:
        """One frame of the crossfade; the cache order when it ended and silent rows left."""
        fade = self.fade
        if fade is None:
            return None
        fade.done += 1
        a = min(1.0, fade.done / fade.frames)
        for r, s, e in zip(self.rows, fade.start, fade.end):
            r.weight = s + (e - s) * a
        if fade.done < fade.frames:
            return None
        self.fade = None
        return self.drop_silent()

    def drop_silent(self) -> list[int] | None:
        """Drop the prompt rows at weight 0; the cache order, or None when none was."""
        keep = [i for i, r in enumerate(self.rows) if r.weight > 0]
        if len(keep) == len(self.rows):
            return None
        order = keep + self.tail_rows()
        self.rows = [self.rows[i] for i in keep]
        return order

    def mix(self, logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
        """Rows' logits (rows, K, V) -> guided scores (K, V), in the reference's op order for one row."""
        rows, n = self.rows, len(self.rows)
        if not self.guided:
            if n == 1 and rows[0].weight == 1.0:
                return logits[0]
            return functools.reduce(operator.add, (r.weight * logits[i] for i, r in enumerate(rows)))
        u = logits[n + self.tail - 1]
        if self.style_row:  # MusicGen-Style (one prompt row): double guidance, or plain without cfg_beta
            if params.cfg_beta is None:
                return guide(logits[0], u, params.cfg)
            return guide_double(logits[0], logits[n], u, params.cfg, params.cfg_beta)
        if n == 1:
            d = logits[0] - u if rows[0].weight == 1.0 else (logits[0] - u) * rows[0].weight
        else:
            d = functools.reduce(operator.add, (r.weight * (logits[i] - u) for i, r in enumerate(rows)))
        return u + d * params.cfg


def _then(first: list[int], second: list[int] | None) -> list[int]:
    """Two cache orders applied one after the other, as one."""
    return first if second is None else [first[i] for i in second]
