"""A one-line text control language for `serve` on stdin (and for scripts piping into it).

    prompt TEXT              crossfade to TEXT (the [stream] fade_s default)
    fade SECONDS TEXT        crossfade to TEXT over SECONDS
    cfg X | temperature X | top_k N | top_p X | seed N | gain X
    play | pause | stop | reset
    continue [SECONDS]       from the session's own output
    continue-input [SECONDS] from the input device
    continue-file PATH [SECONDS]
    status | quit

No I/O here: `parse_line` turns text into a streamer command or raises `ControlError` with a
sentence for whoever typed it.
"""

from __future__ import annotations

import shlex
from typing import Any

from streamer import commands as c


class ControlError(ValueError):
    pass


SIMPLE = {"play": c.Play, "pause": c.Pause, "stop": c.Stop, "reset": c.Reset}
PARAMS = {"cfg": float, "temperature": float, "top_k": int, "top_p": float}


def _number(kind: type, text: str, what: str) -> Any:
    try:
        return kind(float(text)) if kind is int else kind(text)
    except ValueError:
        raise ControlError(f"{what} needs a number, got '{text}'") from None


def parse_line(line: str) -> Any:
    """Returns a command, the string 'status' / 'quit', or None for a blank line."""
    try:
        words = shlex.split(line)
    except ValueError as e:
        raise ControlError(f"cannot read that line ({e})") from None
    if not words:
        return None
    verb, args = words[0].lower(), words[1:]
    if verb in ("status", "quit", "exit"):
        return "quit" if verb == "exit" else verb
    if verb in SIMPLE:
        return SIMPLE[verb]()
    if verb == "prompt":
        return c.SetPrompt(" ".join(args))
    if verb == "fade":
        if len(args) < 2:
            raise ControlError("usage: fade SECONDS TEXT")
        return c.SetPrompt(" ".join(args[1:]), fade_s=_number(float, args[0], "fade"))
    if verb in PARAMS:
        if len(args) != 1:
            raise ControlError(f"usage: {verb} VALUE")
        return c.SetParams(**{verb: _number(PARAMS[verb], args[0], verb)})
    if verb == "seed":
        return c.SetSeed(_number(int, args[0], "seed") if args else 0)
    if verb == "gain":
        if len(args) != 1:
            raise ControlError("usage: gain VALUE")
        return c.SetGain(_number(float, args[0], "gain"))
    if verb == "continue":
        return c.ContinueHistory(_number(float, args[0], "continue") if args else 10.0)
    if verb == "continue-input":
        return c.ContinueInput(_number(float, args[0], "continue-input") if args else 10.0)
    if verb == "continue-file":
        if not args:
            raise ControlError("usage: continue-file PATH [SECONDS]")
        seconds = _number(float, args[1], "continue-file") if len(args) > 1 else 10.0
        return c.ContinueFile(args[0], seconds)
    raise ControlError(f"unknown command '{verb}' (try: prompt, fade, cfg, play, pause, stop, reset, continue, status)")
