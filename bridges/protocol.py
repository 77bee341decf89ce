"""The one command vocabulary every bridge speaks: OSC, WebSocket and stdin. No I/O here (as in the
`websockets` library).

A request is a name and a list of arguments, exactly as an OSC address (without the `/musicgen`
prefix) and its arguments: `cfg 4.5`, `prompt/weighted "dub" 1 "techno" 0.5`, `play`,
`continue 8`, `get/top_k`. A stdin line is the same words (`cfg 4.5`), and the WebSocket bridge
turns its JSON messages into the same requests, so every transport has the same names, ranges,
sandbox, caps and error sentences, and is tested once, here, and once more per bridge through one
table (tests/bridges/test_vocabulary.py).

Numbers are accepted loosely (Pd and Open Stage Control send every number as a float; some tools
send numeric strings) and clamped to their range, with a note saying so; triggers fire on no
argument or a value >= 0.5 (a button's release, 0, is ignored). Anything else gets one sentence
back as an error, and changes nothing.

The other direction: `state_replies` turns the session's "changed" events (whoever caused them)
into the messages every OSC subscriber receives; WebSocket clients get the same changes as JSON.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from musicgen_live.streamer import commands as c
from musicgen_live.streamer.controls import (
    CONTROLS,
    DEFAULT_CONTINUE_S,
    DEFAULT_MELODY_S,
    DEFAULT_STYLE_S,
    MAX_CONTINUE_S,
    MAX_MELODY_S,
    MAX_PROMPT_CHARS,
    MAX_PROMPTS,
    MAX_STYLE_S,
    QUANTIZED_CONTROLS,
    TRIGGERS,
)
from musicgen_live.streamer.slots import SLOTS

ALIASES = {
    "continue-input": "continue/input",
    "continue-file": "continue/file",
    "melody-history": "melody/history",
    "melody-input": "melody/input",
    "melody-file": "melody/file",
    "melody-off": "melody/off",
    "style-history": "style/history",
    "style-input": "style/input",
    "style-file": "style/file",
    "style-off": "style/off",
    "status": "get/state",
    "top-k": "top_k",
    "top-p": "top_p",
}
GETTABLE = (
    "state",
    "prompt",
    "transport",
    "melody",
    "style",
    *CONTROLS,
    "position",
    "frame",
    "seconds",
    "buffer_ms",
    "underruns",
)
MAX_ARGS = 64  # arguments one request may carry (prompt words, weighted pairs)


class ProtocolError(ValueError):
    """Bad input; its message is the sentence sent back to whoever sent it."""


@dataclass(frozen=True)
class Reply:
    name: str  # e.g. "cfg", "pong", "state"; OSC sends it as /musicgen/<name>
    args: tuple[object, ...] = ()


@dataclass
class Outcome:
    commands: list[c.Command] = field(default_factory=list)  # for the session, in order
    replies: list[Reply] = field(default_factory=list)  # to the sender, now
    notes: list[str] = field(default_factory=list)  # to the sender: done, but not quite as asked
    query: str | None = None  # a get: answered (`answer`) once the commands sent before it applied
    subscribe: tuple[object, ...] | None = None  # (port, host) arguments, for transports with subscribers
    unsubscribe: bool = False


class Vocabulary:
    """Turns requests into session commands and replies. `info` answers `info`; `audio_dirs` are the
    only folders `continue/file` may read from (nothing when empty)."""

    def __init__(self, info: dict[str, Any], audio_dirs: Sequence[str] = ()) -> None:
        self.info = info
        self.audio_dirs = [Path(d).expanduser().resolve() for d in audio_dirs if d]
        self._table: dict[str, Callable[[str, Sequence[object]], Outcome]] = {
            "prompt": self._prompt,
            "prompt/fade": self._prompt_fade,
            "prompt/weighted": self._weighted,
            "slots": self._slots,
            "continue": self._clip,
            "continue/input": self._clip,
            "continue/file": self._clip_file,
            "melody/history": self._clip,
            "melody/input": self._clip,
            "melody/file": self._clip_file,
            "melody/off": lambda n, a: Outcome(commands=[c.Follow("melody")] if _fires(a, n) else []),
            "style/history": self._clip,
            "style/input": self._clip,
            "style/file": self._clip_file,
            "style/off": lambda n, a: Outcome(commands=[c.Follow("style")] if _fires(a, n) else []),
            "ping": lambda _n, a: Outcome(replies=[Reply("pong", tuple(a[:1]))]),
            "info": lambda _n, _a: Outcome(replies=[Reply("info", (json.dumps(self.info),))]),
            "subscribe": lambda _n, a: Outcome(subscribe=tuple(a[:2])),
            "unsubscribe": lambda _n, _a: Outcome(unsubscribe=True),
        }

    def handle(self, name: str, args: Sequence[object]) -> Outcome:
        """One request -> what to do about it, or a ProtocolError with the sentence to send back."""
        name = _name(name)
        if len(args) > MAX_ARGS:
            raise ProtocolError(f"'{name}' takes at most {MAX_ARGS} arguments, got {len(args)}")
        if name == "ctrl":  # TidalCycles-style: /ctrl key value (one level: ctrl inside ctrl is refused)
            if len(args) < 2:
                raise ProtocolError("ctrl needs a key and a value")
            key = _name(_text(args[0]))
            if key == "ctrl":
                raise ProtocolError("ctrl cannot carry another ctrl")
            return self.handle(key, list(args[1:]))
        head, _, tail = name.partition("/")
        if head in CONTROLS and tail in ("", "norm"):
            return self._set(head, args, normalised=tail == "norm")
        if name in TRIGGERS:
            return Outcome(commands=[_TRIGGER[name]()] if _fires(args, name) else [])
        if head == "get" and tail:
            if tail not in GETTABLE:
                raise ProtocolError(f"cannot get '{tail}' (try {', '.join(GETTABLE[:4])}, ...)")
            return Outcome(query=tail)
        handler = self._table.get(name)
        if handler is None:
            raise ProtocolError(f"unknown command '{name}'")
        return handler(name, args)

    def update(self, changes: dict[str, object]) -> Outcome:
        """A WebSocket `session.update` ({key: value, ...}) as the requests it stands for, in a fixed
        order. A `fade` given with a prompt is that prompt's crossfade; alone, it sets the default.
        A `quantize` given with musical changes (prompts, cfg, sampling, seed, gain) is theirs alone."""
        unknown = sorted(set(changes) - set(UPDATE_KEYS))
        if unknown:
            raise ProtocolError(f"session.update does not know {unknown[0]!r} (keys: {', '.join(UPDATE_KEYS)})")
        prompt_fade = "fade" in changes and any(k in changes for k in ("prompt", "weighted_prompts", "slots"))
        # likewise a quantize given with musical changes is theirs alone; alone, it sets the session's
        own_quantize = "quantize" in changes and any(k in changes for k in QUANTIZED_KEYS)
        out = Outcome()
        if own_quantize:
            beats, notes = _control_value("quantize", changes["quantize"], normalised=False)
            out.notes += notes
        for key in UPDATE_KEYS:
            if key not in changes or (key == "fade" and prompt_fade) or (key == "quantize" and own_quantize):
                continue
            value = changes[key]
            if key in ("weighted_prompts", "slots"):
                if not isinstance(value, list) or not all(isinstance(p, list) and len(p) == 2 for p in value):
                    raise ProtocolError(f"{key} must be a list of [text, weight] pairs")
                part = self.handle(
                    "prompt/weighted" if key == "weighted_prompts" else "slots", [x for p in value for x in p]
                )
            elif key == "prompt":
                if not isinstance(value, str):
                    raise ProtocolError("prompt must be a string")
                part = self.handle("prompt", [value])
            else:
                if isinstance(value, (list, dict)) or value is None:
                    raise ProtocolError(f"{key} must be a number")
                part = self.handle(key, [value])
            if prompt_fade and key in ("prompt", "weighted_prompts", "slots"):
                fade, notes = _control_value("fade", changes["fade"], normalised=False)
                part.commands = [_with_fade(cmd, fade) for cmd in part.commands]
                part.notes += notes
            if own_quantize and key in QUANTIZED_KEYS:
                part.commands = [_with_quantize(cmd, beats) for cmd in part.commands]
            out.commands += part.commands
            out.notes += part.notes
        if not out.commands:
            raise ProtocolError("session.update changed nothing")
        return out

    def answer(self, what: str, state: dict[str, Any]) -> Reply:
        """The reply to `get/<what>` from the session's state."""
        if what == "state":
            return Reply("state", (json.dumps(state),))
        if what == "prompt":
            return Reply("prompt", (" | ".join(p["text"] for p in state["prompts"]),))
        if what == "transport":
            return Reply("transport", (state["state"],))
        return Reply(what, (state["seconds" if what == "position" else what],))

    def allowed_path(self, text: str, what: str = "continue/file") -> str:
        """`text` resolved inside one of the configured audio folders, or a refusal."""
        if not self.audio_dirs:
            raise ProtocolError(f"{what} is disabled: list the folders it may read in [bridges] audio_dirs")
        if "\x00" in text or not text.strip():
            raise ProtocolError(f"{what} needs a file name")
        candidate = Path(text)  # literally: "~user/x" is a name inside the folders, never a home folder
        tries = [candidate] if candidate.is_absolute() else [d / candidate for d in self.audio_dirs]
        for t in tries:
            real = Path(os.path.realpath(t))
            if any(real == d or d in real.parents for d in self.audio_dirs):
                return str(real)
        raise ProtocolError(f"'{text}' is outside the folders {what} may read")

    # -- requests --------------------------------------------------------------------------------
    def _set(self, name: str, args: Sequence[object], normalised: bool) -> Outcome:
        if name == "fade" and len(args) > 1 and not normalised:
            raise ProtocolError(
                "fade takes one number (the default crossfade); to crossfade to a prompt over "
                "S seconds send prompt/fade S TEXT"
            )
        if len(args) != 1:
            raise ProtocolError(f"{name} takes one number, got {len(args)} arguments")
        value, notes = _control_value(name, args[0], normalised)
        return Outcome(commands=[c.Set(name, value)], notes=notes)

    def _prompt(self, _name: str, args: Sequence[object]) -> Outcome:
        return Outcome(commands=[c.SetPrompt(_prompt_text(args))])

    def _prompt_fade(self, _name: str, args: Sequence[object]) -> Outcome:
        if len(args) < 2:
            raise ProtocolError("prompt/fade takes a number of seconds and the prompt: prompt/fade 4 warm dub")
        fade, notes = _control_value("fade", args[0], normalised=False)
        return Outcome(commands=[c.SetPrompt(_prompt_text(args[1:]), fade_s=fade)], notes=notes)

    def _weighted(self, _name: str, args: Sequence[object]) -> Outcome:
        if not args or len(args) % 2:
            raise ProtocolError("prompt/weighted takes pairs: text weight [text weight ...]")
        pairs = []
        for i in range(0, len(args), 2):
            text = _text(args[i]).strip()
            if not text:
                raise ProtocolError("every prompt needs some text")
            _check_prompt(text)
            weight = _number(args[i + 1], "prompt weight")
            if weight < 0:
                raise ProtocolError(f"prompt weights must be >= 0, got {_fmt(weight)}")
            pairs.append((text, weight))
        if not any(w > 0 for _, w in pairs):
            raise ProtocolError("at least one prompt weight must be above 0")
        if len(pairs) > MAX_PROMPTS:
            raise ProtocolError(f"at most {MAX_PROMPTS} prompts can sound at once, got {len(pairs)}")
        return Outcome(commands=[c.SetWeightedPrompts(tuple(pairs))])

    def _slots(self, _name: str, args: Sequence[object]) -> Outcome:
        """slots TEXT WEIGHT [TEXT WEIGHT ...]: the blend board's slots in order (at most
        `SLOTS`), weights 0 and empty texts ("") included - a slot keeps its text at any weight."""
        if not args or len(args) % 2 or len(args) > 2 * SLOTS:
            raise ProtocolError(f'slots takes up to {SLOTS} pairs: text weight [text weight ...] ("" = an empty slot)')
        pairs = []
        for i in range(0, len(args), 2):
            text = _text(args[i]).strip()
            if text:
                _check_prompt(text)
            weight = _number(args[i + 1], "slot weight")
            if not 0 <= weight <= 1:
                raise ProtocolError(f"slot weights are 0..1, got {_fmt(weight)}")
            pairs.append((text, float(f"{weight:.7g}")))
        return Outcome(commands=[c.SetWeightedPrompts(tuple(pairs), slots=True)])

    def _clip(self, name: str, args: Sequence[object]) -> Outcome:
        """continue, continue/input, melody/history, melody/input, style/history, style/input: `[secs]`."""
        if len(args) > 1:
            raise ProtocolError(f"{name} takes at most one number of seconds")
        command, seconds_of = _CLIPS[name]
        seconds, notes = seconds_of(args, 0, name)
        return Outcome(commands=[command(seconds)], notes=notes)

    def _clip_file(self, name: str, args: Sequence[object]) -> Outcome:
        """continue/file, melody/file, style/file: `path [secs]`, inside the audio folders."""
        if not args or len(args) > 2:
            raise ProtocolError(f"{name} takes a file name and, optionally, seconds")
        command, seconds_of = _CLIP_FILES[name]
        seconds, notes = seconds_of(args, 1, name)
        path = self.allowed_path(_text(args[0]), name)
        return Outcome(commands=[command(path, seconds, tuple(str(d) for d in self.audio_dirs))], notes=notes)


