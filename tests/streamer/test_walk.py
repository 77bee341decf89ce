"""A random walk through everything a performer can do, at random frame offsets, across many window
slides, on a session the test steps itself (`driver.Driven`: deterministic, no threads).

Protects, after every step and every command (also with changes held for a beat clock's beats):
no internal error and no self-repair; every command
answered exactly once; the stream never stuck (each step samples the next frame, or a continuation
or restart has just taken over); audio without gap or repeat, exactly as many samples as the frames
decoded release; and the state an OSC subscriber and a WebSocket client were sent equals the
session's.

Two runners over the same moves: hypothesis' rule-based state machine (CI: short, shrinks a failure
to its shortest sequence), and a seeded walk for the long profile - `make walk` runs >= 10 000
commands (MUSICGEN_LIVE_WALK=10000; MUSICGEN_LIVE_WALK_SEED picks the seed).
"""

from __future__ import annotations

import functools
import os
import random
import shutil
import tempfile
import time

import numpy as np
import pytest
import soundfile as sf
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from musicgen_live.engine.model import MusicGen
from musicgen_live.streamer import commands as c
from musicgen_live.streamer.config import StreamConfig
from musicgen_live.streamer.quantize import SteadyClock

from .driver import Driven

STREAM = StreamConfig(buffer_ms=100, window_s=2.5, context_s=1.0, slide_chunk=4, history_s=5)
# the moves' domains, shared by both runners
TEXTS = ["warm pads", "dub techno", "", "x" * 50, "choir"]
FADES = [None, 0.0, 0.1, 0.6, 2.0]
KNOBS = ["cfg", "cfg_beta", "temperature", "top_k", "top_p", "seed", "gain", "context", "fade"]
KNOB_VALUES = (-5.0, 40.0)  # out-of-range values must be refused in a sentence
TRANSPORT = [c.Play, c.Pause, c.Stop, c.Reset, c.Play, c.Play]
SOURCES = ["history", "input", "file", "missing file", "audio"]
MELODIES = [*SOURCES, "off"]  # a text checkpoint refuses them all; a melody (style) one re-prefills
# melody and style commands (a checkpoint takes one kind and refuses the other) by source
FOLLOW = c.FOLLOW_KINDS
CLIP_FROM: dict[str, type] = dict(history=c.FromHistory, input=c.FromInput, audio=c.FromUpload, file=c.FromFile)
SECONDS = (0.05, 40.0)
BEATS = [0.0, 0.25, 1.0, 4.0, -1.0]  # quantize settings (-1 is refused); 4 beats = 1 s at the walk's 240 bpm
OWN_BEATS = [None, None, 0.0, 1.0]  # a change's own quantize
MAX_PLAY = 40  # steps between two commands at most


