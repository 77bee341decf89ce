"""The one command vocabulary every bridge speaks. No I/O here (as in the `websockets` library).

A request is a name and a list of arguments, exactly as an OSC address (without the `/musicgen`
prefix) and its arguments: `cfg 4.5`, `prompt/weighted "dub" 1 "techno" 0.5`, `play`,
`continue 8`, `get/top_k`. The WebSocket bridge turns its JSON messages into the same requests,
so both transports behave the same and are tested once, here.

Numbers are accepted loosely (Pd and Open Stage Control send every number as a float; some tools
send numeric strings) and clamped to their range; triggers fire on no argument or a value >= 0.5
(a button's release, 0, is ignored). Anything else gets one sentence back as an error.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from streamer import commands as c


@dataclass(frozen=True)
class Param:
    kind: type  # float or int
    lo: float
    hi: float
    build: Callable[[Any], Any]  # value -> streamer command
    key: str  # its name in the session snapshot


PARAMS: dict[str, Param] = {
    "cfg": Param(float, 0.0, 20.0, lambda v: c.SetParams(cfg=v), "cfg"),
    "temperature": Param(float, 0.05, 5.0, lambda v: c.SetParams(temperature=v), "temperature"),
    "top_k": Param(int, 0, 2048, lambda v: c.SetParams(top_k=v), "top_k"),
    "top_p": Param(float, 0.0, 1.0, lambda v: c.SetParams(top_p=v), "top_p"),
    "seed": Param(int, 0, 2**31 - 1, lambda v: c.SetSeed(v), "seed"),
    "gain": Param(float, 0.0, 4.0, lambda v: c.SetGain(v), "gain"),
    "context": Param(float, 1.0, 30.0, lambda v: c.SetContext(v), "context_s"),
    "fade": Param(float, 0.0, 60.0, lambda v: c.SetFade(v), "fade_s"),
}
TRIGGERS: dict[str, Callable[[], Any]] = {"play": c.Play, "pause": c.Pause, "stop": c.Stop, "reset": c.Reset}
MAX_PROMPT_CHARS = 2000
MAX_CONTINUE_S = 30.0


class ProtocolError(ValueError):
    """Bad input; its message is the sentence sent back to whoever sent it."""


@dataclass(frozen=True)
class Reply:
    name: str  # e.g. "cfg", "pong", "state"; OSC sends it as /musicgen/<name>
    args: tuple[Any, ...] = ()


@dataclass
class Outcome:
    commands: list[Any] = field(default_factory=list)  # for the session
    replies: list[Reply] = field(default_factory=list)  # to the sender, now
    echo: list[Reply] = field(default_factory=list)  # to subscribers, once the commands applied
    subscribe: tuple[Any, ...] | None = None  # (port, host) arguments, for the transport
    unsubscribe: bool = False


class Vocabulary:
    """Turns requests into session commands and replies.

    `snapshot` reads the session's current state (for queries); `audio_dirs` are the only
    folders `continue/file` may read from (nothing when empty).
    """

    def __init__(self, snapshot: Callable[[], dict[str, Any]], info: dict[str, Any], audio_dirs: Sequence[str] = ()) -> None:
        self.snapshot = snapshot
        self.info = info
        self.audio_dirs = [Path(d).expanduser().resolve() for d in audio_dirs if d]

    def handle(self, name: str, args: Sequence[Any]) -> Outcome:
        name = name.strip("/").lower()
        parts = name.split("/")
        head = parts[0]
        if head in PARAMS and len(parts) == 1:
            return self._set(head, args, normalised=False)
        if head in PARAMS and parts[1:] == ["norm"]:
            return self._set(head, args, normalised=True)
        if name in TRIGGERS:
            return Outcome(commands=[TRIGGERS[name]()] if _fires(args, name) else [])
        if name == "prompt":
            text = " ".join(_text(a) for a in args).strip()
            _check_prompt(text)
            return Outcome(commands=[c.SetPrompt(text)], echo=[Reply("prompt", (text,))])
        if name == "prompt/weighted":
            prompts = _weighted(args)
            flat = tuple(x for p in prompts for x in p)
            return Outcome(commands=[c.SetWeightedPrompts(prompts)], echo=[Reply("prompt/weighted", flat)])
        if name == "continue":
            return Outcome(commands=[c.ContinueHistory(_seconds(args, 0, "continue"))])
        if name == "continue/input":
            return Outcome(commands=[c.ContinueInput(_seconds(args, 0, "continue/input"))])
        if name == "continue/file":
            if not args:
                raise ProtocolError("continue/file needs a file name")
            return Outcome(commands=[c.ContinueFile(self.allowed_path(_text(args[0])), _seconds(args, 1, "continue/file"))])
        if name == "ctrl":  # TidalCycles-style: /ctrl key value
            if len(args) < 1:
                raise ProtocolError("ctrl needs a key and a value")
            return self.handle(_text(args[0]), list(args[1:]))
        if name == "ping":
            return Outcome(replies=[Reply("pong", tuple(args[:1]))])
        if head == "get" and len(parts) == 2:
            return Outcome(replies=[self._get(parts[1])])
        if name == "info":
            return Outcome(replies=[Reply("info", (json.dumps(self.info),))])
        if name == "subscribe":
            return Outcome(subscribe=tuple(args[:2]))
        if name == "unsubscribe":
            return Outcome(unsubscribe=True)
        raise ProtocolError(f"unknown address '/{name}'")

    def _set(self, name: str, args: Sequence[Any], normalised: bool) -> Outcome:
        p = PARAMS[name]
        if len(args) != 1:
            raise ProtocolError(f"{name} takes one number, got {len(args)} arguments")
        value = _number(args[0], name)
        if normalised:
            if not 0.0 <= value <= 1.0:
                value = min(1.0, max(0.0, value))
            value = p.lo + value * (p.hi - p.lo)
        value = min(p.hi, max(p.lo, value))
        value = int(round(value)) if p.kind is int else float(value)
        return Outcome(commands=[p.build(value)], echo=[Reply(name, (value,))])

    def _get(self, what: str) -> Reply:
        snap = self.snapshot()
        if what == "state":
            return Reply("state", (json.dumps(snap),))
        if what == "prompt":
            prompts = snap.get("prompts") or [{"text": ""}]
            return Reply("prompt", (" | ".join(p["text"] for p in prompts),))
        if what in PARAMS:
            return Reply(what, (snap.get(PARAMS[what].key),))
        if what in ("position", "frame", "seconds", "buffer_ms", "underruns"):
            return Reply(what, (snap.get(what if what != "position" else "seconds"),))
        raise ProtocolError(f"cannot get '{what}' (try state, prompt, {', '.join(PARAMS)})")

    def allowed_path(self, text: str) -> str:
        """`text` resolved inside one of the configured audio folders, or a refusal."""
        if not self.audio_dirs:
            raise ProtocolError("continue/file is disabled: list the folders it may read in [bridges] audio_dirs")
        if "\x00" in text or not text.strip():
            raise ProtocolError("continue/file needs a file name")
        candidate = Path(text).expanduser()
        tries = [candidate] if candidate.is_absolute() else [d / candidate for d in self.audio_dirs]
        for t in tries:
            real = Path(os.path.realpath(t))
            if any(real == d or d in real.parents for d in self.audio_dirs):
                return str(real)
        raise ProtocolError(f"'{text}' is outside the folders continue/file may read")


# -- argument helpers --------------------------------------------------------------------------


def _number(x: Any, what: str) -> float:
    if isinstance(x, bool):
        return float(x)
    if isinstance(x, (int, float)):
        value = float(x)
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


def _text(x: Any) -> str:
    if isinstance(x, bytes):
        return x.decode("utf-8", "replace")
    if isinstance(x, float) and x.is_integer():
        return str(int(x))
    return str(x)


def _fires(args: Sequence[Any], what: str) -> bool:
    if not args:
        return True
    return _number(args[0], what) >= 0.5


def _seconds(args: Sequence[Any], index: int, what: str) -> float:
    if len(args) <= index:
        return 10.0
    value = _number(args[index], what)
    if not value > 0:
        raise ProtocolError(f"{what} needs a positive number of seconds, got {value}")
    return min(value, MAX_CONTINUE_S)


def _check_prompt(text: str) -> None:
    if len(text) > MAX_PROMPT_CHARS:
        raise ProtocolError(f"prompt is too long ({len(text)} characters, at most {MAX_PROMPT_CHARS})")


def _weighted(args: Sequence[Any]) -> tuple[tuple[str, float], ...]:
    if not args or len(args) % 2:
        raise ProtocolError("prompt/weighted takes pairs: text weight [text weight ...]")
    pairs = []
    for i in range(0, len(args), 2):
        text = _text(args[i]).strip()
        _check_prompt(text)
        weight = _number(args[i + 1], "prompt weight")
        if weight < 0:
            raise ProtocolError(f"prompt weights must be >= 0, got {weight}")
        pairs.append((text, weight))
    if not any(w > 0 for _, w in pairs):
        raise ProtocolError("at least one prompt weight must be above 0")
    if len(pairs) > 4:
        raise ProtocolError(f"at most 4 prompts can sound at once, got {len(pairs)}")
    return tuple(pairs)
