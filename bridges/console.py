"""stdin as a bridge: one request per line, in the same vocabulary as OSC and WebSocket.

    prompt dub techno, 122 bpm      prompt/fade 4 slow strings      prompt/weighted dub 1 techno 0.5
    slots dub 1 "rain on tin" 0 "" 0 cello 0.8      (the blend's four slots, texts kept at weight 0)
    cfg 4.5   cfg_beta 2   temperature 0.9   top_k 100   top_p 0   seed 7   gain 0.8   context 8   fade 2
    quantize 4   (with serve --link: changes land every 4 beats; 0 = at once)
    play   pause   stop   reset
    continue [SECONDS]   continue/input [SECONDS]   continue/file PATH [SECONDS]
    melody/history [SECONDS]   melody/input [SECONDS]   melody/file PATH [SECONDS]   melody/off
    style/history [SECONDS]   style/input [SECONDS]   style/file PATH [SECONDS]   style/off
    get/cfg   get/state (or status)   info   help   quit

Words are split as a shell splits them (quote a file name with spaces). Every line is answered with
one `ok: ...` or `error: ...` line (plus `note:` lines when a value was clamped).
"""

from __future__ import annotations

import shlex
from collections.abc import Callable, Iterable

from musicgen_live.streamer import commands as c
from musicgen_live.streamer.session import Session

from .protocol import ProtocolError, Vocabulary, answer_line

ANSWER_TIMEOUT_S = 60.0
HELP = __doc__.split("\n\n")[1].rstrip() if __doc__ else ""


class Console:
    def __init__(self, session: Session, vocab: Vocabulary, say: Callable[[str], None]) -> None:
        self.session = session
        self.vocab = vocab
        self.say = say

    def run(self, lines: Iterable[str]) -> bool:
        """Answer lines until they end (False) or one says quit (True)."""
        for line in lines:
            if self.line(line):
                return True
        return False

    def line(self, text: str) -> bool:
        """Answer one line; True when it asks to quit."""
        try:
            words = shlex.split(text)
        except ValueError as e:
            self.say(f"error: cannot read that line ({e})")
            return False
        if not words:
            return False
        name, args = words[0], words[1:]
        if name.lower() in ("quit", "exit"):
            return True
        if name.lower() == "help":
            self.say(HELP)
            return False
        try:
            outcome = self.vocab.handle(name, args)
        except ProtocolError as e:
            self.say(f"error: {e}")
            return False
        if outcome.subscribe is not None or outcome.unsubscribe:
            self.say("error: subscribe is for OSC clients")
            return False
        for reply in outcome.replies:
            self.say(" ".join([reply.name, *map(str, reply.args)]))
        for note in outcome.notes:
            self.say(f"note: {note}")
        for cmd in outcome.commands:
            ticket = self.session.submit(cmd, source="stdin")
            self.say(answer_line(ticket) if ticket.wait(ANSWER_TIMEOUT_S) else f"error: {ticket.name} is still pending")
        if outcome.query is not None:
            ticket = self.session.submit(c.Query(), source="stdin")
            if ticket.wait(ANSWER_TIMEOUT_S) and ticket.result is not None:
                reply = self.vocab.answer(outcome.query, ticket.result)
                self.say(" ".join([reply.name, *map(str, reply.args)]))
        return False
