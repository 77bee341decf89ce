"""The real-time session: one stream, its controls, and the answers to every command.

A session is stepped by a generation thread (its own `SessionGroup` of one, or a group shared with
other sessions); everything else talks to it through `submit(command)`. Commands are applied
between two steps - at a frame boundary, never mid-step - through a table of handlers, one per
command type, and each is answered exactly once on its `Ticket`: applied (from which frame) or
refused (one sentence why).

Work that cannot fit between two steps - T5 for a prompt heard for the first time, EnCodec's
encoder for a continuation - runs as a `Job`, a piece per step; the generator then prefills a
continuation a chunk per step as well (`engine.generator`). Neither leaves a hole in the music.

Every applied change, whoever sent it, is published as one "changed" event holding the new
values, so every bridge can push it to every client; `Query` answers the state in command order
(a get after a set answers the value that will sound).

The session is one class in parts (`session_parts` says what they share): this module keeps its
lifecycle, the loop's callbacks, the command table and the output's supervision; the handlers of
controls, prompts and transport are `handlers`, the requests that read audio (continuations,
melodies, styles) `audio_requests`, quantized changes `beat_holding`. What stays here (~640 lines)
is one idea: a step's turn from the loop's side - commands applied, a job's piece sized to the
step, the audio delivered, the stats kept, the output watched.

Listeners receive (kind, data) from the generation thread: "applied" / "refused" {ticket},
"changed" {changes, source}, "audible" {ticket}, "error" / "warning" / "output" {message}. They
must be quick and must not raise (an exception is swallowed and counted).
"""

from __future__ import annotations

import collections
import math
import queue
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
import torch
from musicgen_live.engine.config import SamplingConfig
from musicgen_live.engine.errors import UserError
from musicgen_live.engine.generator import Phase, StepResult, StreamGenerator
from musicgen_live.engine.model import MusicGen
from musicgen_live.engine.pieces import run
from musicgen_live.engine.sampling import SamplingParams
from musicgen_live.engine.stats import median, percentile

from . import commands as c
from .audio_requests import AudioRequests
from .beat_holding import BeatHolding
from .calibrate import LIMIT as STEP_LIMIT
from .calibrate import continuation_chunk, pace_line, prefill_chunk, step_costs
from .config import MAX_DECODE_FRAMES, StreamConfig
from .controls import (
    CONTROLS,
    MAX_PROMPTS,
)
from .group import SessionGroup
from .handlers import CommandHandlers
from .jobs import Job
from .outputs import DeviceOutput, InputCapture, RingOutput
from .preparations import (
    PendingCondition,
    PendingContinuation,
    PendingPrompt,
    prefix_condition,
)
from .probes import LatencyProbes
from .quantize import BeatClock
from .reads import Reader
from .session_parts import DEFERRED, PLAYING, STOPPED, Answer, Heard, Listener
from .sink import AudioSink
from .slots import Board, empty_board

SWITCH_INTERVAL_S = 0.0005
JOB_SHARE = 0.35  # a job's piece may add this share of a median plain step to a step ...
# ... as long as the step stays within calibrate.LIMIT x a plain one (a step carrying a slide's chunk
# leaves a piece little room); a job waits at most this many steps for room, then takes one piece
MAX_JOB_WAIT_STEPS = 4
# Below real time (the stream's measured pace < 1) the music has holes whatever a step costs, and
# the bound above only stretches a job (a 12 s continuation's encode: ~600 one-frame pieces, ~40 s
# on musicgen-small here): a piece may then add this many plain steps to a step instead
SLOW_JOB_SHARE = 3.0
MAX_IDLE_PIECE_S = 0.05  # the longest job piece run between steps (the buffer covers it)
# seconds an output stays stopped before it is reopened: whatever stopped it (PortAudio tearing a
# vanished device's stream down, a thread aborting it) finishes first - closing a stream another
# thread is still aborting crashed PortAudio (seen in tests/streamer/test_portaudio.py)
REOPEN_GRACE_S = 0.25
STEP_LOG = 20_000  # steps remembered for benchmarks (~7 minutes at 50 frames/s)
PACE_STEPS = 10  # steps timed at start to say how fast this machine plays the model
MAX_FAILED_STEPS = 3  # consecutive failed steps before the stream is reset to recover


