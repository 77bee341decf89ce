"""What a session can be told to do. Bridges translate OSC / WebSocket / stdin into these.

Commands are plain frozen dataclasses; the session applies them at frame boundaries, in order, and
answers each exactly once through its `Ticket`: applied (when, from which frame) or refused (why).
A prompt that needs its text encoded, and a continuation that needs its audio encoded, are
prepared off the generation thread and answered when they take effect.
"""

from __future__ import annotations

import itertools
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:  # bridges import this to build commands; only ContinueAudio and FromUpload hold an array
    import numpy as np


@dataclass(frozen=True)
class SetPrompt:
    text: str
    fade_s: float | None = None  # None = the session's default fade
    quantize: float | None = None  # beats this change alone lands on (0 = at once); None = the session's


@dataclass(frozen=True)
class SetWeightedPrompts:
    prompts: tuple[tuple[str, float], ...]
    fade_s: float | None = None
    quantize: float | None = None
    slots: bool = False  # the pairs are the blend board's slots in order, 0 and "" included (`slots`)


@dataclass(frozen=True)
class Set:
    """Set one live control (`streamer.controls.CONTROLS`: cfg, temperature, top_k, top_p, seed,
    gain, context, fade) to `value`."""

    name: str
    value: float
    quantize: float | None = None  # beats this change alone lands on (0 = at once); None = the session's


@dataclass(frozen=True)
class Play:
    pass


@dataclass(frozen=True)
class Pause:
    """Silence now; `Play` resumes exactly where it was."""


@dataclass(frozen=True)
class Stop:
    """Silence now and clear the musical context (the prompts stay); `Play` starts afresh."""


@dataclass(frozen=True)
class Reset:
    """Clear the musical context and keep playing."""


@dataclass(frozen=True)
class ContinueHistory:
    """Continue from the last `seconds` of the session's own output."""

    seconds: float = 10.0


@dataclass(frozen=True)
class ContinueInput:
    """Continue from the last `seconds` captured from the input device."""

    seconds: float = 10.0


@dataclass(frozen=True)
class ContinueFile:
    path: str
    seconds: float = 10.0  # the last `seconds` of the file
    folders: tuple[str, ...] = ()  # where it must lie (checked again on the file as opened); () = anywhere


@dataclass(frozen=True, eq=False)
class ContinueAudio:
    """Continue from audio handed in by a bridge: (samples, channels) float32 at `rate`."""

    audio: np.ndarray
    rate: int
    seconds: float = 10.0


@dataclass(frozen=True, eq=False)
class ContinueCodes:
    """Continue from codes the stream played before, (K, frames) integers: a session restarted
    elsewhere (a cluster replica lost) carries on from them without encoding audio."""

    codes: np.ndarray


# Where a melody or style clip comes from (`Follow.source`).
@dataclass(frozen=True)
class FromHistory:
    """The last `seconds` of the session's own output (what was just played)."""

    seconds: float


@dataclass(frozen=True)
class FromInput:
    """The last `seconds` captured from the input device."""

    seconds: float


@dataclass(frozen=True)
class FromFile:
    """The first `seconds` of a file (a riff, a loop)."""

    path: str
    seconds: float
    folders: tuple[str, ...] = ()  # where it must lie; () = anywhere


@dataclass(frozen=True, eq=False)
class FromUpload:
    """The first `seconds` of audio handed in by a bridge: (samples, channels) float32 at `rate`."""

    audio: np.ndarray
    rate: int
    seconds: float


FollowSource = FromHistory | FromInput | FromFile | FromUpload
FollowKind = Literal["melody", "style"]
FOLLOW_KINDS: tuple[FollowKind, ...] = ("melody", "style")


@dataclass(frozen=True)
class Follow:
    """What a melody or style checkpoint's prefix follows from the next re-prefill of its window
    on: the melody (chroma) or the style of a clip from `source`; None: text alone again."""

    kind: FollowKind
    source: FollowSource | None = None

    @property
    def name(self) -> str:
        """melody/history, style/file, melody/off, ..."""
        return f"{self.kind}/{'off' if self.source is None else source_name(self.source)}"


_SOURCE_NAMES: dict[type, str] = {FromHistory: "history", FromInput: "input", FromFile: "file", FromUpload: "upload"}


def source_name(source: FollowSource) -> str:
    """history, input, file or upload: as requests name where a clip comes from."""
    return _SOURCE_NAMES[type(source)]


@dataclass(frozen=True)
class Query:
    """Answer the session's state (`Ticket.result`) once every command before it has been applied:
    a `get` after a `set` answers the value that will sound."""


@dataclass(frozen=True)
class RecentCodes:
    """Answer the codes of the context the stream would keep at a slide, at most (`Ticket.result["codes"]`,
    (K, frames) int16): what a session restarted elsewhere continues from. Not a performer's
    command: no bridge's vocabulary names it."""


AudioContinuation = ContinueHistory | ContinueInput | ContinueFile | ContinueAudio  # continuations that read audio
AUDIO_CONTINUATIONS = (ContinueHistory, ContinueInput, ContinueFile, ContinueAudio)
Continuation = AudioContinuation | ContinueCodes
CONTINUATIONS = (ContinueHistory, ContinueInput, ContinueFile, ContinueAudio, ContinueCodes)
# what a clip is read from: a continuation's command, or a melody's or style's source
Clip = AudioContinuation | FollowSource
HISTORY_CLIPS = (ContinueHistory, FromHistory)
INPUT_CLIPS = (ContinueInput, FromInput)
FILE_CLIPS = (ContinueFile, FromFile)
UPLOADS = (ContinueAudio, FromUpload)
Command = (
    SetPrompt | SetWeightedPrompts | Set | Play | Pause | Stop | Reset | Continuation | Follow | Query | RecentCodes
)

_ids = itertools.count(1)


@dataclass
class Ticket:
    """The answer to one command, given once. Times are `time.perf_counter()` seconds."""

    command: Command
    source: str = "api"  # who sent it (stdin, osc 127.0.0.1:9000, ws 3 ...), for the console
    id: int = field(default_factory=lambda: next(_ids))
    accepted: float = field(default_factory=time.perf_counter)
    applied: float | None = None
    frame: int | None = None  # first frame generated under the command
    error: str | None = None
    note: str | None = None  # applied, but not quite as asked (e.g. clamped to the context)
    superseded: bool = False  # refused only because a newer request from the same sender replaced it
    result: dict[str, Any] | None = None  # a Query's answer: the session's state
    audible: float | None = None  # when the first sample generated under it reached the output
    beat: float | None = None  # the beat it is held for (a quantized change), on the session's beat clock
    done: threading.Event = field(default_factory=threading.Event)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the command was applied or refused."""
        return self.done.wait(timeout)

    @property
    def name(self) -> str:
        """The command as a performer would name it (`cfg`, `prompt`, `continue`, ...)."""
        return command_name(self.command)

    @property
    def latency_ms(self) -> float | None:
        return None if self.audible is None else 1000 * (self.audible - self.accepted)


_NAMES: dict[type, str] = {
    SetPrompt: "prompt",
    SetWeightedPrompts: "prompt/weighted",
    Play: "play",
    Pause: "pause",
    Stop: "stop",
    Reset: "reset",
    ContinueHistory: "continue",
    ContinueInput: "continue/input",
    ContinueFile: "continue/file",
    ContinueAudio: "continue/upload",
    ContinueCodes: "continue/codes",
    Query: "get",
    RecentCodes: "codes",
}


def command_name(command: Command) -> str:
    return command.name if isinstance(command, (Set, Follow)) else _NAMES[type(command)]
