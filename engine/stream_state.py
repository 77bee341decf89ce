"""One stream's state, as typed objects whose phases can be read: the live window and the one
being prepared beside it (a slide or a continuation), and `StreamState`, which holds them all
with the prompt rows (`engine.prompt_rows`). `engine.generator` is the machine that moves them; the model
holds none of it.

Units: *frames* are absolute codec frames since the stream began (prompt included); *columns*
are positions in a window (column 0 = BOS).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import torch

from .codec import DecoderState
from .kvcache import KVCache, PrefixKV
from .prompt_rows import PromptRows

MIN_CHUNK = 2  # columns a preparation feeds per step at least (a slide must gain on the live window)


class Phase(enum.Enum):
    PLAYING = "playing"  # stepping the live window; the spare cache is idle
    SLIDING = "sliding"  # ... while the next window is prefilled from the stream's own frames
    CONTINUING = "continuing"  # ... while a window is prefilled from given codes


@dataclass
class StepResult:
    codes: torch.Tensor  # (K, n) frames completed by this call (n is 0 or 1 per step)
    audio: torch.Tensor  # (channels, samples) that became final


@dataclass
class Window:
    """One LM context: a KV cache whose column t holds codebook k of frame origin + t - 1 - d_k.

    Columns 0..column-1 have been fed to the LM (their keys/values are in the cache); column
    `column` is known (sampled, or given) and is what the next step feeds."""

    cache: KVCache
    origin: int  # absolute frame at the window's first column after BOS
    column: int
    columns: int  # its length: the columns it can hold
    prefix: PrefixKV | None = None  # a melody stream's conditioning, in the cache slots before column 0

    @property
    def offset(self) -> int:
        """Cache slots (and positions) before column 0: its prefix's."""
        return 0 if self.prefix is None else self.prefix.length


@dataclass
class Slide:
    """The next window, prefilled from the stream's own frames while the live one plays; swapped
    in once its column has caught up with the live column."""

    window: Window  # in the spare cache; its column counts the columns fed so far
    prefix_fed: int = 0  # positions of its prefix fed so far (they come first)


@dataclass(eq=False)
class Continuation:
    """A restart from given codes, prefilled while the live window plays. The handle a caller
    keeps: `frame` is set once it has taken over, `superseded` if a later restart replaced it."""

    codes: torch.Tensor  # (K, P) the frames the new window starts from
    columns: torch.Tensor  # (K, P) the columns fed before it takes over: BOS, then the codes'
    cache: KVCache | None = None  # the spare cache, once it is being prefilled
    fed: int = 0
    frame: int | None = None  # the first frame generated from it
    superseded: bool = False
    trimmed: int | None = None  # frames it was asked with, when only its last `frames` fit the window
    prefix: PrefixKV | None = None  # a melody stream's prefix, fed before the codes
    prefix_fed: int = 0

    @property
    def frames(self) -> int:
        return int(self.codes.shape[-1])

    @property
    def remaining(self) -> int:
        return self.frames - self.fed

    @property
    def kv(self) -> KVCache:
        """The cache it is prefilled in (it has one once it is being prepared)."""
        if self.cache is None:
            raise RuntimeError("this continuation is not being prepared yet")
        return self.cache


@dataclass
class StreamState:
    """Everything that belongs to one stream; the model holds none of it."""

    window: Window
    prompts: PromptRows  # the batch's rows, their weights and crossfade, and how guidance mixes them
    frames: torch.Tensor  # (K, capacity) codes from absolute frame `base` on; special token = unknown
    base: int
    protected: int  # frames below this are given (prompt), never overwritten by sampling
    total_frames: int | None  # finite run length (prompt included); None = endless
    generator: torch.Generator
    decoder: DecoderState
    context_frames: int  # frames kept when the window slides
    chunk: int  # columns a slide feeds per step (>= MIN_CHUNK: it must gain on the live window)
    continue_chunk: int  # columns a continuation feeds per step, riding on it (>= 1)
    prep: Slide | Continuation | None = None  # what the spare cache is being filled with
    queued: Continuation | None = None  # a continuation waiting for a slide to finish first
    spare: KVCache | None = None  # the cache the next preparation fills (swapped with the live one)
    decoded: int = 0  # frames handed to the codec
    codec_queue: torch.Tensor | None = None  # (K, n) frames handed over but not yet decoded
    skip_samples: int = 0  # decoded samples still to drop (prompt audio the listener already has)
    slides: int = 0
    prefix: PrefixKV | None = None  # a melody stream's conditioning: what the next window is prefilled with
    prefix_slots: int = 0  # cache slots before column 0 that a prefix may take