# WebSocket session.update keys, in the order they are applied
QUANTIZED_KEYS = (*QUANTIZED_CONTROLS, "prompt", "weighted_prompts", "slots")  # session.update keys a quantize holds
UPDATE_KEYS = [
    "context",
    "fade",
    *[k for k in CONTROLS if k not in ("context", "fade")],
    "weighted_prompts",
    "slots",
    "prompt",
]
_TRIGGER: dict[str, Callable[[], c.Command]] = {"play": c.Play, "pause": c.Pause, "stop": c.Stop, "reset": c.Reset}
_Seconds = Callable[[Sequence[object], int, str], tuple[float, list[str]]]
# requests that read audio: the command they make and how their seconds are read (default, cap;
# lambdas: the readers are defined further down)
_CLIPS: dict[str, tuple[Callable[[float], c.Command], _Seconds]] = {
    "continue": (c.ContinueHistory, lambda a, i, w: continue_seconds(a, i, w)),
    "continue/input": (c.ContinueInput, lambda a, i, w: continue_seconds(a, i, w)),
    "melody/history": (lambda s: c.Follow("melody", c.FromHistory(s)), lambda a, i, w: melody_seconds(a, i, w)),
    "melody/input": (lambda s: c.Follow("melody", c.FromInput(s)), lambda a, i, w: melody_seconds(a, i, w)),
    "style/history": (lambda s: c.Follow("style", c.FromHistory(s)), lambda a, i, w: style_seconds(a, i, w)),
    "style/input": (lambda s: c.Follow("style", c.FromInput(s)), lambda a, i, w: style_seconds(a, i, w)),
}
_CLIP_FILES: dict[str, tuple[Callable[[str, float, tuple[str, ...]], c.Command], _Seconds]] = {
    "continue/file": (c.ContinueFile, lambda a, i, w: continue_seconds(a, i, w)),
    "melody/file": (lambda p, s, d: c.Follow("melody", c.FromFile(p, s, d)), lambda a, i, w: melody_seconds(a, i, w)),
    "style/file": (lambda p, s, d: c.Follow("style", c.FromFile(p, s, d)), lambda a, i, w: style_seconds(a, i, w)),
}


