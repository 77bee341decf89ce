"""What a session prepares a piece at a time: its pending changes, and the work their jobs run.

A new prompt, a continuation and a melody or style stream's new condition each wait as a `Pending*`
record (its ticket, its `Job`, the audio being read for it) until their job is done; the job runs
one of the generators here, which drive the engine's own piece-at-a-time generators (T5 blocks,
encoder frames, chroma or style features) a piece per `send(amount)` (`streamer.jobs`).
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

import torch
from musicgen_live.engine.audiofile import prepare_audio
from musicgen_live.engine.conditioning import Condition
from musicgen_live.engine.errors import ContextError
from musicgen_live.engine.generator import Continuation as Handle
from musicgen_live.engine.kvcache import PrefixKV
from musicgen_live.engine.model import MusicGen

from . import commands as c
from .jobs import Job
from .reads import Read, wait
from .slots import Board

Clip = tuple[torch.Tensor, int]  # audio as (channels, samples) at the model's rate, and its source's channels


@dataclass
class PendingPrompt:
    """A new prompt (or blend): its conditions built a T5 block per piece, then faded in."""

    ticket: c.Ticket
    prompts: list[tuple[str, float]]
    fade_s: float
    job: Job[list[Condition]]
    board: Board | None = None  # the blend board it sets (a `slots` request), else fitted to its prompts


@dataclass
class PendingCondition:
    """A melody or style stream's new condition (a prompt, a melody, a style): built a piece per step, then the
    window is prefilled under it (`handle`) and it is answered once that window plays."""

    ticket: c.Ticket
    job: Job[tuple[Condition, torch.Tensor | None]]
    prompts: list[tuple[str, float]]
    follows: str  # how the state will describe the melody or style ("off", "history 8 s", ...)
    features: torch.Tensor | None = None  # the melody's one-hot chroma or the style's states, once built
    handle: PrefixKV | None = None
    board: Board | None = None
    read: Read[Clip] | None = None  # its audio, being read (it waits, staged, until that succeeded)


@dataclass
class PendingContinuation:
    """Audio (or codes) to continue from: encoded a few frames per piece, then the window is
    prefilled from them (`handle`) and it is answered once that window plays."""

    ticket: c.Ticket
    job: Job[torch.Tensor]
    handle: Handle | None = None
    read: Read[Clip] | None = None  # its audio, being read (it waits, staged, until that succeeded)


def conditions(model: MusicGen, texts: list[str]) -> Generator[None, int | None, list[Condition]]:
    """The prompts' conditions, a T5 block per piece (prompts heard before cost nothing)."""
    amount = yield
    conds = []
    for text in texts:
        conds.append((yield from delegate(model.conditioner.condition_steps(text, guided=True), amount)))
        amount = yield
    return conds


def prefix_condition(
    model: MusicGen, text: str, features: torch.Tensor | None, source: Read[Clip] | None
) -> Generator[Any, int | None, tuple[Condition, torch.Tensor | None]]:
    """A melody or style stream's condition: `text` and the melody (chroma) or style of `source`'s
    audio (waited for, then its features: chroma in one piece, the style a layer per piece) or the
    given `features` (None: text alone); then T5 a block per piece. Returns the condition and the
    features it used."""
    amount = yield
    if source is not None:
        clip, _ = yield from wait(source)
        amount = yield
        if model.style is not None:
            features = yield from delegate(model.style.states_steps(clip), amount)
        else:
            if model.chroma is None:
                raise ContextError("this checkpoint has no melody or style conditioning")
            rate = model.chroma.settings.sample_rate
            if rate != model.sample_rate:
                clip = prepare_audio(clip.T.numpy(), model.sample_rate, rate, 1)
            features = model.chroma(clip)
        amount = yield
    if model.style is not None:
        steps = model.style_condition_steps(text or None, features, guided=True, double=True)
    else:
        steps = model.melody_condition_steps(text or None, features, guided=True)
    cond = yield from delegate(steps, amount)
    return cond, features


def continuation_codes(
    model: MusicGen, source: Read[Clip], seconds: float, ticket: c.Ticket
) -> Generator[Any, int | None, torch.Tensor]:
    """Audio -> the codes to continue from: wait for the read, then encode a few frames per piece.
    A source of other channels than the model's is mixed, and `ticket` notes it."""
    yield
    clip, have = yield from wait(source)
    mixed = channel_note(have, model.audio_channels)
    if mixed:
        ticket.note = f"{ticket.note}; {mixed}" if ticket.note else mixed
    clip = clip[:, -int(seconds * model.sample_rate) :]
    if clip.shape[-1] < model.spec.codec.hop:
        raise ContextError("the audio to continue from is shorter than one frame")
    amount = yield
    codes = yield from delegate(model.codec.encode_steps(clip.to(model.device).unsqueeze(1)), amount)
    return model.codec_to_codes(codes)


def given(codes: torch.Tensor) -> Generator[None, int | None, torch.Tensor]:
    """Codes handed in: nothing to encode."""
    yield
    return codes


def channel_note(have: int, want: int) -> str | None:
    """What a continuation's sender should know when its audio is mixed to the model's channels."""
    if have == want:
        return None
    if want > have:
        return f"{have}-channel audio up-mixed to {want} channels (each channel the same)"
    return f"{have}-channel audio mixed down to {want} channel{'s' if want > 1 else ''}"


def delegate(steps: Generator[None, Any, Any], amount: int | None) -> Generator[None, int | None, Any]:
    """`yield from` an engine generator (whose first yield only primes it), passing it the amount
    the current piece was given, so every piece this job yields has done work."""
    try:
        next(steps)
        while True:
            steps.send(amount)
            amount = yield
    except StopIteration as done:
        return done.value