class Walk:
    """The session under test, the moves a performer makes, and the checks after each."""

    def __init__(self, model: MusicGen, on_the_beat: bool = False) -> None:
        """`on_the_beat`: a steady beat clock (240 bpm, on the output's sample clock) and changes
        quantized to the beat from the start, so that holds interleave with everything else."""
        self.model = model
        clock = SteadyClock(tempo=240.0, quantum=4.0, origin=0.0) if on_the_beat else None
        self.live = Driven(model, STREAM, clock=clock, quantize=1.0 if on_the_beat else 0.0)
        self.dir = tempfile.mkdtemp(prefix="walk-")
        self.clip = os.path.join(self.dir, "clip.wav")
        sf.write(self.clip, 0.1 * np.random.default_rng(0).standard_normal((44100, 2)), 44100)
        self.fresh = 0
        self.sent: list[c.Ticket] = []

    # -- moves -----------------------------------------------------------------------------------
    def play_on(self, steps: int) -> None:
        for _ in range(steps):
            self.live.turn()
            self.check()

    def prompt(self, text: str, new: bool, fade: float | None) -> None:
        if new:  # never heard before: its T5 runs a block per step
            self.fresh += 1
            text = f"{text} {self.fresh}"
        self._send(c.SetPrompt(text, fade_s=fade))

    def blend(self, weights: list[float], fade: float | None) -> None:
        self._send(c.SetWeightedPrompts(tuple((TEXTS[i % len(TEXTS)], w) for i, w in enumerate(weights)), fade))

    def knob(self, name: str, value: float, quantize: float | None = None) -> None:
        self._send(c.Set(name, value, quantize=quantize))

    def quantize(self, beats: float) -> None:
        self._send(c.Set("quantize", beats))  # without a beat clock, > 0 is refused

    def transport(self, action: type) -> None:
        self._send(action())

    def continue_from(self, source: str, seconds: float) -> None:
        if source == "history":
            self._send(c.ContinueHistory(seconds))
        elif source == "input":
            self._send(c.ContinueInput(seconds))  # no input device: refused
        elif source == "audio":
            audio = 0.2 * np.random.default_rng(self.fresh).standard_normal((22050, 1)).astype(np.float32)
            self._send(c.ContinueAudio(audio, 22050, seconds))
        else:
            self._send(c.ContinueFile(self.clip if source == "file" else self.clip + ".nope", seconds))

    def follow(self, kind: str, source: str, seconds: float) -> None:
        """A melody or style command (`kind`) from `source`."""
        assert kind in FOLLOW
        follow = functools.partial(c.Follow, kind)
        if source in ("history", "input"):  # input: no input device, refused
            self._send(follow(CLIP_FROM[source](seconds)))
        elif source == "audio":
            audio = 0.2 * np.random.default_rng(self.fresh).standard_normal((22050 * 4, 1)).astype(np.float32)
            self._send(follow(c.FromUpload(audio, 22050, seconds)))
        elif source == "off":
            self._send(follow())
        else:
            self._send(follow(c.FromFile(self.clip if source == "file" else self.clip + ".nope", seconds)))

    def ask(self) -> None:
        self._send(c.Query())

    def _send(self, command: c.Command) -> None:
        self.sent.append(self.live.submit(command))

    # -- checks ----------------------------------------------------------------------------------
    def check(self) -> None:
        live, s = self.live, self.live.session
        assert live.problems() == []
        assert live.gaps == 0
        frame0, sample0 = s.codec_origin
        hop, hold = self.model.spec.codec.hop, self.model.codec.hold_back
        assert s.sink.samples - sample0 == max(0, (s.gen.frames_done - frame0) * hop - hold), "audio count"
        view = s.view()
        assert live.clients.ws == view
        assert live.clients.osc == view

    def finish(self) -> dict[str, int]:
        """Play until every job and continuation is done; every command must have been answered."""
        try:
            self._send(c.Play())
            for _ in range(400):
                self.play_on(1)
                if not self.live.session.snapshot()["pending"]:
                    break
            self.play_on(10)
            unanswered = [t.name for t in self.sent if not t.done.is_set()]
            assert not unanswered, f"never answered: {unanswered}"
            s = self.live.session
            kinds = [kind for kind, _ in self.live.events]
            return {
                "commands": len(self.sent),
                "applied": kinds.count("applied"),
                "refused": kinds.count("refused"),
                "steps": s.steps,
                "slides": s.gen.slides,
            }
        finally:
            self.live.close()
            shutil.rmtree(self.dir, ignore_errors=True)


def seeded_walk(model: MusicGen, commands: int, seed: int, on_the_beat: bool = False) -> dict[str, int]:
    """The long profile: `commands` random moves with random stretches of music between them."""
    rng = random.Random(seed)
    walk = Walk(model, on_the_beat)
    moves = [
        lambda: walk.quantize(rng.choice(BEATS)),
        lambda: walk.knob(rng.choice(KNOBS), rng.uniform(*KNOB_VALUES), rng.choice(OWN_BEATS)),
        lambda: walk.prompt(rng.choice(TEXTS), rng.random() < 0.3, rng.choice(FADES)),
        lambda: walk.blend([rng.uniform(0, 2) for _ in range(rng.randint(1, 5))], rng.choice(FADES[:3])),
        lambda: walk.knob(rng.choice(KNOBS), rng.uniform(*KNOB_VALUES)),
        lambda: walk.knob(rng.choice(KNOBS), rng.uniform(*KNOB_VALUES)),
        lambda: walk.transport(rng.choice(TRANSPORT)),
        lambda: walk.continue_from(rng.choice(SOURCES), rng.uniform(*SECONDS)),
        lambda: walk.follow(rng.choice(list(FOLLOW)), rng.choice(MELODIES), rng.uniform(*SECONDS)),
        walk.ask,
    ]
    for _ in range(commands):
        rng.choice(moves)()
        walk.play_on(rng.randint(0, MAX_PLAY))
    held = sum(t.beat is not None for t in walk.sent)
    return {**walk.finish(), "held": held}


