"""A session's command handlers for its controls, prompts, transport and queries: each takes a ticket
and answers where the change is heard (`Answer`), or that it will be answered later (DEFERRED: a
prompt heard for the first time waits for its T5 job)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
from musicgen_live.engine.conditioning import Condition
from musicgen_live.engine.errors import ContextError, UserError

from . import commands as c
from .controls import (
    CONTROLS,
    MAX_PROMPT_CHARS,
    MAX_PROMPTS,
    SAMPLING,
)
from .jobs import Job
from .preparations import (
    PendingPrompt,
    conditions,
)
from .session_parts import DEFERRED, NO_CLOCK, PAUSED, PLAYING, STOPPED, Answer, Heard, SessionParts
from .slots import Board, as_board, fit, sounding


class CommandHandlers(SessionParts):
    """Controls, prompts (a crossfade, or a job while T5 runs), transport and queries."""

    def _on_set(self, ticket: c.Ticket) -> Answer:
        cmd = ticket.command
        assert isinstance(cmd, c.Set)
        control = CONTROLS.get(cmd.name)
        if control is None:
            raise ValueError(f"there is no control '{cmd.name}' (controls: {', '.join(CONTROLS)})")
        value = control.check(cmd.value)
        answer: Answer = Heard()
        if cmd.name in SAMPLING:
            change: dict[str, Any] = {cmd.name: (value or None) if cmd.name == "cfg_beta" else value}
            params = replace(self.params, **change).validated()
            self.gen.set_params(params)
            self.params = params
        elif cmd.name == "seed":
            self.gen.reseed(int(value))
        elif cmd.name == "gain":
            self.sink.gain = float(value)
            answer = Heard(device_frame=self._unbuffered())  # applies to audio not yet buffered
        elif cmd.name == "quantize":
            if value > 0 and self.clock is None:
                raise ValueError(NO_CLOCK)
            answer = None
        elif cmd.name == "context":
            frames = self.gen.set_context(self.model.spec.seconds_to_frames(value))
            kept = frames / self.model.spec.frame_rate
            if abs(kept - value) > 0.5 / self.model.spec.frame_rate:
                ticket.note = f"context {kept:.2f} s: the most this {self.cfg.window_s:.0f} s window keeps"
            value = kept
            answer = None  # heard at the next slide
        else:  # fade: the default for later prompt changes
            answer = None
        self.controls[cmd.name] = value
        return answer

    def _on_prompt(self, ticket: c.Ticket) -> Answer:
        cmd = ticket.command
        assert isinstance(cmd, (c.SetPrompt, c.SetWeightedPrompts))
        pairs = [(cmd.text, 1.0)] if isinstance(cmd, c.SetPrompt) else [(t, float(w)) for t, w in cmd.prompts]
        if not pairs:
            raise ValueError("at least one prompt is needed")
        if len(pairs) > MAX_PROMPTS:
            raise ValueError(f"at most {MAX_PROMPTS} prompts can sound at once, got {len(pairs)}")
        for text, weight in pairs:
            if not isinstance(text, str) or len(text) > MAX_PROMPT_CHARS:
                raise ValueError(f"a prompt is text of at most {MAX_PROMPT_CHARS} characters")
            if not weight >= 0:
                raise ValueError(f"prompt weights must be >= 0, got {weight}")
        board = as_board(tuple(pairs)) if isinstance(cmd, c.SetWeightedPrompts) and cmd.slots else None
        prompts = sounding(board) if board is not None else [(t, w) for t, w in pairs if w > 0]
        if board is not None and not prompts:  # every slot at 0: the board changes, the blend sounds on
            self.board = board
            ticket.note = "every slot is at 0: the blend sounding before plays on"
            return None
        if not prompts:
            raise ValueError("at least one prompt weight must be above 0")
        fade = float(self.controls["fade"] if cmd.fade_s is None else CONTROLS["fade"].check(cmd.fade_s))
        board = board if board is not None else fit(self.board, pairs)
        if self.model.spec.lm.prefix_conditioned:
            return self._prefix_prompt(ticket, prompts, fade, board)
        if self._prompt is not None:  # the latest prompt wins
            self._prompt.job.close()
            self._supersede(self._prompt.ticket, ticket, "superseded by a newer prompt before it was ready")
            self._prompt = None
        known = [k for t, _ in prompts if (k := self.model.conditioner.lookup(t)) is not None]
        if len(known) == len(prompts) and ticket.beat is None:
            self._set_prompts(ticket, prompts, fade, known, board)
            return Heard()
        job: Job[list[Condition]] = Job(conditions(self.model, [t for t, _ in prompts]), "prompt")
        self._prompt = PendingPrompt(ticket, prompts, fade, job, board)
        return DEFERRED

    def _set_prompts(
        self, ticket: c.Ticket, prompts: list[tuple[str, float]], fade_s: float, conds: list[Condition], board: Board
    ) -> None:
        fade = self.model.spec.seconds_to_frames(fade_s)
        cut = self.gen.set_prompts(list(zip(conds, (w for _, w in prompts))), fade)
        if cut:
            ticket.note = (
                f"{cut} prompt{'s' if cut > 1 else ''} stopped at once: a crossfade sounds at most "
                f"{MAX_PROMPTS} prompts, old and new together"
            )
        self.prompts = prompts
        self.board = board

    def _supersede(self, old: c.Ticket, new: c.Ticket, reason: str) -> None:
        """Refuse `old` because `new` replaced it: for the sender of both, that is no error."""
        old.superseded = old.source == new.source
        self._refuse(old, reason)

    def _finish_prompt(self) -> None:
        """Apply the pending prompt once its conditions are ready."""
        p = self._prompt
        if p is None or not p.job.done or (p.job.error is None and not self._due(p.ticket)):
            return
        self._prompt = None
        before = self.view()
        try:
            if p.job.error is not None:
                raise p.job.error
            self._set_prompts(p.ticket, p.prompts, p.fade_s, p.job.result or [], p.board or fit(self.board, p.prompts))
        except (UserError, ValueError) as e:
            self._refuse(p.ticket, str(e))
            return
        except Exception as e:
            self._refuse(p.ticket, f"internal error: {type(e).__name__}: {e}")
            self.report_error(e)
            return
        self._applied(p.ticket, Heard(), before)

    def _on_transport(self, ticket: c.Ticket) -> Answer:
        cmd = ticket.command
        if isinstance(cmd, c.Play):
            if self.state == PLAYING:
                return None
            resumed = self.state == PAUSED
            self.state = PLAYING
            self.output.set_playing(True)
            if resumed and self.output.ring.fill:
                return Heard(device_frame=self.output.ring.read + 1)  # the buffered audio resumes
            return Heard(frame=self.codec_origin[0])  # from a stop: the first frame of the new start
        if isinstance(cmd, c.Pause):
            if self.state == PLAYING:
                self.state = PAUSED
                self.output.set_playing(False)
            return None
        if isinstance(cmd, c.Stop):
            self._cancel_continuation("superseded by stop")
            self.state = STOPPED
            self.output.set_playing(False)
            self.output.ring.request_flush()
            self._restart(keep_audio=False)
            return None
        self._cancel_continuation("superseded by reset")  # Reset
        return Heard(frame=self._restart(keep_audio=True))

    def _on_query(self, ticket: c.Ticket) -> Answer:
        ticket.result = self.snapshot()
        return None

    def _restart(self, keep_audio: bool) -> int:
        """Drop the context now; returns the first new frame."""
        start = self.gen.frames_done
        result = self.gen.restart(keep_audio=keep_audio)
        if not keep_audio:
            self.codec_origin = (start, self.sink.samples)
        self.sink.push(result.audio)
        return start

    def _on_recent_codes(self, ticket: c.Ticket) -> Answer:
        if not self.gen.started:
            raise ContextError("the stream has not started")
        codes = self.gen.codes()[:, -self.gen.context_frames :]
        ticket.result = {"codes": codes.to(torch.int16).numpy()}
        return None
