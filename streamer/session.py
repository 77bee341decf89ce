"""The real-time session: one generation thread that keeps the output's ring at its target fill.

The thread owns the `Generator`; everything else talks to it through `submit(command)`, and
commands are applied between two steps - at a frame boundary, never mid-step. When the ring holds
`buffer_ms` of audio the thread sleeps; a command wakes it at once.

Audio path: generator (model rate) -> own-output history (for "continue") -> streaming resampler
(soxr) -> gain, channel mapping -> ring -> output callback.

Latency: every applied command leaves a probe at the first model sample generated under it; when
the output's read position passes that sample (device rate), the command became audible.
"""

from __future__ import annotations

import collections
import queue
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any, Callable

import numpy as np
import torch

from engine.audiofile import prepare_audio, read_audio
from engine.config import SamplingConfig
from engine.errors import ContextError, EngineError
from engine.generator import MAX_PROMPTS, Generator, StepResult
from engine.model import MusicGen
from engine.sampling import SamplingParams
from engine.stats import percentile

from .commands import (
    ContinueAudio,
    ContinueFile,
    ContinueHistory,
    ContinueInput,
    Pause,
    Play,
    Reset,
    SetContext,
    SetFade,
    SetGain,
    SetParams,
    SetPrompt,
    SetSeed,
    SetWeightedPrompts,
    Stop,
    Ticket,
)
from .config import MAX_DECODE_FRAMES, StreamConfig
from .outputs import DeviceOutput, InputCapture, RingOutput
from .ring import HistoryRing

PLAYING, PAUSED, STOPPED = "playing", "paused", "stopped"
SWITCH_INTERVAL_S = 0.0005


@dataclass
class Probe:
    ticket: Ticket
    device_frame: int  # ring position of the first sample generated under the command


