"""A session's requests that read audio and prepare over many steps: continuations (from its history,
the input, a file, an upload or codes) and, on melody and style checkpoints, what the prefix follows
(`Follow`) and prompt changes, which re-prefill the window.

Each is read off the generation thread (`reads`), staged until its read settles (a refused read
changes nothing), then encoded a piece per step (`jobs`) and prefilled a chunk per step by the
generator; the latest request wins, and it is answered once it is heard."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from musicgen_live.engine.audiofile import prepare_audio, read_audio_file
from musicgen_live.engine.conditioning import Condition
from musicgen_live.engine.errors import ContextError, UserError

from . import commands as c
from .controls import (
    MAX_CONTINUE_S,
    MAX_MELODY_S,
    MAX_STYLE_S,
)
from .jobs import Job
from .preparations import (
    Clip,
    PendingCondition,
    PendingContinuation,
    continuation_codes,
    given,
    prefix_condition,
)
from .reads import Read
from .session_parts import DEFERRED, NEEDS, PLAYING, STOPPED, Answer, Heard, SessionParts
from .slots import Board, fit


class AudioRequests(SessionParts):
    """Continuations, melodies and styles: read, staged, encoded and prefilled over steps."""

    def _on_continue(self, ticket: c.Ticket) -> Answer:
        cmd = ticket.command
        assert isinstance(cmd, c.AUDIO_CONTINUATIONS)
        if not cmd.seconds > 0:
            raise ContextError(f"continuation length must be positive, got {cmd.seconds}")
        context_s = self.gen.context_frames / self.model.spec.frame_rate
        seconds = min(float(cmd.seconds), MAX_CONTINUE_S, context_s)
        if seconds < float(cmd.seconds):
            ticket.note = f"continuing from the last {seconds:.1f} s (the context keeps {context_s:.1f} s)"
        source = self._clip_source(cmd, seconds)  # refuses at once what cannot work, starts reading the rest
        _drop_upload(ticket)
        job = Job(continuation_codes(self.model, source, seconds, ticket), "continue")
        self._begin_continuation(PendingContinuation(ticket, job, read=source))
        return DEFERRED

    def _on_continue_codes(self, ticket: c.Ticket) -> Answer:
        cmd = ticket.command
        assert isinstance(cmd, c.ContinueCodes)
        codes = np.asarray(cmd.codes)
        k, card = self.model.spec.lm.num_codebooks, self.model.spec.lm.card
        if codes.ndim != 2 or codes.shape[0] != k or codes.shape[1] < 1 or codes.dtype.kind not in "iu":
            raise ContextError(f"codes to continue from must be ({k}, frames) integers")
        if codes.min() < 0 or codes.max() >= card:
            raise ContextError(f"codes to continue from must lie in 0..{card - 1}")
        self._begin_continuation(
            PendingContinuation(ticket, Job(given(torch.from_numpy(codes.astype(np.int64))), "continue"))
        )
        return DEFERRED

    def _begin_continuation(self, pending: PendingContinuation, staged: bool = False) -> None:
        """The latest continuation wins - once its audio, if any, has been read. `staged`: one
        whose read has just succeeded (`_promote`), not a new request."""
        if pending.read is not None and not pending.read.settled:
            self._staged_continuations.append(pending)
            return
        if pending.read is not None and (problem := pending.read.problem()) is not None:  # failed at once
            pending.job.close()
            self._refuse(pending.ticket, _why(problem, "could not continue"))
            return
        if not staged:  # a new request with nothing to read: it is newer than every staged one
            self._staged_continuations = self._drop_staged(self._staged_continuations, pending.ticket)
        self._cancel_continuation("superseded by a newer continuation", by=pending.ticket)
        self._continuation = pending

    def _clip_source(self, cmd: c.Clip, seconds: float) -> Read[Clip]:
        """What a job will read: checked now, and read from now on a thread of its own (`reads`: a
        file, the input's or an upload's resampling), so the generation thread never waits on it.
        A continuation takes the last `seconds`; a melody or style file or upload its first (a riff),
        the session's history or input its last (what was just played)."""
        rate, channels = self.rate, self.model.audio_channels
        if isinstance(cmd, c.HISTORY_CLIPS):
            if self.sink.history.seconds < 1 / self.model.spec.frame_rate:
                raise ContextError("there is no output history yet")
            clip = torch.from_numpy(np.ascontiguousarray(self.sink.history.last(seconds).T))
            return Read.ready((clip, channels))
        if isinstance(cmd, c.FILE_CLIPS):
            path, folders, max_bytes = cmd.path, cmd.folders, int(self.cfg.max_file_mb * 1e6)
            tail = isinstance(cmd, c.ContinueFile)

            def read_file() -> Clip:
                part = {"last_s": seconds} if tail else {"first_s": seconds}
                audio, have = read_audio_file(path, rate, channels, inside=folders, max_bytes=max_bytes, **part)
                return (audio if tail else audio[:, : int(seconds * rate)]), have

            return self.reader.start(read_file, f"reading '{Path(path).name}'")
        if isinstance(cmd, c.INPUT_CLIPS):
            if self.capture is None:
                raise ContextError("no input device is open (start serve with --input DEVICE)")
            data, data_rate = self.capture.last(seconds)
            if len(data) == 0:
                raise ContextError("nothing has been captured from the input yet")
            what = "resampling the input"
        else:
            data = np.asarray(cmd.audio, dtype=np.float32)
            if data.ndim == 1:
                data = data[:, None]
            if data.ndim != 2 or len(data) == 0:
                raise ContextError("uploaded audio must be a non-empty (samples, channels) array")
            data_rate = int(cmd.rate)
            if isinstance(cmd, c.FromUpload):
                data = data[: int(seconds * data_rate)]
            what = "resampling the upload"
        have = int(data.shape[1])
        return self.reader.start(lambda: (prepare_audio(data, data_rate, rate, channels), have), what)

    def _finish_continuation(self) -> None:
        p = self._continuation
        if p is None or not p.job.done:
            return
        if p.handle is None:
            if p.job.error is not None:
                self._continuation = None
                e = p.job.error
                self._refuse(
                    p.ticket,
                    str(e)
                    if isinstance(e, (UserError, ValueError))
                    else f"could not continue ({type(e).__name__}: {e})",
                )
                return
            try:
                codes = p.job.result
                assert codes is not None  # a job that ended without an error has its result
                p.handle = self.gen.continue_from(codes)
            except (UserError, ValueError) as e:
                self._continuation = None
                self._refuse(p.ticket, str(e))
                return
        if p.handle.frame is None and self.state != PLAYING:
            self.gen.prepare()  # no steps to ride along with: a chunk a turn
        if p.handle.frame is not None:
            self._continuation = None
            if p.handle.trimmed is not None:
                rate = self.model.spec.frame_rate
                trim = (
                    f"continued from the last {p.handle.frames / rate:.1f} s of the {p.handle.trimmed / rate:.1f} s "
                    "asked for: the window had room to prepare no more in time"
                )
                p.ticket.note = f"{p.ticket.note}; {trim}" if p.ticket.note else trim
            before = self.view()
            self.log(
                f"continuing from {p.handle.frames / self.model.spec.frame_rate:.1f} s ({p.ticket.name}, "
                f"ready in {1000 * (time.perf_counter() - p.ticket.accepted):.0f} ms)"
            )
            self._applied(p.ticket, Heard(frame=p.handle.frame), before)
        elif p.handle.superseded:
            self._continuation = None
            self._refuse(p.ticket, "superseded before it took effect")

    def _cancel_continuation(self, reason: str, by: c.Ticket | None = None) -> None:
        """Drop the pending continuation (`by`: the newer one that replaces it); with no `by`, a
        staged one too (a stop, a reset)."""
        if by is None:
            for staged in self._staged_continuations:
                staged.job.close()
                self._refuse(staged.ticket, reason)
            self._staged_continuations = []
        p = self._continuation
        if p is None:
            return
        self._continuation = None
        p.job.close()
        if p.handle is not None:
            self.gen.cancel(p.handle)
        if by is not None:
            self._supersede(p.ticket, by, reason)
        else:
            self._refuse(p.ticket, reason)

    def _prefix_prompt(self, ticket: c.Ticket, prompts: list[tuple[str, float]], fade: float, board: Board) -> Answer:
        kind = self._prefix_kind()
        if len(prompts) > 1:
            raise ValueError(f"a {kind} checkpoint plays one prompt at a time (blends need a text-only checkpoint)")
        if fade > 0:
            ticket.note = f"a {kind} checkpoint changes prompt at a re-prefill of its window, without a crossfade"
        text = prompts[0][0]
        job: Job[tuple[Condition, torch.Tensor | None]] = Job(
            prefix_condition(self.model, text, self._features, None), "prompt"
        )
        self._begin_condition(PendingCondition(ticket, job, [(text, 1.0)], self._follows(), board=board))
        return DEFERRED

    def _on_follow(self, ticket: c.Ticket) -> Answer:
        """melody/... and style/...: what a melody or style checkpoint's prefix follows."""
        cmd = ticket.command
        assert isinstance(cmd, c.Follow)
        want, src = cmd.kind, cmd.source
        if self._prefix_kind() != want:
            raise ValueError(f"'{self.model.source}' has no {want} conditioning: {want} commands need a {NEEDS[want]}")
        text = self.prompts[0][0]
        if src is None:
            job = Job(prefix_condition(self.model, text, None, None), want)
            self._begin_condition(PendingCondition(ticket, job, self.prompts, "off"))
            return DEFERRED
        if not src.seconds > 0:
            raise ContextError(f"a {want} clip must be longer than 0 s, got {src.seconds}")
        seconds = min(float(src.seconds), MAX_MELODY_S if want == "melody" else MAX_STYLE_S)
        source = self._clip_source(src, seconds)  # refuses at once what cannot work
        _drop_upload(ticket)
        name = f" {Path(src.path).name}" if isinstance(src, c.FromFile) else ""
        label = f"{c.source_name(src)}{name} {seconds:g} s"
        job = Job(prefix_condition(self.model, text, None, source), want)
        self._begin_condition(PendingCondition(ticket, job, self.prompts, label, read=source))
        return DEFERRED

    def _prefix_kind(self) -> str | None:
        """What this checkpoint's prefix is built from besides text: "melody", "style" or None."""
        return "style" if self.model.style is not None else "melody" if self.model.melody else None

    def _follows(self) -> str:
        return self.style if self.model.style is not None else self.melody

    def _begin_condition(self, pending: PendingCondition, staged: bool = False) -> None:
        """The latest prompt, melody or style wins - once its audio, if any, has been read.
        `staged`: one whose read has just succeeded (`_promote`), not a new request."""
        if pending.read is not None and not pending.read.settled:
            self._staged_conditions.append(pending)
            return
        if pending.read is not None and (problem := pending.read.problem()) is not None:  # failed at once
            pending.job.close()
            self._refuse(pending.ticket, _why(problem, f"could not read the {self._prefix_kind()}"))
            return
        if not staged:  # a new request with nothing to read: it is newer than every staged one
            self._staged_conditions = self._drop_staged(self._staged_conditions, pending.ticket)
        old = self._condition
        if old is not None:
            old.job.close()
            self._supersede(
                old.ticket, pending.ticket, f"superseded by a newer prompt or {self._prefix_kind()} before it was heard"
            )
        self._condition = pending

    def _promote_staged(self) -> None:
        """Staged continuations and conditions whose reads have settled, oldest first: one whose
        read failed is refused (nothing else changes); one whose read succeeded takes over, and the
        staged ones older than it are superseded."""
        self._staged_continuations = self._promote(self._staged_continuations, self._begin_continuation, "continue")
        kind = self._prefix_kind() or "condition"
        self._staged_conditions = self._promote(self._staged_conditions, self._begin_condition, f"read the {kind}")

    def _promote(self, staged: list[Any], begin: Callable[..., None], doing: str) -> list[Any]:
        """`staged` after promotion (see `_promote_staged`): the ones still waiting for their reads."""
        waiting: list[Any] = []
        for pending in staged:
            if not pending.read.settled:
                waiting.append(pending)
                continue
            if (problem := pending.read.problem()) is not None:
                pending.job.close()
                self._refuse(pending.ticket, _why(problem, f"could not {doing}"))
                continue
            waiting = self._drop_staged(waiting, pending.ticket)
            begin(pending, staged=True)
        return waiting

    def _drop_staged(self, older: list[Any], newer: c.Ticket) -> list[Any]:
        """Supersede the staged requests `older` (waiting for reads) by `newer`; returns []."""
        for pending in older:
            pending.job.close()
            self._supersede(pending.ticket, newer, "superseded by a newer request")
        return []

    def _finish_condition(self) -> None:
        """Prefill the window under the new condition once it is built; answer once it plays."""
        p = self._condition
        if p is None or not p.job.done:
            return
        if p.handle is None:
            try:
                if p.job.error is not None:
                    raise p.job.error
                assert p.job.result is not None  # a job that ended without an error has its result
                cond, p.features = p.job.result
                p.handle = self.gen.set_condition(cond)
            except Exception as e:
                self._condition = None
                known = isinstance(e, (UserError, ValueError))
                why = str(e) if known else f"could not build the {self._prefix_kind()} ({type(e).__name__}: {e})"
                self._refuse(p.ticket, why)
                return
            if self.state == STOPPED:  # nothing steps: prefill it now (no codes, only the prefix)
                self._restart(keep_audio=False)
        if self.gen.condition_live(p.handle):
            self._condition = None
            before = self.view()
            self.prompts, self._features = p.prompts, p.features
            self.board = p.board or fit(self.board, p.prompts)
            if self.model.style is not None:
                self.style = p.follows
            else:
                self.melody = p.follows
            kept = self.gen.context_frames / self.model.spec.frame_rate  # less if a longer prefix needs it
            if kept < self.controls["context"]:
                self.controls["context"] = kept
            self._applied(p.ticket, Heard(frame=self.gen.next_frame), before)


NO_AUDIO = np.zeros((0, 1), dtype=np.float32)


def _drop_upload(ticket: c.Ticket) -> None:
    """An upload's samples are the read's now: the ticket (kept until its change is heard, up to
    probes.MAX_PROBES of them while the output is paused) keeps the command without them."""
    cmd = ticket.command
    if isinstance(cmd, c.ContinueAudio):
        ticket.command = replace(cmd, audio=NO_AUDIO)
    elif isinstance(cmd, c.Follow) and isinstance(cmd.source, c.FromUpload):
        ticket.command = replace(cmd, source=replace(cmd.source, audio=NO_AUDIO))


def _why(e: BaseException, doing: str) -> str:
    """A failed preparation's sentence: a user error's own, else what failed."""
    return str(e) if isinstance(e, (UserError, ValueError)) else f"{doing} ({type(e).__name__}: {e})"
