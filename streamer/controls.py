"""The live controls: every number a performer can turn, with its one range and meaning.

This table is the single source of names and ranges. The bridges' vocabulary (`bridges.protocol`)
clamps what arrives to these ranges and says so; the session checks them again for callers that
use the Python API directly. Names are the same everywhere: the OSC address (`/musicgen/cfg`),
the WebSocket key (`"cfg"`), the stdin word (`cfg 4`) and the key in the session's state.
"""

from __future__ import annotations

from dataclasses import dataclass

from musicgen_live.engine.limits import MAX_PROMPTS as MAX_PROMPTS  # prompts that can sound at once (re-exported)


@dataclass(frozen=True)
class Control:
    name: str
    kind: type  # float or int
    lo: float
    hi: float
    meaning: str  # one line, with the unit

    def clamp(self, value: float) -> int | float:
        """`value` moved into range (and rounded for whole-number controls)."""
        value = min(self.hi, max(self.lo, value))
        return int(round(value)) if self.kind is int else float(value)

    def check(self, value: float) -> int | float:
        """`value` if it is in range, else a ValueError with the sentence a performer reads."""
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not self.lo <= value <= self.hi:
            raise ValueError(f"{self.name} must be within {_fmt(self.lo)}..{_fmt(self.hi)}, got {value!r}")
        return int(value) if self.kind is int else float(value)


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


CONTROLS: dict[str, Control] = {
    c.name: c
    for c in (
        Control("cfg", float, 0.0, 20.0, "classifier-free guidance scale (1 = none, 3 = MusicGen's default)"),
        Control("cfg_beta", float, 0.0, 20.0, "MusicGen-Style: text against style in double guidance (0 = off)"),
        Control("temperature", float, 0.05, 5.0, "sampling temperature"),
        Control("top_k", int, 0, 2048, "sample among the k likeliest tokens (0 = off)"),
        Control("top_p", float, 0.0, 1.0, "sample within this probability mass (0 = off)"),
        Control("seed", int, 0, 2**31 - 1, "random seed of the sampler (re-seeds now)"),
        Control("gain", float, 0.0, 4.0, "output gain (linear)"),
        Control("context", float, 1.0, 30.0, "seconds of music kept when the window slides"),
        Control("fade", float, 0.0, 60.0, "default crossfade for prompt changes, seconds"),
        Control("quantize", float, 0.0, 64.0, "beats: changes land on the next multiple on the Link beat (0 = now)"),
    )
}
# the controls whose changes a `quantize` holds for the beat (prompt changes are held too)
QUANTIZED_CONTROLS = ("cfg", "cfg_beta", "temperature", "top_k", "top_p", "seed", "gain")
SAMPLING = ("cfg", "cfg_beta", "temperature", "top_k", "top_p")  # the controls that are sampling parameters
TRIGGERS = ("play", "pause", "stop", "reset")
MAX_PROMPT_CHARS = 2000
MAX_CONTINUE_S = 30.0  # the longest clip a continuation may ask for (the context keeps less)
DEFAULT_CONTINUE_S = 10.0
MAX_MELODY_S = 30.0  # the longest melody loop (a melody checkpoint's chroma covers 30 s)
DEFAULT_MELODY_S = 8.0
MAX_STYLE_S = 30.0  # the longest clip a style is taken from (its middle excerpt is what the model hears)
DEFAULT_STYLE_S = 3.0  # MusicGen-Style's excerpt: the last 3 s are "what was just played"