class Session:
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
        s = sampling or SamplingConfig()
        self.params = SamplingParams(temperature=s.temperature, top_k=s.top_k, top_p=s.top_p, cfg=s.cfg).validated()
        self.seed = s.seed
        self.capture = capture
        self.log = log
        self.gain = self.cfg.gain
        self.fade_s = self.cfg.fade_s
        self.context_s = self.cfg.context_s
        self.state = STOPPED
        self.rate = model.sample_rate
        self.hop = model.spec.codec.hop
        self.prompts: list[tuple[str, float]] = [(self.cfg.prompt, 1.0)]
        self.history = HistoryRing(self.cfg.history_s, self.rate, model.audio_channels)
        self.target_frames = int(self.cfg.buffer_ms / 1000 * output.rate)
        self._queue: queue.SimpleQueue[Ticket] = queue.SimpleQueue()
        self._wake = threading.Event()
        self._quit = threading.Event()
        self._thread: threading.Thread | None = None
        self._encoder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="continue-encode")
        self._continuations: list[tuple[Ticket, Future]] = []
        self._probes: list[Probe] = []
        self._resampler = _Resampler(self.rate, output.rate, model.audio_channels)
        self._model_samples = 0  # model-rate samples emitted since the session began
        self._frame0 = (0, 0)  # (absolute frame, model sample index) where the codec stream began
        self.step_ms: collections.deque[float] = collections.deque(maxlen=5000)
        self.slide_step_ms: list[float] = []
        self.latencies_ms: collections.deque[float] = collections.deque(maxlen=1000)
        self.listeners: list[Callable[[str, dict[str, Any]], None]] = []
        # called from the generation thread with (first sample index, (n, channels) float32 at the
        # model rate) for every chunk of audio produced; taps must copy what they keep, and be quick
        self.audio_taps: list[Callable[[int, np.ndarray], None]] = []
        if not 1 <= self.cfg.decode_frames <= MAX_DECODE_FRAMES:
            raise EngineError(
                f"[stream] decode_frames must be between 1 and {MAX_DECODE_FRAMES}, got {self.cfg.decode_frames}"
            )
        self.gen = Generator(model, self.params, self.seed, decode_chunk=self.cfg.decode_frames)
        self._reopen_at = 0.0

    # -- public API (any thread) ---------------------------------------------------------------
    def start(self) -> None:
        """Open the output and start this session's own generation thread."""
        self.open()
        self._thread = threading.Thread(target=self._run, name="generation", daemon=True)
        self._thread.start()

    def open(self) -> None:
        """Prefill, open the output (and input), queue autoplay - without a thread of its own, for a
        `SessionGroup` that steps this session together with others."""
        # The audio callback needs the GIL for its copy; with Python's default 5 ms switch interval
        # it can wait about a whole 256-frame period behind the generation thread and miss it.
        sys.setswitchinterval(min(sys.getswitchinterval(), SWITCH_INTERVAL_S))
        self._start_generator()
        self.output.open()
        if self.capture:
            self.capture.open()
        if self.cfg.autoplay:
            self.submit(Play())

    def submit(self, command: Any) -> Ticket:
        ticket = Ticket(command)
        self._queue.put(ticket)
        self._wake.set()
        return ticket

    def close(self) -> None:
        self._quit.set()
        self._wake.set()
        if self._thread:
            self._thread.join(timeout=5)
        self.release()

    def release(self) -> None:
        """Close what `open` opened (a group calls this once the session has left it)."""
        self._encoder.shutdown(wait=False, cancel_futures=True)
        self.output.close()
        if self.capture:
            self.capture.close()

    def snapshot(self) -> dict[str, Any]:
        steps = sorted(self.step_ms)
        lat = sorted(self.latencies_ms)
        return {
            "state": self.state,
            "prompts": [{"text": t, "weight": w} for t, w in self.prompts],
            "cfg": self.params.cfg,
            "temperature": self.params.temperature,
            "top_k": self.params.top_k,
            "top_p": self.params.top_p,
            "seed": self.seed,
            "gain": self.gain,
            "fade_s": self.fade_s,
            "context_s": self.context_s,
            "frame": self.gen.frames_done if self.gen.state else 0,
            "seconds": (self.gen.frames_done if self.gen.state else 0) / self.model.spec.frame_rate,
            "buffer_ms": 1000 * self.output.ring.fill / self.output.rate,
            "underruns": self.output.underruns,
            "step_ms_p50": percentile(steps, 0.5),
            "step_ms_p99": percentile(steps, 0.99),
            "slides": self.gen.slides if self.gen.state else 0,
            "slide_step_ms_max": max(self.slide_step_ms, default=None),
            "latency_ms_p50": percentile(lat, 0.5),
            "latency_ms_p99": percentile(lat, 0.99),
            "output": self.output.describe(),
            "output_error": self.output.error,
        }

    # -- the generation thread -----------------------------------------------------------------
    def _start_generator(self) -> None:
        m = self.model
        window = min(m.spec.seconds_to_frames(self.cfg.window_s), m.max_frames)
        context = min(m.spec.seconds_to_frames(self.cfg.context_s), window // 2)
        self.gen.start(
            self._conditions(self.prompts),
            capacity_frames=window,
            context_frames=context,
            guided=True,
            max_prompts=MAX_PROMPTS,
            slide_chunk=self.cfg.slide_chunk,
        )

    def _conditions(self, prompts: list[tuple[str, float]]) -> list[tuple[Any, float]]:
        return [(self.model.conditioner.condition(t, guided=True), w) for t, w in prompts]

    def _run(self) -> None:
        while not self._quit.is_set():
            try:
                if self.service():
                    sliding = self.gen.state.slide is not None
                    t0 = time.perf_counter()
                    result = self.gen.step()
                    self.deliver(result, time.perf_counter() - t0, sliding)
                    continue
                self._resolve_probes()
            except Exception as e:  # a bug must not silence the music: report it and carry on
                self.report_error(e)
                time.sleep(0.05)
            self._wake.wait(timeout=self.idle_wait())
            self._wake.clear()

    # -- one turn of a generation loop (this session's thread or a SessionGroup's) ---------------
    def service(self) -> bool:
        """Apply queued commands and finished continuations, watch the output; True when the ring
        wants another frame."""
        self._apply_commands()
        self._finish_continuations()
        self._watch_output()
        return self.state == PLAYING and self.output.healthy and self.output.ring.fill < self.target_frames

    def deliver(self, result: StepResult, seconds: float, sliding: bool) -> None:
        """Take a step's result (from `gen.step()` or a batch): timings, audio out, latency probes."""
        dt = 1000 * seconds
        self.step_ms.append(dt)
        if sliding or self.gen.state.slide is not None:
            self.slide_step_ms.append(dt)
        self._emit(result.audio)
        self._resolve_probes()

    def report_error(self, e: Exception) -> None:
        """A bug must not silence the music: tell the listeners and carry on."""
        self._event("error", {"message": f"internal error: {type(e).__name__}: {e}"})

    @property
    def wake(self) -> threading.Event:
        """Set by `submit`; a group shares one event among its sessions."""
        return self._wake

    @wake.setter
    def wake(self, event: threading.Event) -> None:
        self._wake = event

    def idle_wait(self) -> float:
        """Seconds the loop may sleep before this session needs looking at again."""
        if self.state != PLAYING:
            return 0.05
        ahead = (self.output.ring.fill - self.target_frames) / self.output.rate
        return min(0.02, max(0.001, ahead + 0.25 * self.hop / self.rate))

    def _emit(self, audio: torch.Tensor) -> None:
        if audio.shape[-1] == 0:
            return
        frames = audio.detach().cpu().numpy().T.astype(np.float32, copy=False)  # (n, channels)
        self.history.append(frames)
        for tap in list(self.audio_taps):
            try:
                tap(self._model_samples, frames)
            except Exception:
                pass
        self._model_samples += len(frames)
        out = self._resampler.push(frames)
        if len(out):
            out = _map_channels(out, self.output.channels)
            if self.gain != 1.0:
                out = out * self.gain
            self.output.ring.write(out)

    # -- commands --------------------------------------------------------------------------------
    def _apply_commands(self) -> None:
        while True:
            try:
                ticket = self._queue.get_nowait()
            except queue.Empty:
                return
            try:
                self._apply(ticket)
                ticket.applied = time.perf_counter()
                if ticket.frame is None and self.gen.state is not None:
                    ticket.frame = self._next_frame()
                self._event("applied", {"ticket": ticket})
            except (EngineError, ValueError) as e:
                ticket.error = str(e)
                self._event("refused", {"ticket": ticket})
            finally:
                if not isinstance(ticket.command, (ContinueHistory, ContinueInput, ContinueFile, ContinueAudio)) or ticket.error:
                    ticket.done.set()

    def _apply(self, ticket: Ticket) -> None:
        c = ticket.command
        if isinstance(c, SetPrompt):
            self._set_prompts([(c.text, 1.0)], c.fade_s)
        elif isinstance(c, SetWeightedPrompts):
            self._set_prompts(list(c.prompts), c.fade_s)
        elif isinstance(c, SetParams):
            changes = {k: v for k, v in vars(c).items() if v is not None}
            params = replace(self.params, **changes).validated()
            self.gen.set_params(params)
            self.params = params
        elif isinstance(c, SetSeed):
            self.gen.reseed(c.seed)
            self.seed = c.seed
        elif isinstance(c, SetGain):
            if not 0.0 <= c.gain <= 4.0:
                raise ValueError(f"gain must be within 0..4, got {c.gain}")
            self.gain = c.gain
            self._probe_at(ticket, self.output.ring.written + 1)  # applies to audio not yet buffered
            return
        elif isinstance(c, SetFade):
            if not 0 <= c.seconds <= 60:
                raise ValueError(f"fade must be within 0..60 seconds, got {c.seconds}")
            self.fade_s = c.seconds
            return
        elif isinstance(c, SetContext):
            self.context_s = self.gen.set_context(self.model.spec.seconds_to_frames(c.seconds)) / self.model.spec.frame_rate
        elif isinstance(c, Play):
            if self.state == PLAYING:
                return
            resumed = self.state == PAUSED
            self.state = PLAYING
            self.output.set_playing(True)
            if resumed and self.output.ring.fill:
                self._probe_at(ticket, self.output.ring.read + 1)  # the buffered audio resumes
            else:
                self._probe(ticket, self._frame0[0])  # from a stop: the first frame of the new start
            return
        elif isinstance(c, Pause):
            if self.state == PLAYING:
                self.state = PAUSED
                self.output.set_playing(False)
            return
        elif isinstance(c, Stop):
            self.state = STOPPED
            self.output.set_playing(False)
            self.output.ring.request_flush()
            self._restart(None, keep_audio=False)
            return
        elif isinstance(c, Reset):
            self._probe(ticket, self._restart(None, keep_audio=True))
            return
        elif isinstance(c, (ContinueHistory, ContinueInput, ContinueFile, ContinueAudio)):
            self._continuations.append((ticket, self._encoder.submit(self._continuation_codes, c)))
            return
        else:
            raise ValueError(f"unknown command {type(c).__name__}")
        self._probe(ticket)

    def _set_prompts(self, prompts: list[tuple[str, float]], fade_s: float | None) -> None:
        fade = self.fade_s if fade_s is None else fade_s
        if not 0 <= fade <= 60:
            raise ValueError(f"fade must be within 0..60 seconds, got {fade}")
        self.gen.set_prompts(self._conditions(prompts), self.model.spec.seconds_to_frames(fade))
        self.prompts = prompts

    def _restart(self, codes: torch.Tensor | None, keep_audio: bool) -> int:
        """Drop the context (continuing from `codes` if given); returns the first new frame."""
        start = self.gen.frames_done
        result = self.gen.restart(codes, keep_audio=keep_audio)
        if not keep_audio:
            self._frame0 = (start, self._model_samples)
        self._emit(result.audio)
        return start

    # -- continuation: encode off the generation thread, restart at a frame boundary --------------
    def _continuation_codes(self, c: Any) -> torch.Tensor:
        """Runs in the encoder worker: source audio -> model-rate clip -> codes."""
        m = self.model
        seconds = min(float(c.seconds), self.gen.state.context_frames / m.spec.frame_rate)
        if not seconds > 0:
            raise ContextError(f"continuation length must be positive, got {c.seconds}")
        if isinstance(c, ContinueHistory):
            if self.history.seconds < 1 / m.spec.frame_rate:
                raise ContextError("there is no output history to continue from yet")
            clip = torch.from_numpy(np.ascontiguousarray(self.history.last(seconds).T))
        elif isinstance(c, ContinueInput):
            if self.capture is None:
                raise ContextError("no input device is open (start serve with --input DEVICE)")
            data, rate = self.capture.last(seconds)
            if len(data) == 0:
                raise ContextError("nothing has been captured from the input yet")
            clip = prepare_audio(data, rate, self.rate, m.audio_channels)
        elif isinstance(c, ContinueFile):
            clip = read_audio(c.path, self.rate, m.audio_channels)
        else:
            data = np.asarray(c.audio, dtype=np.float32)
            if data.ndim == 1:
                data = data[:, None]
            if data.ndim != 2 or len(data) == 0:
                raise ContextError("continuation audio must be a non-empty (samples, channels) array")
            clip = prepare_audio(data, int(c.rate), self.rate, m.audio_channels)
        clip = clip[:, -int(seconds * self.rate) :]
        if clip.shape[-1] < self.hop:
            raise ContextError("the audio to continue from is shorter than one frame")
        return m.encode_audio(clip)

    def _finish_continuations(self) -> None:
        still = []
        for ticket, fut in self._continuations:
            if not fut.done():
                still.append((ticket, fut))
                continue
            try:
                codes = fut.result()
                start = self._restart(codes, keep_audio=True)
                ticket.applied = time.perf_counter()
                self._probe(ticket, start)
                self.log(
                    f"continuing from {codes.shape[-1] / self.model.spec.frame_rate:.1f} s of "
                    f"{type(ticket.command).__name__[8:].lower() or 'audio'} (prepared in "
                    f"{1000 * (ticket.applied - ticket.accepted):.0f} ms)"
                )
                self._event("applied", {"ticket": ticket})
            except (EngineError, ValueError) as e:
                ticket.error = str(e)
                self._event("refused", {"ticket": ticket})
            except Exception as e:
                ticket.error = f"could not continue ({type(e).__name__}: {e})"
                self._event("refused", {"ticket": ticket})
            ticket.done.set()
        self._continuations = still

    # -- latency probes ------------------------------------------------------------------------
    def _next_frame(self) -> int:
        """The first frame whose tokens are sampled after now."""
        return self.gen._sampled_upto()

    def _probe(self, ticket: Ticket, frame: int | None = None) -> None:
        """Watch for the first sample of `frame` (default: the next frame sampled) to be played."""
        frame = self._next_frame() if frame is None else frame
        ticket.frame = frame
        f0, s0 = self._frame0
        model_sample = s0 + max(0, frame - f0) * self.hop
        self._probe_at(ticket, int(model_sample * self.output.rate / self.rate) + 1)

    def _probe_at(self, ticket: Ticket, device_frame: int) -> None:
        self._probes.append(Probe(ticket, device_frame))

    def _resolve_probes(self) -> None:
        if not self._probes:
            return
        t, read = self.output.clock
        still = []
        for p in self._probes:
            if read >= p.device_frame:
                p.ticket.audible = t
                self.latencies_ms.append(p.ticket.latency_ms)
                if isinstance(p.ticket.command, (ContinueHistory, ContinueInput, ContinueFile, ContinueAudio)):
                    self.log(f"continuation heard {p.ticket.latency_ms:.0f} ms after it was asked for")
                self._event("audible", {"ticket": p.ticket})
            else:
                still.append(p)
        self._probes = still[-256:]

    # -- output supervision --------------------------------------------------------------------
    def _watch_output(self) -> None:
        out = self.output
        if out.healthy or not isinstance(out, DeviceOutput):
            return
        now = time.perf_counter()
        if now >= self._reopen_at:
            self._reopen_at = now + 1.0
            if out.reopen():
                out.set_playing(self.state == PLAYING)
                self._event("output", {"message": f"output reopened: {out.describe()}"})
            else:
                self._event("error", {"message": out.error or "output device unavailable"})

    def _event(self, kind: str, data: dict[str, Any]) -> None:
        if kind in ("refused", "error"):
            msg = data.get("message") or data["ticket"].error
            self.log(f"{kind}: {msg}")
        for fn in list(self.listeners):
            try:
                fn(kind, data)
            except Exception:
                pass


class _Resampler:
    """Streaming model-rate -> device-rate conversion (soxr keeps the filter state between chunks)."""

    def __init__(self, rate_in: int, rate_out: int, channels: int) -> None:
        self.same = rate_in == rate_out
        if not self.same:
            import soxr

            self.stream = soxr.ResampleStream(rate_in, rate_out, channels, dtype="float32", quality="HQ")

    def push(self, frames: np.ndarray) -> np.ndarray:
        if self.same:
            return frames
        return self.stream.resample_chunk(np.ascontiguousarray(frames))


def _map_channels(frames: np.ndarray, channels: int) -> np.ndarray:
    if frames.shape[1] == channels:
        return frames
    if frames.shape[1] == 1:
        return np.repeat(frames, channels, axis=1)
    if channels == 1:
        return frames.mean(axis=1, keepdims=True)
    return frames[:, :channels]
