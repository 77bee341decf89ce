"""What a session can be told to do. Bridges translate OSC / WebSocket / stdin into these.

Commands are plain frozen dataclasses; the session applies them at frame boundaries, in order, and
answers each through its `Ticket` (when it took effect, at which frame, or why it could not).
"""

from __future__ import annotations

import itertools
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class SetPrompt:
    text: str
    fade_s: float | None = None  # None = the session's default fade


@dataclass(frozen=True)
class SetWeightedPrompts:
    prompts: tuple[tuple[str, float], ...]
    fade_s: float | None = None


@dataclass(frozen=True)
class SetParams:
    """A partial update of the sampling settings; None leaves a setting as it is."""

    cfg: float | None = None
    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None


@dataclass(frozen=True)
class SetSeed:
    seed: int


@dataclass(frozen=True)
class SetGain:
    gain: float


@dataclass(frozen=True)
class SetContext:
    """Seconds of context kept when the window slides."""

    seconds: float


@dataclass(frozen=True)
class SetFade:
    """Default crossfade, in seconds, for later prompt changes."""

    seconds: float


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


@dataclass(frozen=True, eq=False)
class ContinueAudio:
    """Continue from audio handed in by a bridge: (samples, channels) float32 at `rate`."""

    audio: np.ndarray
    rate: int
    seconds: float = 10.0


Command = (
    SetPrompt | SetWeightedPrompts | SetParams | SetSeed | SetGain | SetContext | SetFade | Play | Pause | Stop | Reset
    | ContinueHistory | ContinueInput | ContinueFile | ContinueAudio
)

_ids = itertools.count(1)


@dataclass
class Ticket:
    """The answer to one command. Times are `time.perf_counter()` seconds."""

    command: Any
    id: int = field(default_factory=lambda: next(_ids))
    accepted: float = field(default_factory=time.perf_counter)
    applied: float | None = None
    frame: int | None = None  # first frame generated under the command
    error: str | None = None
    audible: float | None = None  # when the first sample generated under it reached the output
    done: threading.Event = field(default_factory=threading.Event)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the command was applied or refused."""
        return self.done.wait(timeout)

    @property
    def latency_ms(self) -> float | None:
        return None if self.audible is None else 1000 * (self.audible - self.accepted)
