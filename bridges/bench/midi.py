"""`musicgen-live bench-midi`: a knob on a MIDI controller -> the change heard, through JACK MIDI.

A controller port of another JACK client sends CC changes at random moments; the bridge maps them
onto `cfg`; latency runs from the controller's send to the moment the output reads the first
sample generated under the change (the session's own probes), same clock, same process.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Any

from musicgen_live.bridges.config import MidiCC, MidiConfig
from musicgen_live.bridges.midi import MidiBridge
from musicgen_live.bridges.protocol import Vocabulary
from musicgen_live.engine.errors import SetupError
from musicgen_live.engine.model import MusicGen
from musicgen_live.engine.stats import percentile
from musicgen_live.streamer import commands as c
from musicgen_live.streamer.config import StreamConfig
from musicgen_live.streamer.outputs import make_output
from musicgen_live.streamer.session import Session


@dataclass
class MidiBench:
    sent: int
    latency_ms: list[float]  # controller send -> audible
    bridge_ms: list[float]  # controller send -> the session has the command (MIDI transport + mapping)
    underruns: int


def run_midi_bench(model: MusicGen, changes: int, seed: int = 0) -> MidiBench:
    import mido
    import rtmidi

    try:
        controller = rtmidi.MidiOut(rtapi=rtmidi.API_UNIX_JACK, name="bench controller")
    except Exception as e:
        raise SetupError(f"bench-midi runs on JACK MIDI: start a JACK server, e.g. jackd -d dummy ({e})") from None
    controller.open_virtual_port("bench-knob")
    session = Session(model, make_output("null", 2, 0.2), StreamConfig(buffer_ms=200))
    bridge = MidiBridge(session, Vocabulary({}), MidiConfig(port="bench-knob", api="jack",
                        cc=[MidiCC(cc=74, control="cfg", lo=1.0, hi=8.0)]), lambda _m: None)  # fmt: skip
    tickets: list[c.Ticket] = []  # the knob's commands as applied (their `audible` is filled in later)

    def applied(kind: str, data: dict[str, Any]) -> None:
        if kind == "applied" and data["ticket"].source.startswith("midi"):
            tickets.append(data["ticket"])

    session.listeners.append(applied)
    bridge.start()
    session.start()
    rng = random.Random(seed)
    sends: list[float] = []
    try:
        deadline = time.monotonic() + 10
        while session.output.ring.read < session.output.rate and time.monotonic() < deadline:
            time.sleep(0.05)
        for i in range(changes):
            time.sleep(rng.uniform(0.15, 0.4))
            before = len(tickets)
            sends.append(time.perf_counter())
            controller.send_message(mido.Message("control_change", control=74, value=127 * (i % 2)).bytes())
            wait_until = time.monotonic() + 2
            while len(tickets) == before and time.monotonic() < wait_until:
                time.sleep(0.001)
            if len(tickets) == before:
                sends.pop()  # lost (a port still connecting): not a latency
        time.sleep(0.6)
    finally:
        bridge.close()
        session.close()
        controller.close_port()
    latency = [1000 * (t.audible - s) for t, s in zip(tickets, sends) if t.audible is not None]
    bridge_ms = [1000 * (t.accepted - s) for t, s in zip(tickets, sends)]
    return MidiBench(len(sends), latency, bridge_ms, session.output.underruns)


def format_midi_bench(r: MidiBench) -> str:
    lat, via = sorted(r.latency_ms), sorted(r.bridge_ms)
    return "\n".join(
        [
            f"{r.sent} CC changes through JACK MIDI onto cfg (null output, 200 ms buffer)",
            f"  knob -> heard: p50 {percentile(lat, 0.5) or 0:.1f} ms, p99 {percentile(lat, 0.99) or 0:.1f} ms, "
            f"max {max(lat, default=0):.1f} ms ({len(lat)} heard)",
            f"  knob -> session has it: p50 {percentile(via, 0.5) or 0:.2f} ms, max {max(via, default=0):.2f} ms",
            f"  underruns {r.underruns}",
        ]
    )