def state_replies(changes: dict[str, Any]) -> list[Reply]:
    """A session's changes (as its "changed" event carries them) as the OSC messages subscribers get:
    `/cfg 4.5`, `/prompt "dub"` (or `/prompt/weighted ...` for a blend), `/transport playing`."""
    out = []
    for key, value in changes.items():
        if key == "prompts":
            if len(value) == 1 and value[0]["weight"] == 1.0:
                out.append(Reply("prompt", (value[0]["text"],)))
            else:
                out.append(Reply("prompt/weighted", tuple(x for p in value for x in (p["text"], float(p["weight"])))))
        elif key == "state":
            out.append(Reply("transport", (value,)))
        elif key == "slots":
            out.append(Reply("slots", tuple(x for p in value for x in (p["text"], float(p["weight"])))))
        else:
            out.append(Reply(key, (value,)))
    return out


def answer_line(ticket: c.Ticket) -> str:
    """A ticket's answer as the console prints it."""
    if ticket.superseded:
        return f"superseded: {ticket.error}"
    if ticket.error:
        return f"error: {ticket.error}"
    where = f" at frame {ticket.frame}" if ticket.frame is not None else ""
    return f"ok: {ticket.name}{where}" + (f" ({ticket.note})" if ticket.note else "")


# -- argument helpers --------------------------------------------------------------------------