class StepRecord(NamedTuple):
    """One step as `bench-stream` and the tests read it back (`Session.step_log`)."""

    end: float  # perf_counter seconds when it ended
    ms: float  # all the generation thread spent on it: commands applied just before, a job's piece
    phase: str  # the generator's phase before it (`engine.generator.Phase` values)
    job: str  # the label of the job whose piece rode in it ("" for none)


class Session(CommandHandlers, AudioRequests, BeatHolding):
    """One performer's stream: its generator, output, controls and pending preparations.

    Phases: `state` is STOPPED, PLAYING or PAUSED (the transport); while playing, `gen.phase` says
    what the stream is doing (playing, sliding its window, continuing), and at most one prompt, one
    continuation and one condition are pending (`_prompt`, `_continuation`, `_condition`), each a
    job run a piece per step and answered when it is heard. Any thread may `submit` and `snapshot`
    (bridges append to `listeners` before the session starts); everything else runs on the
    generation thread, between two steps.
    """

    def __init__(
        self,
        model: MusicGen,
        output: RingOutput,
        stream: StreamConfig | None = None,
        sampling: SamplingConfig | None = None,
        capture: InputCapture | None = None,
        log: Callable[[str], None] = lambda _m: None,
    ) -> None:
        self.model = model
        self.output = output
        self.cfg = stream or StreamConfig()
        if not 1 <= self.cfg.decode_frames <= MAX_DECODE_FRAMES:
            raise UserError(
                f"[stream] decode_frames must be between 1 and {MAX_DECODE_FRAMES}, got {self.cfg.decode_frames}"
            )
        s = sampling or SamplingConfig()
        if s.cfg_beta and model.style is None:
            raise UserError("[sampling] cfg_beta (double guidance) needs a MusicGen-Style checkpoint; set it to 0")
        self.params = SamplingParams(
            temperature=s.temperature, top_k=s.top_k, top_p=s.top_p, cfg=s.cfg, cfg_beta=s.cfg_beta or None
        ).validated()
        self.controls: dict[str, float | int] = {
            "cfg": s.cfg,
            "cfg_beta": s.cfg_beta,
            "temperature": s.temperature,
            "top_k": s.top_k,
            "top_p": s.top_p,
            "seed": s.seed,
            "gain": self.cfg.gain,
            "context": self.cfg.context_s,
            "fade": self.cfg.fade_s,
            "quantize": 0.0,  # beats; > 0 only with a beat clock (`attach_clock`)
        }
        self.clock: BeatClock | None = None  # a shared beat timeline (Ableton Link) to land changes on
        self._held: list[c.Ticket] = []  # quantized changes waiting for their beat (`Ticket.beat`)
        self.capture = capture
        self.log = log
        self.state = STOPPED
        self.rate = model.sample_rate
        self.hop = model.spec.codec.hop
        self.prompts: list[tuple[str, float]] = [(self.cfg.prompt, 1.0)]  # what sounds
        self.board: Board = empty_board(self.cfg.prompt)  # the performer's blend slots (`slots`)
        self.sink = AudioSink(self.rate, model.audio_channels, output, self.cfg.history_s)
        self.sink.gain = self.cfg.gain
        self.probes = LatencyProbes()
        self.target_frames = int(self.cfg.buffer_ms / 1000 * output.rate)
        self.gen = StreamGenerator(model, self.params, s.seed, decode_chunk=self.cfg.decode_frames)
        self.listeners: list[Listener] = []
        self.wake = threading.Event()  # set by `submit`; a group shares one among its sessions
        self.errors = 0  # internal errors so far
        self.listener_errors = 0
        self.step_ms: collections.deque[float] = collections.deque(maxlen=2000)
        self.prepare_step_ms: collections.deque[float] = collections.deque(maxlen=500)  # slide / continuation
        self.job_step_ms: collections.deque[float] = collections.deque(maxlen=500)  # a job's piece included
        self.step_log: collections.deque[StepRecord] = collections.deque(maxlen=STEP_LOG)  # every step
        self._recent_ms: collections.deque[float] = collections.deque(maxlen=50)  # every step, the latest
        self._plain_ms: collections.deque[float] = collections.deque(maxlen=50)  # steps preparing nothing
        self._job_waited = 0  # steps a pending job has waited for room in a step
        self._queue: queue.SimpleQueue[c.Ticket] = queue.SimpleQueue()
        self.reader = Reader(self.cfg.read_timeout_s)  # files, input and uploads: read off this thread
        self._prompt: PendingPrompt | None = None
        self._continuation: PendingContinuation | None = None
        self._condition: PendingCondition | None = None  # a melody stream's new prompt or melody
        # continuations and conditions whose audio is still being read, oldest first: one supersedes
        # the pending one (and older staged ones) only once its read succeeded - a refused request
        # changes nothing. At most reads.MAX_UNFINISHED of them (the reader refuses more).
        self._staged_continuations: list[PendingContinuation] = []
        self._staged_conditions: list[PendingCondition] = []
        self.melody = "off"  # what the melody follows (melody checkpoints)
        self.style = "off"  # what the style follows (style checkpoints)
        self._features: torch.Tensor | None = None  # the melody's one-hot chroma or the style's states
        self.codec_origin = (0, 0)  # (absolute frame, model sample) where the codec stream last began
        self.steps = 0  # steps delivered
        self._failed_steps = 0
        self._idle_piece = False  # a job piece ran between the last two steps
        self._service_s = 0.0  # the last `service()` call: commands applied right before a step
        self._reopen_at = 0.0
        self._stopped_since: float | None = None  # when the device output was first seen stopped
        self._reported_output_error: str | None = None
        self._group: SessionGroup | None = None  # the group of one that `start` makes
        self.pace = 0.0  # real-time factor measured at start
        self.stalled: str | None = None  # where the generation thread is stuck, while the watchdog says so

    # -- public API (any thread) ---------------------------------------------------------------
    def start(self) -> None:
        """Open the output and start stepping on a generation thread of this session's own."""
        self._group = SessionGroup(self.model, max_sessions=1, batched=False, stall_s=self.cfg.stall_s)
        self._group.start()
        self._group.add(self)

    def open(self) -> None:
        """Prefill, open the output (and input), queue autoplay; a `SessionGroup` steps it after."""
        self.prepare_stream()
        self.open_audio()

    def prepare_stream(self) -> None:
        """The compute half of `open`: prefill and measure the pace (a running group does this on
        its generation thread, which owns torch's pool)."""
        self._start_generator()
        self.pace = self._measure_pace()
        if not self.cfg.slide_chunk and self._below_real_time:  # a sooner continuation
            columns = self._continue_chunk()
            self.gen.set_continue_chunk(columns)
            self.log(
                f"below real time, a continuation prefills {columns} columns a step: ready sooner, each such "
                f"step ~{step_costs(self.model)[columns]:.1f}x a plain one ([stream] slide_chunk sets it)"
            )

    @property
    def _below_real_time(self) -> bool:
        """Measured (at start) to play slower than real time: the music has holes whatever a step
        costs, so preparations go for readiness instead of the live-safe bound."""
        return 0.0 < self.pace < 1.0

    def _continue_chunk(self) -> int:
        """Columns a continuation prefills a step: the setting, else by cost and pace (unmeasured
        yet: as at real time)."""
        return self.cfg.slide_chunk or continuation_chunk(step_costs(self.model), self.pace or 1.0)

    def open_audio(self) -> None:
        """The audio half of `open`: output, input and autoplay (on the caller's thread: PortAudio
        streams are opened and aborted from the thread that manages the session)."""
        # The audio callback needs the GIL for its copy; with Python's default 5 ms switch interval
        # it can wait about a whole 256-frame period behind the generation thread and miss it.
        sys.setswitchinterval(min(sys.getswitchinterval(), SWITCH_INTERVAL_S))
        self.output.open()
        if self.capture:
            self.capture.open()
        if self.cfg.autoplay:
            self.submit(c.Play(), source="autoplay")

    def submit(self, command: c.Command, source: str = "api") -> c.Ticket:
        ticket = c.Ticket(command, source=source)
        self._queue.put(ticket)
        self.wake.set()
        return ticket

    def attach_clock(self, clock: BeatClock, quantize: float) -> None:
        """Land changes on `clock`'s beats: `quantize` beats apart (0: at once) until a `quantize`
        command changes it. Call before `start`/`open`."""
        self.clock = clock
        self.controls["quantize"] = CONTROLS["quantize"].check(quantize)

    def close(self) -> None:
        if self._group is not None:
            self._group.close()
            self._group = None
        else:
            self.release()

    def release(self) -> None:
        """Close what `open` opened (a group calls this once the session has left it)."""
        for pending in (
            self._prompt,
            self._continuation,
            self._condition,
            *self._staged_continuations,
            *self._staged_conditions,
        ):
            if pending is not None and not pending.ticket.done.is_set():
                pending.job.close()
                self._refuse(pending.ticket, "the session closed before it took effect")
        self._prompt = self._continuation = self._condition = None
        self._staged_continuations, self._staged_conditions = [], []
        self.output.close()
        if self.capture:
            self.capture.close()

    @property
    def audio_taps(self) -> list[Callable[[int, np.ndarray], None]]:
        return self.sink.taps

    def view(self) -> dict[str, Any]:
        """What a performer set: transport, prompts and every control - the state all clients share."""
        return {
            "state": self.state,
            "prompts": [{"text": t, "weight": w} for t, w in self.prompts],
            "slots": [{"text": t, "weight": w} for t, w in self.board],
            "melody": self.melody,
            "style": self.style,
            **self.controls,
        }

    def snapshot(self) -> dict[str, Any]:
        """`view` plus where the stream is and how it is doing."""
        steps = sorted(self.step_ms.copy())  # copy(): atomic, while the generation thread appends
        started = self.gen.started
        frame = self.gen.frames_done if started else 0
        pending = [
            p.ticket.name if p.ticket.beat is None else f"{p.ticket.name} at beat {p.ticket.beat:g}"
            for p in (
                self._prompt,
                self._continuation,
                self._condition,
                *self._staged_continuations,
                *self._staged_conditions,
            )
            if p is not None
        ] + [f"{t.name} at beat {t.beat:g}" for t in list(self._held)]
        return {
            **self.view(),
            "phase": "stalled" if self.stalled else self.gen.phase.value if started else "starting",
            "stalled": self.stalled,  # where the generation thread is stuck (None: it is not)
            "fading": started and self.gen.fading,
            "pending": pending,
            "frame": frame,  # frames complete
            "next_frame": self.gen.next_frame if started else 0,  # where a change made now is heard from
            "seconds": frame / self.model.spec.frame_rate,
            "buffer_ms": 1000 * self.output.ring.fill / self.output.rate,
            "underruns": self.output.underruns,
            "errors": self.errors,
            "step_ms_p50": percentile(steps, 0.5),
            "step_ms_p99": percentile(steps, 0.99),
            "slides": self.gen.slides if started else 0,
            "prepare_step_ms_max": max(self.prepare_step_ms.copy(), default=None),
            "job_step_ms_max": max(self.job_step_ms.copy(), default=None),
            "latency_ms_p50": self.probes.estimate_ms(),
            "output": self.output.describe(),
            "output_error": self.output.error,
            "link": None if self.clock is None else self.clock.describe(),
        }

    # -- the watchdog (its own thread: `watchdog`) ---------------------------------------------------
    def median_step_s(self) -> float:
        """The median of the recent steps, seconds (0 before any)."""
        return median(self._recent_ms.copy()) / 1000  # copy(): atomic, while the generation thread appends

    def stall_began(self, where: str, seconds: float) -> None:
        """The generation thread has made no step for `seconds`: say so, and where it is stuck."""
        self.stalled = where
        self._event("changed", {"changes": {"phase": "stalled"}, "source": "watchdog"})
        self._event(
            "error",
            {"message": f"the music has stopped: no step for {seconds:.1f} s, the generation thread is in {where}"},
        )

    def stall_ended(self, seconds: float) -> None:
        self.stalled = None
        self._event("changed", {"changes": {"phase": self.gen.phase.value}, "source": "watchdog"})
        self._event("warning", {"message": f"the music goes on after a stall of {seconds:.1f} s"})

    def expected_latency_s(self) -> float:
        """Command -> audible: the recent healthy median, else the buffer plus ~135 ms of delay
        pattern and codec hold-back."""
        measured = self.probes.estimate_ms()
        return (measured if measured is not None else self.cfg.buffer_ms + 135.0) / 1000

    # -- one turn of a generation loop (called by the SessionGroup's thread) ----------------------
    def service(self) -> bool:
        """Apply queued commands, finish what is ready, watch the output; True when the ring wants
        another frame."""
        t0 = time.perf_counter()
        self._apply_commands()
        self._promote_staged()
        self._finish_prompt()
        self._finish_condition()
        self._finish_continuation()
        self._watch_output()
        self._service_s = time.perf_counter() - t0
        return self.state == PLAYING and self.output.healthy and self.output.ring.fill < self.target_frames

    def deliver(self, result: StepResult, seconds: float, phase_before: Phase) -> None:
        """Take a step's result (from `gen.step()` or a batch): timings, audio out, then one piece
        of a pending job within the step's budget."""
        self._failed_steps = 0
        self.steps += 1
        dt = 1000 * seconds
        self.step_ms.append(dt)
        self._recent_ms.append(dt)
        if phase_before != Phase.PLAYING or self.gen.phase != Phase.PLAYING:
            self.prepare_step_ms.append(dt)
        else:
            self._plain_ms.append(dt)
        self.sink.push(result.audio)
        # A machine with time to spare runs job pieces between steps (`idle`): it ran one since the
        # last step, or the ring holds more than half its target (catching up after an idle piece).
        # Only a machine that is really behind gives a piece a share of this step.
        spare = self._idle_piece or self.headroom_s() > 0
        job = None if spare else self._next_job()
        self._idle_piece = False
        if job is not None:
            recent = self._plain_ms or self._recent_ms
            plain = median(recent)
            if self._below_real_time:  # sooner, in bigger pieces (SLOW_JOB_SHARE)
                room = SLOW_JOB_SHARE * plain
            else:
                room = min(JOB_SHARE * plain, STEP_LIMIT * plain - dt)  # ms this step may still take
            if room >= 1000 * (job.unit_s or 0.0) or self._job_waited >= MAX_JOB_WAIT_STEPS:
                self._job_waited = 0
                t0 = time.perf_counter()
                job.advance(max(room, 0.0) / 1000)
                dt += 1000 * (time.perf_counter() - t0)
                self.job_step_ms.append(dt)
            else:  # this step is dear already (a slide's chunk rode in it): the job waits for the next
                self._job_waited += 1
                job = None
        dt += 1000 * self._service_s  # a command applied right before the step held the music up as much
        self._service_s = 0.0
        self.step_log.append(StepRecord(time.perf_counter(), dt, phase_before.value, job.label if job else ""))
        self.resolve_probes()

    def playing(self) -> bool:
        """Playing (not paused or stopped): what the watchdog asks of the group's sessions."""
        return self.state == PLAYING

    def headroom_s(self) -> float:
        """Seconds of buffered audio beyond half the target: how long this session's steps could
        wait without an underrun, with a margin (unbounded when not playing: nothing to protect)."""
        if self.state != PLAYING:
            return math.inf
        return max(0.0, (self.output.ring.fill - 0.5 * self.target_frames) / self.output.rate)

    def idle(self, seconds: float) -> None:
        """Nothing to step for now and up to `seconds` may go on preparing (a share of the group's
        headroom): a pending job gets a piece of that size (everything when not playing), else a
        continuation being prefilled gets a chunk. A machine faster than real time so prepares
        between steps, which then stay plain; one without time to spare gives the job a share of
        each step instead (and the prefill rides in the step's forward)."""
        job = self._next_job()
        if job is not None:
            job.advance(None if self.state != PLAYING else max(0.0, min(seconds, MAX_IDLE_PIECE_S)))
            self._idle_piece = True
        elif self.state == PLAYING and self.gen.phase == Phase.CONTINUING:
            self.gen.prepare()
        self.resolve_probes()

    def step_failed(self, e: Exception) -> None:
        """A step raised: report it; after a few in a row, reset the stream so the music comes back."""
        self.report_error(e)
        self._failed_steps += 1
        if self._failed_steps < MAX_FAILED_STEPS:
            return
        self._failed_steps = 0
        try:
            self._cancel_continuation("the stream was reset after internal errors")
            self.gen.restart(keep_audio=False)
        except Exception:
            try:  # the stream itself is broken: build it again
                self._start_generator()
            except Exception as again:
                self.report_error(again)
                return
        self.codec_origin = (self.gen.frames_done, self.sink.samples)
        self._event("warning", {"message": f"the stream was reset after {MAX_FAILED_STEPS} failed steps"})

    def report_error(self, e: Exception) -> None:
        """A bug must not silence the music: tell the listeners and carry on."""
        self.errors += 1
        self._event("error", {"message": f"internal error: {type(e).__name__}: {e}"})

    def idle_wait(self) -> float:
        """Seconds the loop may sleep before this session needs looking at again."""
        if self.state != PLAYING:
            return 0.05
        ahead = (self.output.ring.fill - self.target_frames) / self.output.rate
        return min(0.02, max(0.001, ahead + 0.25 * self.hop / self.rate))

    def resolve_probes(self) -> None:
        out = self.output
        for ticket in self.probes.resolve(out.clock[1], out.heard_at, self.errors + out.underruns):
            if isinstance(ticket.command, c.CONTINUATIONS):
                self.log(f"continuation heard {ticket.latency_ms:.0f} ms after it was asked for")
            self._event("audible", {"ticket": ticket})

    # -- the generator ---------------------------------------------------------------------------
    def _start_generator(self) -> None:
        m = self.model
        window = min(m.spec.seconds_to_frames(self.cfg.window_s), m.max_frames)
        context = min(m.spec.seconds_to_frames(self.cfg.context_s), window // 2)
        if m.spec.lm.prefix_conditioned:  # one condition: the prompt's text and the melody or style, as a prefix
            conds = [(run(prefix_condition(m, self.prompts[0][0], self._features, None))[0], 1.0)]
        else:
            conds = [(m.conditioner.condition(t, guided=True), w) for t, w in self.prompts]
        chunk = self.cfg.slide_chunk or prefill_chunk(m)
        continue_chunk = self._continue_chunk()
        prefix = conds[0][0].prefix
        fitted = self.gen.context_that_slides(window, context, chunk, 0 if prefix is None else prefix.shape[1])
        if fitted < context:  # a melody prefix is prefilled before the context at every slide
            self.log(
                f"context {context / m.spec.frame_rate:.1f} s -> {fitted / m.spec.frame_rate:.1f} s: the most a "
                f"{window / m.spec.frame_rate:.1f} s window can keep and still slide"
            )
            context = fitted
        self.gen.start(
            conds,
            capacity_frames=window,
            context_frames=context,
            guided=True,
            max_prompts=MAX_PROMPTS,
            slide_chunk=chunk,
            continue_chunk=continue_chunk,
        )
        self.controls["context"] = self.gen.context_frames / m.spec.frame_rate

    def _measure_pace(self, steps: int = PACE_STEPS) -> float:
        """This stream's real-time factor on this machine, from its first steps, said in one line with
        what to do when it is below real time. With autoplay their audio is kept (it is what plays
        first); otherwise the stream starts again, so nothing is in the history before a play."""
        times = []
        for _ in range(steps):
            t0 = time.perf_counter()
            result = self.gen.step()
            times.append(time.perf_counter() - t0)
            if self.cfg.autoplay:
                self.sink.push(result.audio)
        if not self.cfg.autoplay:
            self._restart(keep_audio=False)
        typical = median(times[2:])  # past the first calls' kernel choices
        pace = 1 / (typical * self.model.spec.frame_rate)
        lm = self.model.lm
        kernels = (
            ("float32 exact" if lm.exact else lm.precision)
            + (f", kv {lm.kv}" if lm.kv != "float32" else "")
            + (f", codec {self.model.codec.precision}" if self.model.codec.precision != "float32" else "")
            + (", two-step guidance" if lm.two_step else "")
        )
        self.log(pace_line(self.model.source, lm.device.type, kernels, pace))
        return pace

    # -- commands --------------------------------------------------------------------------------
    def _apply_commands(self) -> None:
        self._release_held()
        while True:
            try:
                ticket = self._queue.get_nowait()
            except queue.Empty:
                break
            if self._hold(ticket):
                continue
            self._apply(ticket)
        self._release_held()  # one held just now may be due before this step already

    def _apply(self, ticket: c.Ticket) -> None:
        before = self.view()
        try:
            answer = HANDLERS[type(ticket.command)](self, ticket)
        except (UserError, ValueError) as e:
            self._refuse(ticket, str(e))
            return
        except Exception as e:  # a bug: the sender hears of it, the music goes on
            self._refuse(ticket, f"internal error: {type(e).__name__}: {e}")
            self.report_error(e)
            return
        if answer is not DEFERRED:
            self._applied(ticket, answer, before)

    def _applied(self, ticket: c.Ticket, heard: Answer, before: dict[str, Any]) -> None:
        ticket.applied = time.perf_counter()
        if self.gen.started and ticket.frame is None:
            ticket.frame = heard.frame if isinstance(heard, Heard) and heard.frame is not None else self.gen.next_frame
        if isinstance(heard, Heard):
            if heard.device_frame is not None:
                self.probes.add(ticket, heard.device_frame, self.errors + self.output.underruns)
            else:
                frame = heard.frame if heard.frame is not None else (ticket.frame or 0)
                self.probes.add(ticket, self._frame_position(frame), self.errors + self.output.underruns)
        self._event("applied", {"ticket": ticket})
        after = self.view()
        changes = {k: v for k, v in after.items() if before.get(k) != v}
        if changes:
            self._event("changed", {"changes": changes, "source": ticket.source})
        ticket.done.set()

    def _refuse(self, ticket: c.Ticket, reason: str) -> None:
        ticket.error = reason
        if ticket.source != "stdin":  # the console answers its own lines
            self.log(f"refused {ticket.name} from {ticket.source}: {reason}")
        self._event("refused", {"ticket": ticket})
        ticket.done.set()

    def _next_job(self) -> Job[Any] | None:
        """The job to give a piece of time to: a prompt first (it is quick and most often asked)."""
        for p in (self._prompt, self._condition, self._continuation):
            if p is not None and p.job.ready:
                return p.job
        return None

    # -- output supervision --------------------------------------------------------------------
    def _watch_output(self) -> None:
        out = self.output
        if out.error and out.error != self._reported_output_error:  # every output failure reaches everyone once
            self._reported_output_error = out.error
            self._event("error", {"message": out.error})
        if out.healthy or not isinstance(out, DeviceOutput):
            self._stopped_since = None
            return
        now = time.perf_counter()
        if self._stopped_since is None:
            self._stopped_since = now
        if now - self._stopped_since >= REOPEN_GRACE_S and now >= self._reopen_at:
            self._reopen_at = now + 1.0
            if out.reopen():
                out.set_playing(self.state == PLAYING)
                self._reported_output_error = None
                self._stopped_since = None
                self._event("output", {"message": f"output reopened: {out.describe()}"})

    def _event(self, kind: str, data: dict[str, Any]) -> None:
        if kind in ("error", "warning"):
            self.log(f"{kind}: {data['message']}")
        for fn in list(self.listeners):
            try:
                fn(kind, data)
            except Exception:
                self.listener_errors += 1


HANDLERS: dict[type, Callable[[Session, c.Ticket], Answer]] = {
    c.Set: Session._on_set,
    c.SetPrompt: Session._on_prompt,
    c.SetWeightedPrompts: Session._on_prompt,
    c.Play: Session._on_transport,
    c.Pause: Session._on_transport,
    c.Stop: Session._on_transport,
    c.Reset: Session._on_transport,
    c.ContinueHistory: Session._on_continue,
    c.ContinueInput: Session._on_continue,
    c.ContinueFile: Session._on_continue,
    c.ContinueAudio: Session._on_continue,
    c.ContinueCodes: Session._on_continue_codes,
    c.Follow: Session._on_follow,
    c.Query: Session._on_query,
    c.RecentCodes: Session._on_recent_codes,
}
