"""What the parts of a session share: the transport's states, a handler's answer, and what each
part of `Session` uses of the others (`SessionParts`) - the one place that says how they are tied.

A session is one class made of parts, each a module of its own: `session` (its lifecycle, the
loop's callbacks, the command table), `handlers` (controls, prompts, transport, queries),
`audio_requests` (continuations, melodies and styles: requests that read audio and prepare over
many steps) and `beat_holding` (quantized changes held for their beat). Each part is a mixin
whose methods run on the generation thread only.
"""

from __future__ import annotations

import enum
from abc import abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from musicgen_live.engine.generator import StreamGenerator
    from musicgen_live.engine.model import MusicGen
    from musicgen_live.engine.sampling import SamplingParams

    from . import commands as c
    from .config import StreamConfig
    from .outputs import InputCapture, RingOutput
    from .preparations import Clip, PendingCondition, PendingContinuation, PendingPrompt
    from .quantize import BeatClock
    from .reads import Read, Reader
    from .sink import AudioSink
    from .slots import Board

PLAYING, PAUSED, STOPPED = "playing", "paused", "stopped"
Listener = Callable[[str, dict[str, Any]], None]


@dataclass(frozen=True)
class Heard:
    """Where a change becomes audible: from a model frame, or from an output ring position."""

    frame: int | None = None
    device_frame: int | None = None


NO_CLOCK = "quantize needs a shared beat clock: start serve with --link"
NEEDS = {  # the checkpoints a melody or style command needs
    "melody": "MusicGen-Melody checkpoint (--model tiny-melody, facebook/musicgen-melody)",
    "style": "MusicGen-Style checkpoint (--model tiny-style, or facebook/musicgen-style in audiocraft's format)",
}


class Deferred(enum.Enum):
    """A handler's answer when the command is answered later: by its job, or once the window
    prefilled under it plays (the one member, `DEFERRED`)."""

    DEFERRED = "deferred"


DEFERRED = Deferred.DEFERRED
Answer = Heard | None | Deferred  # where the change is heard from (None: the next frame), or later


class SessionParts:
    """The session as its parts see one another: the state `Session.__init__` makes, and the
    methods one part calls in another (each defined by exactly one part; `Session` has them all).
    A plain base, not a Protocol: mypy cannot type a Protocol's attributes that its explicit
    subclasses assign."""

    model: MusicGen
    output: RingOutput
    cfg: StreamConfig
    gen: StreamGenerator
    params: SamplingParams
    state: str  # PLAYING, PAUSED or STOPPED
    controls: dict[str, float | int]
    clock: BeatClock | None
    capture: InputCapture | None
    log: Callable[[str], None]
    rate: int  # the model's sample rate
    hop: int  # samples a frame
    prompts: list[tuple[str, float]]
    board: Board
    sink: AudioSink
    reader: Reader
    codec_origin: tuple[int, int]
    melody: str
    style: str
    _held: list[c.Ticket]
    _prompt: PendingPrompt | None
    _continuation: PendingContinuation | None
    _condition: PendingCondition | None
    _staged_continuations: list[PendingContinuation]
    _staged_conditions: list[PendingCondition]
    _features: torch.Tensor | None

    # the session's core (session.py)
    @abstractmethod
    def view(self) -> dict[str, Any]: ...
    @abstractmethod
    def snapshot(self) -> dict[str, Any]: ...
    @abstractmethod
    def report_error(self, e: Exception) -> None: ...
    @abstractmethod
    def _apply(self, ticket: c.Ticket) -> None: ...
    @abstractmethod
    def _applied(self, ticket: c.Ticket, heard: Answer, before: dict[str, Any]) -> None: ...
    @abstractmethod
    def _refuse(self, ticket: c.Ticket, reason: str) -> None: ...

    # handlers.py
    @abstractmethod
    def _supersede(self, old: c.Ticket, new: c.Ticket, reason: str) -> None: ...
    @abstractmethod
    def _restart(self, keep_audio: bool) -> int: ...

    # beat_holding.py
    @abstractmethod
    def _due(self, ticket: c.Ticket) -> bool: ...
    @abstractmethod
    def _unbuffered(self) -> int: ...

    # audio_requests.py
    @abstractmethod
    def _prefix_prompt(
        self, ticket: c.Ticket, prompts: list[tuple[str, float]], fade: float, board: Board
    ) -> Answer: ...
    @abstractmethod
    def _cancel_continuation(self, reason: str, by: c.Ticket | None = None) -> None: ...
    @abstractmethod
    def _clip_source(self, cmd: c.Clip, seconds: float) -> Read[Clip]: ...
