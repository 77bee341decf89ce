"""MIDI controllers onto the shared vocabulary.

Protects: CC values map onto a control's range (linear, exponential, a custom lo..hi, per channel);
notes and program changes call up prompt scenes (with their fade); a mapping to an unknown control
and a scene with neither note nor program are said once and skipped; through a real MIDI path
(JACK MIDI on the dummy driver: a controller port of another client) a knob changes the session's
cfg and the change is heard, the music never stopping; a port that is missing at start, vanishes
or comes back is said and found again.
"""

from __future__ import annotations

import time

import mido
import pytest
from musicgen_live.bridges.config import MidiCC, MidiConfig, MidiScene
from musicgen_live.bridges.midi import MidiBridge, cc_value, learn_line
from musicgen_live.bridges.protocol import Vocabulary
from musicgen_live.streamer import commands as c
from musicgen_live.streamer.config import StreamConfig
from musicgen_live.streamer.outputs import make_output
from musicgen_live.streamer.session import Session

from tests.polling import until
from tests.streamer.conftest import jack  # noqa: F401  (the JACK dummy server fixture)


def test_cc_values_land_on_the_controls_range_and_curve():
    assert cc_value(MidiCC(cc=1, control="cfg"), 0) == 0.0
    assert cc_value(MidiCC(cc=1, control="cfg"), 127) == 20.0
    assert cc_value(MidiCC(cc=1, control="cfg", lo=1.0, hi=7.0), 127) == pytest.approx(7.0)
    half = cc_value(MidiCC(cc=1, control="temperature", lo=0.25, hi=4.0, curve="exp"), 64)
    assert half == pytest.approx(1.0, rel=0.03)  # the geometric middle of 0.25..4
    assert cc_value(MidiCC(cc=1, control="gain"), 200) == 4.0  # out-of-spec values are clamped


class Recorder:
    """Stands in for a session: what the bridge submitted."""

    def __init__(self) -> None:
        self.commands: list[c.Command] = []

    def submit(self, cmd: c.Command, source: str = "api") -> None:
        self.commands.append(cmd)


def bridge(cfg: MidiConfig) -> tuple[MidiBridge, Recorder, list[str]]:
    said: list[str] = []
    rec = Recorder()
    return MidiBridge(rec, Vocabulary({}), cfg, said.append), rec, said  # type: ignore[arg-type]


def test_messages_map_to_controls_and_scenes_through_the_vocabulary():
    cfg = MidiConfig(
        cc=[
            MidiCC(cc=21, control="cfg", lo=1.0, hi=9.0),
            MidiCC(cc=22, control="top_k", channel=2),  # only on channel 2
            MidiCC(cc=23, control="nonsense"),
        ],
        scenes=[
            MidiScene(prompt="dub techno", note=36),
            MidiScene(prompt="solo cello", program=5, fade=4.0),
            MidiScene(prompt="nowhere"),
        ],
    )
    b, rec, said = bridge(cfg)
    assert any("'nonsense', which is not a control" in s for s in said)
    assert any("neither a note nor a program" in s for s in said)
    for msg in (
        mido.Message("control_change", control=21, value=127),
        mido.Message("control_change", control=22, value=127, channel=0),  # channel 1: not mapped
        mido.Message("control_change", control=22, value=127, channel=1),  # channel 2
        mido.Message("control_change", control=23, value=5),  # the skipped mapping
        mido.Message("note_on", note=36, velocity=100),
        mido.Message("note_on", note=36, velocity=0),  # a note-off in disguise
        mido.Message("program_change", program=5),
        mido.Message("pitchwheel", pitch=100),
    ):
        b.on_message(msg)
    assert rec.commands == [
        c.Set("cfg", 9.0),
        c.Set("top_k", 2048),
        c.SetPrompt("dub techno"),
        c.SetPrompt("solo cello", fade_s=4.0),
    ]
    line = learn_line(mido.Message("control_change", control=21, value=3, channel=1))
    assert '{cc = 21, channel = 2, control = "cfg"}' in line


def test_a_knob_turned_fast_sends_one_value_a_frame_and_ends_on_the_last(tiny):
    """A fast knob (or a high-resolution controller) sends hundreds of CCs a second: one a frame
    reaches the session, and the value it ends on is the knob's last."""
    b, rec, said = bridge(MidiConfig(port="nowhere", cc=[MidiCC(cc=7, control="gain", lo=0.0, hi=1.27)]))
    b.start()  # no such port (nor ALSA here): said, and the knob flusher runs anyway
    try:
        t0 = time.monotonic()
        for i in range(300):  # 300 messages over ~0.3 s
            b.on_message(mido.Message("control_change", control=7, value=i % 128))
            time.sleep(0.001)
        last = mido.Message("control_change", control=7, value=99)
        b.on_message(last)
        elapsed = time.monotonic() - t0
        assert until(lambda: rec.commands and rec.commands[-1] == c.Set("gain", 0.99), 2)
    finally:
        b.close()
    assert len(rec.commands) <= elapsed / 0.02 + 3, len(rec.commands)  # about one a frame, not 301
    assert all(isinstance(cmd, c.Set) and cmd.name == "gain" for cmd in rec.commands)


def test_a_knob_on_a_jack_midi_port_changes_the_music_and_a_lost_port_is_found_again(tiny, jack):  # noqa: F811
    backend = mido.Backend("mido.backends.rtmidi/UNIX_JACK", load=True)
    cfg = MidiConfig(port="test-knobs", api="jack", cc=[MidiCC(cc=74, control="cfg", lo=1.0, hi=8.0)])
    session = Session(tiny, make_output("null", 2, 0.2), StreamConfig(buffer_ms=200))
    said: list[str] = []
    b = MidiBridge(session, Vocabulary({}), cfg, said.append)
    b.start()  # before the music, as serve does; the controller is not plugged in yet
    session.start()
    controller = None
    try:
        assert until(lambda: any("no jack input port matches 'test-knobs'" in s for s in said))
        controller = backend.open_output("test-knobs", virtual=True)  # plugged in
        assert until(lambda: b.port is not None, 5), said
        turn_up = mido.Message("control_change", control=74, value=127)
        assert until(lambda: session.controls["cfg"] == 8.0, every=0.05, between=lambda: controller.send(turn_up)), said
        read = session.output.ring.read
        controller.close()  # unplugged
        controller = None
        assert until(lambda: any("vanished" in s for s in said), 5), said
        controller = backend.open_output("test-knobs", virtual=True)  # and back
        assert until(lambda: b.port is not None and said[-1].startswith("midi: listening"), 5), said
        turn_down = mido.Message("control_change", control=74, value=0)
        assert until(lambda: session.controls["cfg"] == 1.0, every=0.05, between=lambda: controller.send(turn_down)), (
            said
        )
        assert session.output.ring.read > read and session.output.underruns == 0  # the music went on
    finally:
        b.close()
        if controller is not None:
            controller.close()
        session.close()