class WalkMachine(RuleBasedStateMachine):
    """The same moves for hypothesis, which also shrinks a failing sequence."""

    model: MusicGen
    runs: list[dict[str, int]] = []

    @initialize()
    def start(self) -> None:
        self.walk = Walk(self.model)

    def teardown(self) -> None:
        if hasattr(self, "walk"):
            self.runs.append(self.walk.finish())

    @rule(n=st.integers(0, MAX_PLAY))
    def play_on(self, n: int) -> None:
        self.walk.play_on(n)

    @rule(text=st.sampled_from(TEXTS), new=st.booleans(), fade=st.sampled_from(FADES))
    def prompt(self, text: str, new: bool, fade: float | None) -> None:
        self.walk.prompt(text, new, fade)

    @rule(weights=st.lists(st.floats(0, 2), min_size=1, max_size=5), fade=st.sampled_from(FADES[:3]))
    def blend(self, weights: list[float], fade: float | None) -> None:
        self.walk.blend(weights, fade)

    @rule(name=st.sampled_from(KNOBS), value=st.floats(*KNOB_VALUES), own=st.sampled_from(OWN_BEATS))
    def knob(self, name: str, value: float, own: float | None) -> None:
        self.walk.knob(name, value, own)

    @rule(beats=st.sampled_from(BEATS))
    def quantize(self, beats: float) -> None:
        self.walk.quantize(beats)

    @rule(action=st.sampled_from(TRANSPORT))
    def transport(self, action: type) -> None:
        self.walk.transport(action)

    @rule(source=st.sampled_from(SOURCES), seconds=st.floats(*SECONDS))
    def continue_from(self, source: str, seconds: float) -> None:
        self.walk.continue_from(source, seconds)

    @rule(kind=st.sampled_from(list(FOLLOW)), source=st.sampled_from(MELODIES), seconds=st.floats(*SECONDS))
    def follow(self, kind: str, source: str, seconds: float) -> None:
        self.walk.follow(kind, source, seconds)

    @rule()
    def ask(self) -> None:
        self.walk.ask()

    @precondition(lambda self: hasattr(self, "walk"))
    @invariant()
    def checks_hold(self) -> None:
        self.walk.check()


def test_hypothesis_walk_through_every_command(tiny):
    """Short sequences of every move, shrunk to the shortest failing one if a check breaks."""
    WalkMachine.model = tiny
    WalkMachine.runs = []
    run = WalkMachine.TestCase
    run.settings = settings(
        max_examples=8,
        stateful_step_count=40,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
        derandomize=True,
    )
    run().runTest()
    assert sum(r["commands"] for r in WalkMachine.runs) >= 100


def test_seeded_walk_across_slides(tiny):
    """Long stretches of music between the moves: the walk crosses many window slides."""
    r = seeded_walk(tiny, 120, seed=7)
    assert r["slides"] >= 10, r


def test_seeded_walk_on_the_beat_across_slides(tiny):
    """The same walk with a beat clock: changes held for their beat (the session's quantize, and
    changes' own) interleave with slides, prompts, continuations and transport."""
    r = seeded_walk(tiny, 120, seed=11, on_the_beat=True)
    assert r["slides"] >= 10 and r["held"] >= 20, r


def test_seeded_walk_of_a_melody_checkpoint_across_slides():
    """The same walk on `tiny-melody`: melody and prompt changes re-prefill its window, with every
    other move in between (prompts, blends - refused -, continuations, transport)."""
    r = seeded_walk(MusicGen.load("tiny-melody", progress=None), 80, seed=3)
    assert r["slides"] >= 5, r


def test_seeded_walk_of_a_style_checkpoint_across_slides():
    """The same walk on `tiny-style`: style and prompt changes re-prefill its window, double
    guidance turns on and off, with every other move in between."""
    r = seeded_walk(MusicGen.load("tiny-style", progress=None), 80, seed=5)
    assert r["slides"] >= 5, r


@pytest.mark.skipif(not os.environ.get("MUSICGEN_LIVE_WALK"), reason="the long profile: make walk")
@pytest.mark.timeout(6 * 3600)
def test_long_seeded_walk(tiny):
    commands = int(os.environ["MUSICGEN_LIVE_WALK"])
    seed = int(os.environ.get("MUSICGEN_LIVE_WALK_SEED", "1"))
    name = os.environ.get("MUSICGEN_LIVE_WALK_MODEL", "tiny")  # tiny-melody / tiny-style: those checkpoints
    beat = bool(os.environ.get("MUSICGEN_LIVE_WALK_BEAT"))  # with a beat clock: changes held for their beat
    kv = os.environ.get("MUSICGEN_LIVE_WALK_KV") or "float32"  # the KV cache's storage ([model] kv)
    codec = os.environ.get("MUSICGEN_LIVE_WALK_CODEC") or "float32"  # the streaming decoder ([model] codec)
    precision = os.environ.get("MUSICGEN_LIVE_WALK_PRECISION") or "float32"  # int8 + kv float16: the compiled step
    default = name == "tiny" and (kv, codec, precision) == ("float32", "float32", "float32")
    model = tiny if default else MusicGen.load(name, progress=None, kv=kv, codec=codec, precision=precision)
    t0 = time.perf_counter()
    r = seeded_walk(model, commands, seed, beat)
    minutes = (time.perf_counter() - t0) / 60
    print(
        f"\nwalk ({name}, {precision}, kv {kv}, codec {codec}, seed {seed}{', on the beat' if beat else ''}): "
        f"{r['commands']} commands "
        f"({r['applied']} applied, {r['refused']} refused, {r['held']} held), "
        f"{r['steps']} steps, {r['slides']} slides, {minutes:.1f} min"
    )
    assert r["commands"] >= commands and r["slides"] >= 50
