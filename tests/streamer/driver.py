"""A session the test steps itself: no threads, an output the test drains, every event recorded.

`Driven.turn()` is one turn of the generation loop (`SessionGroup.turn`): commands are applied, and
a step is taken whenever the output wants audio - which, drained before every turn, it always does
while playing. The commands, the turns they arrive at and the sampling are deterministic, so a
failing random walk replays the same commands at the same offsets; a job's pieces (T5 blocks,
encoder frames) are sized from measured time (`streamer.jobs`), so a replay may split a job
differently and a prompt or continuation may land some turns earlier or later. The walk's checks
hold for any split.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from musicgen_live.bridges.protocol import state_replies
from musicgen_live.engine.config import SamplingConfig
from musicgen_live.engine.model import MusicGen
from musicgen_live.streamer import commands as c
from musicgen_live.streamer.config import StreamConfig
from musicgen_live.streamer.group import SessionGroup
from musicgen_live.streamer.outputs import RingOutput
from musicgen_live.streamer.quantize import BeatClock
from musicgen_live.streamer.session import Session

RATE = 48000


@dataclass
class Clients:
    """What an OSC subscriber and a WebSocket client believe the state is, from what they were sent."""

    osc: dict[str, Any] = field(default_factory=dict)
    ws: dict[str, Any] = field(default_factory=dict)

    def hear(self, changes: dict[str, Any]) -> None:
        self.ws.update(changes)
        for reply in state_replies(changes):  # as an OSC client would read the messages back
            if reply.name == "transport":
                self.osc["state"] = reply.args[0]
            elif reply.name == "prompt":
                self.osc["prompts"] = [{"text": reply.args[0], "weight": 1.0}]
            elif reply.name in ("prompt/weighted", "slots"):
                a = reply.args
                pairs = [{"text": a[i], "weight": a[i + 1]} for i in range(0, len(a), 2)]
                self.osc["prompts" if reply.name == "prompt/weighted" else "slots"] = pairs
            else:
                self.osc[reply.name] = reply.args[0]


class Driven:
    def __init__(
        self,
        model: MusicGen,
        stream: StreamConfig,
        sampling: SamplingConfig | None = None,
        clock: BeatClock | None = None,
        quantize: float = 0.0,
    ) -> None:
        """`clock`: a beat clock to land changes on (`quantize` beats apart); the output's clock then
        runs on virtual time - the samples it has played / 48 kHz - so a walk replays exactly."""
        self.output = RingOutput(RATE, 2, int(stream.buffer_ms / 1000 * RATE))
        self.session = Session(model, self.output, stream, sampling or SamplingConfig())
        self.virtual_time = clock is not None
        if clock is not None:
            self.session.attach_clock(clock, quantize)
        self.group = SessionGroup(model, max_sessions=1, batched=False)
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.answers: dict[int, int] = {}  # ticket id -> times answered
        self.audio_end = 0  # one past the last model sample the taps saw
        self.gaps = 0
        self._problems: list[str] = []
        self.session.listeners.append(self._on_event)
        self.session.audio_taps.append(self._on_audio)
        self.group.add(self.session)
        self.clients = Clients(osc=self.session.view(), ws=self.session.view())  # what session.created sends
        self.stalls = 0  # steps that did not sample the next frame (and did not hand over to new material)
        gen, step = self.session.gen, self.session.gen.step

        def watched_step() -> Any:
            before = gen.next_frame
            result = step()
            if gen.next_frame != before + 1 and gen.next_frame != gen.frames_done:  # a take-over restarts the count
                self.stalls += 1
            return result

        gen.step = watched_step  # type: ignore[method-assign]
        self._block = np.zeros((256, 2), np.float32)

    def _on_event(self, kind: str, data: dict[str, Any]) -> None:
        self.events.append((kind, data))
        if kind in ("applied", "refused"):
            ticket = data["ticket"]
            self.answers[ticket.id] = self.answers.get(ticket.id, 0) + 1
            if self.answers[ticket.id] > 1:
                self._problems.append(f"ticket {ticket.id} answered {self.answers[ticket.id]} times")
            if kind == "refused" and "internal error" in (ticket.error or ""):
                self._problems.append(f"refused: {ticket.error}")
        elif kind == "changed":
            self.clients.hear(data["changes"])
        elif kind in ("error", "warning"):
            self._problems.append(f"{kind}: {data['message']}")

    def _on_audio(self, first: int, frames: np.ndarray) -> None:
        if first != self.audio_end:
            self.gaps += 1
        self.audio_end = first + len(frames)

    def submit(self, command: c.Command) -> c.Ticket:
        return self.session.submit(command, source="walk")

    def drain(self) -> None:
        """Play everything buffered (what a sound card would have done meanwhile; a paused or not yet
        primed output plays nothing)."""
        ring = self.output.ring
        while ring.fill > 0:
            read = ring.read
            self.output.consume(self._block)
            if ring.read == read:
                break
        if self.virtual_time:  # the output's sample clock: played samples as seconds
            self.output.clock = self.output.sample_clock = (ring.read / RATE, ring.read)

    def turn(self) -> bool:
        """One turn of the loop; True when it took a step."""
        self.drain()
        steps = self.session.steps
        self.group.turn()
        return self.session.steps > steps

    def close(self) -> None:
        self.group.close()

    def problems(self) -> list[str]:
        """Internal errors, self-repairs, refusals that were bugs, answers given twice, stalls."""
        return self._problems + ([f"{self.stalls} steps did not advance the stream"] if self.stalls else [])