def _name(name: str) -> str:
    name = name.strip().strip("/").lower()
    return ALIASES.get(name, name)


def _number(x: object, what: str) -> float:
    if isinstance(x, bool):
        return float(x)
    if isinstance(x, (int, float)):
        try:
            value = float(x)
        except OverflowError:  # an integer too large for a float
            raise ProtocolError(f"{what} needs a finite number, got a {len(str(abs(x)))}-digit integer") from None
    elif isinstance(x, (str, bytes)):
        try:
            value = float(x.decode() if isinstance(x, bytes) else x)
        except (ValueError, UnicodeDecodeError):
            raise ProtocolError(f"{what} needs a number, got '{_text(x)[:40]}'") from None
    else:
        raise ProtocolError(f"{what} needs a number, got {type(x).__name__}")
    if not math.isfinite(value):
        raise ProtocolError(f"{what} needs a finite number, got {value}")
    return value


def _text(x: object) -> str:
    if isinstance(x, bytes):
        return x.decode("utf-8", "replace")
    if isinstance(x, float) and x.is_integer():
        return str(int(x))
    return str(x)


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else f"{x:g}"


def _fires(args: Sequence[object], what: str) -> bool:
    if not args:
        return True
    return _number(args[0], what) >= 0.5


def continue_seconds(args: Sequence[object], index: int, what: str) -> tuple[float, list[str]]:
    """A continuation's seconds (argument `index` of `args`, or the default), capped with a note."""
    return _seconds(args, index, what, DEFAULT_CONTINUE_S, MAX_CONTINUE_S)


