"""`musicgen-live bench-stream`: a real-time session measured the way a performer feels it.

Plays for `seconds`, sending a command every `every` seconds - prompt and cfg changes, a prompt never
heard before (T5 runs a block per step; every other one with a crossfade; a melody checkpoint follows
the melody of what it just played instead, a style checkpoint takes its style, each re-prefilling its
window), a continuation from the
last `continue_s` seconds of what played (encoded a piece per step, prefilled a chunk per step) and
a stop -> play cycle now and then -
and reports underruns, step times, command -> audible latency, time to first audio after play, and
what each kind of preparation costs: the worst step while it ran against the median plain step of
the few seconds before it was asked for. (A step's cost grows with the window's position - its
attention reads every cached column - so a preparation late in a window is held against plain
steps at about the same position, not the whole run's median.)
With `companions`, that many more sessions (other prompts, null outputs) share its engine in one
`SessionGroup`, stepped together, and their underruns are reported too.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from musicgen_live.engine.config import SamplingConfig
from musicgen_live.engine.model import MusicGen
from musicgen_live.engine.stats import median, percentile
from musicgen_live.streamer import commands as c
from musicgen_live.streamer.config import StreamConfig
from musicgen_live.streamer.group import SessionGroup
from musicgen_live.streamer.outputs import RingOutput, make_output
from musicgen_live.streamer.session import Session

LOCAL_S = 5.0  # plain steps this long before a request are its baseline
FADE_S = 2.0  # the crossfade of every other never-heard prompt
MELODY_S = 4.0  # a melody checkpoint follows the melody of this much of what it played
STYLE_S = 3.0  # a style checkpoint plays in the style of this much of what it played (its excerpt)
PROMPTS = ["dark minimal techno", "bright disco strings", "ambient drone with bells", "broken beat jazz"]


@dataclass
class StreamBench:
    seconds: float
    output: str
    buffer_ms: float
    underruns: int
    device_underflows: int
    step_ms_p50: float
    step_ms_p99: float
    slides: int
    command_latency_ms: list[float]
    first_audio_ms: list[float]
    plain_step_ms: float = 0.0  # median of steps with nothing being prepared
    plain_p99_ms: float = 0.0  # ... their 99th percentile and worst: what noise alone does
    plain_max_ms: float = 0.0
    worst_ms: dict[str, list[float]] = field(default_factory=dict)  # kind -> worst step during each
    worst_ratio: dict[str, list[float]] = field(default_factory=dict)  # ... against its local plain median
    p90_ratio: dict[str, list[float]] = field(default_factory=dict)  # ... its steps' 90th percentile, likewise
    ready_ms: dict[str, list[float]] = field(default_factory=dict)  # kind -> request to take-over
    companion_underruns: list[int] = field(default_factory=list)  # one per companion session
    job_steps_ms: dict[str, list[float]] = field(default_factory=dict)  # job label -> steps that carried a piece


def run_stream_bench(
    model: MusicGen,
    output: RingOutput,
    stream: StreamConfig,
    seconds: float,
    every: float = 2.0,
    say: Callable[[str], None] = print,
    continue_s: float = 12.0,
    companions: int = 0,
) -> StreamBench:
    session = Session(model, output, stream, SamplingConfig(), log=say)
    group = SessionGroup(model, max_sessions=1 + companions, batched=companions > 0, stall_s=stream.stall_s)
    others = [
        Session(
            model,
            make_output("null", output.channels, stream.buffer_ms / 1000, stream.blocksize),
            StreamConfig(**{**vars(stream), "prompt": PROMPTS[i % len(PROMPTS)], "output": "null"}),
            SamplingConfig(seed=i + 1),
        )
        for i in range(companions)
    ]
    group.start()
    for s in [session, *others]:
        group.add(s)
    latency, first_audio = [], []
    timed: list[tuple[str, c.Ticket]] = []  # (kind, ticket) of the preparations to cost
    t0 = time.perf_counter()
    n = 0
    try:
        while time.perf_counter() - t0 < seconds:
            time.sleep(every)
            n += 1
            pending = any(not t.done.is_set() for _, t in timed)
            if n % 10 == 0 and not pending:  # a stop -> play cycle (not over a preparation being costed)
                session.submit(c.Stop()).wait(5)
                time.sleep(0.3)
                t = session.submit(c.Play())
                time.sleep(1.0)
                if t.latency_ms is not None:
                    first_audio.append(t.latency_ms)
                continue
            if n % 7 == 0 and session.sink.history.seconds >= continue_s and not pending:
                timed.append(("continuation", session.submit(c.ContinueHistory(continue_s))))
                continue
            if n % 5 == 0 and model.melody:  # a melody checkpoint: the melody of what just played, re-prefilled
                if session.sink.history.seconds >= MELODY_S:
                    timed.append(("melody change", session.submit(c.Follow("melody", c.FromHistory(MELODY_S)))))
                continue
            if n % 5 == 0 and model.style is not None:  # a style checkpoint: the style of what just played
                if session.sink.history.seconds >= STYLE_S:
                    timed.append(("style change", session.submit(c.Follow("style", c.FromHistory(STYLE_S)))))
                continue
            if n % 5 == 0:  # every other one crossfades: the new prompt's row is copied in, the old one's out
                fade = FADE_S if n % 10 == 5 else 0.0
                kind = f"new prompt, {fade:.0f} s fade" if fade else "new prompt"
                timed.append((kind, session.submit(c.SetPrompt(f"never heard before #{n}, slow dub", fade_s=fade))))
                continue
            # (a melody or style checkpoint's prompt change re-prefills like a melody change and would supersede it)
            prompt = n % 2 and not model.spec.lm.prefix_conditioned
            cmd = c.SetPrompt(PROMPTS[n % len(PROMPTS)], fade_s=0) if prompt else c.Set("cfg", 3.0 + n % 4)
            t = session.submit(cmd)
            time.sleep(min(1.0, every * 0.9))
            if t.latency_ms is not None:
                latency.append(t.latency_ms)
            if n % 5 == 1:
                snap = session.snapshot()
                say(f"{snap['seconds']:6.1f} s  underruns {snap['underruns']}  step p50 {snap['step_ms_p50']:.1f} ms")
        for _, t in timed:
            t.wait(120)
        snap = session.snapshot()
        companion_underruns = [s.snapshot()["underruns"] for s in others]
    finally:
        group.close()
    log = list(session.step_log)
    plain = sorted(ms for _, ms, phase, job in log if phase == "playing" and not job)
    plain_median = median(plain)
    worst: dict[str, list[float]] = {}
    worst_ratio: dict[str, list[float]] = {}
    p90_ratio: dict[str, list[float]] = {}
    ready: dict[str, list[float]] = {}

    def cost(kind: str, during: list[float], before: float) -> None:
        local = [
            ms for end, ms, phase, job in log if before - LOCAL_S <= end < before and phase == "playing" and not job
        ]
        base = median(local, empty=plain_median)
        worst.setdefault(kind, []).append(max(during))
        worst_ratio.setdefault(kind, []).append(max(during) / max(base, 1e-9))
        p90_ratio.setdefault(kind, []).append((percentile(sorted(during), 0.9) or 0.0) / max(base, 1e-9))

    for kind, t in timed:
        if t.applied is None:
            continue
        during = [ms for end, ms, _, _ in log if t.accepted <= end <= t.applied + 0.001]
        fade_frames = model.spec.seconds_to_frames(getattr(t.command, "fade_s", None) or 0.0)
        if fade_frames:  # the crossfade's last step (the old row leaving the cache) counts too
            after = [ms for end, ms, _, _ in log if end > t.applied + 0.001]
            during += after[: fade_frames + 2]
        if during:
            cost(kind, during, t.accepted)
            ready.setdefault(kind, []).append(1000 * (t.applied - t.accepted))
    slides: dict[int, list[tuple[float, float]]] = {}  # each slide's steps: consecutive "sliding" entries
    run = 0
    for i, (end, ms, phase, _) in enumerate(log):
        if phase == "sliding":
            run = run if i and log[i - 1][2] == "sliding" else run + 1
            slides.setdefault(run, []).append((end, ms))
    for steps in slides.values():
        cost("window slide", [ms for _, ms in steps], steps[0][0])
    job_steps: dict[str, list[float]] = {}
    for _, ms, _, job in log:
        if job:
            job_steps.setdefault(job, []).append(ms)
    return StreamBench(
        seconds=snap["seconds"],
        output=output.describe(),
        buffer_ms=stream.buffer_ms,
        underruns=snap["underruns"],
        device_underflows=getattr(output, "device_underflows", 0),
        step_ms_p50=snap["step_ms_p50"],
        step_ms_p99=snap["step_ms_p99"],
        slides=snap["slides"],
        command_latency_ms=latency,
        first_audio_ms=first_audio,
        plain_step_ms=plain_median,
        plain_p99_ms=percentile(plain, 0.99) or 0.0,
        plain_max_ms=plain[-1] if plain else 0.0,
        worst_ms=worst,
        worst_ratio=worst_ratio,
        p90_ratio=p90_ratio,
        ready_ms=ready,
        companion_underruns=companion_underruns,
        job_steps_ms=job_steps,
    )


def format_stream_bench(r: StreamBench) -> str:
    def pct(values: list[float], q: float) -> str:
        v = percentile(sorted(values), q)
        return "-" if v is None else f"{v:.0f}"

    lines = [
        f"{r.seconds:.1f} s of music to {r.output}, buffer {r.buffer_ms:.0f} ms",
        f"  underruns {r.underruns} (device underflow flags {r.device_underflows})"
        + (
            f"; {len(r.companion_underruns)} companion sessions: underruns {r.companion_underruns}"
            if r.companion_underruns
            else ""
        ),
        f"  step p50 {r.step_ms_p50:.1f} ms, p99 {r.step_ms_p99:.1f} ms; {r.slides} window slides",
        f"  command -> audible: p50 {pct(r.command_latency_ms, 0.5)} ms, p99 {pct(r.command_latency_ms, 0.99)} ms "
        f"({len(r.command_latency_ms)} commands)",
        f"  time to first audio after play: median "
        f"{median(r.first_audio_ms) if r.first_audio_ms else 0:.0f} ms "
        f"({len(r.first_audio_ms)} stop/play cycles)",
        f"  plain steps (nothing being prepared): median {r.plain_step_ms:.1f} ms, p99 {r.plain_p99_ms:.1f} ms "
        f"= {r.plain_p99_ms / max(r.plain_step_ms, 1e-9):.2f}x, worst {r.plain_max_ms:.1f} ms "
        f"= {r.plain_max_ms / max(r.plain_step_ms, 1e-9):.2f}x",
        f"  while preparing, against the median plain step of the {LOCAL_S:.0f} s before (worst of each kind):",
    ]
    for kind, worst in r.worst_ms.items():
        ready = r.ready_ms.get(kind)
        took = f", ready {median(ready) / 1000:.1f} s after the request (median)" if ready else ""
        lines.append(
            f"    {kind:13s} worst step {max(worst):6.1f} ms = {max(r.worst_ratio[kind]):.2f}x, "
            f"p90 {max(r.p90_ratio[kind]):.2f}x ({len(worst)} of them){took}"
        )
    if r.job_steps_ms:
        lines.append("  steps that carried a piece of a job (T5 blocks, encoder frames, melody / style features):")
    for job, steps in sorted(r.job_steps_ms.items()):
        ordered = sorted(steps)
        mid, top = median(ordered), ordered[-1]
        base = max(r.plain_step_ms, 1e-9)
        lines.append(
            f"    {job:13s} {len(steps)} steps: median {mid:.1f} ms = {mid / base:.2f}x, worst {top:.1f} ms = "
            f"{top / base:.2f}x (pieces that fit between steps are not counted)"
        )
    return "\n".join(lines)