def melody_seconds(args: Sequence[object], index: int, what: str) -> tuple[float, list[str]]:
    """A melody loop's seconds, likewise."""
    return _seconds(args, index, what, DEFAULT_MELODY_S, MAX_MELODY_S)


def style_seconds(args: Sequence[object], index: int, what: str) -> tuple[float, list[str]]:
    """A style clip's seconds, likewise."""
    return _seconds(args, index, what, DEFAULT_STYLE_S, MAX_STYLE_S)


def _seconds(args: Sequence[object], index: int, what: str, default: float, most: float) -> tuple[float, list[str]]:
    if len(args) <= index:
        return default, []
    value = _number(args[index], what)
    if not value > 0:
        raise ProtocolError(f"{what} needs a positive number of seconds, got {_fmt(value)}")
    if value > most:
        return most, [f"{what} {_fmt(value)} s is more than {_fmt(most)} s: asking for {_fmt(most)} s"]
    return value, []


def _prompt_text(args: Sequence[object]) -> str:
    text = " ".join(_text(a) for a in args).strip()
    if not text:
        raise ProtocolError("prompt needs some text")
    _check_prompt(text)
    return text


def _check_prompt(text: str) -> None:
    if len(text) > MAX_PROMPT_CHARS:
        raise ProtocolError(f"prompt is too long ({len(text)} characters, at most {MAX_PROMPT_CHARS})")


def _with_quantize(command: c.Command, beats: float) -> c.Command:
    if isinstance(command, (c.Set, c.SetPrompt, c.SetWeightedPrompts)):
        return replace(command, quantize=beats)
    return command


def _with_fade(command: c.Command, fade: float) -> c.Command:
    if isinstance(command, (c.SetPrompt, c.SetWeightedPrompts)):
        return replace(command, fade_s=fade)
    return command


def _control_value(name: str, arg: object, normalised: bool) -> tuple[float, list[str]]:
    """One control's value from a loose argument, clamped to its range (with a note saying so)."""
    control = CONTROLS[name]
    asked = _number(arg, name)
    value = control.lo + min(1.0, max(0.0, asked)) * (control.hi - control.lo) if normalised else asked
    if control.kind is float:  # OSC floats are float32: 0.8 arrives as 0.800000011920929
        value = float(f"{value:.7g}")
    clamped = control.clamp(value)
    notes = []
    if not normalised and not control.lo <= value <= control.hi:  # rounding a whole number is no clamping
        notes.append(
            f"{name} {_fmt(asked)} is outside {_fmt(control.lo)}..{_fmt(control.hi)}: {_fmt(clamped)} will sound"
        )
    return clamped, notes
