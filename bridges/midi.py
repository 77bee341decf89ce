"""MIDI controllers: knobs and faders (CC) onto controls, notes and program changes onto prompt scenes.

python-rtmidi (ALSA or JACK) reads the input port on its own callback thread, mido parses; every
message becomes a request in the shared vocabulary (`bridges.protocol`), so a knob obeys the same
ranges and answers as OSC and WebSocket, and every client sees the change. A knob turned fast
sends hundreds of messages a second: its newest value goes out at most once a frame (20 ms), as the
browser's faders do, so a controller cannot flood the session or its clients. A port that is missing
or vanishes is reported once and looked for again every second; the music never waits for it.
`serve --midi-learn` prints every message with the config lines that would map it.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from typing import Any

import mido
from musicgen_live.streamer.controls import CONTROLS
from musicgen_live.streamer.session import Session

from .config import MidiCC, MidiConfig, MidiScene
from .protocol import ProtocolError, Vocabulary

Say = Callable[[str], None]
RESCAN_S = 1.0  # how often a missing port is looked for
KNOB_INTERVAL_S = 0.02  # a knob's value goes out at most once a frame


def cc_value(m: MidiCC, value: int) -> float:
    """A CC value 0..127 on `m`'s range and curve (`exp`: equal knob turns multiply the value,
    for ranges like temperature 0.1..3; `linear` otherwise)."""
    control = CONTROLS[m.control]
    lo = control.lo if m.lo is None else m.lo
    hi = control.hi if m.hi is None else m.hi
    x = min(max(value, 0), 127) / 127.0
    if m.curve == "exp" and lo > 0 and hi > 0:
        return lo * math.exp(x * math.log(hi / lo))
    return lo + x * (hi - lo)


class MidiBridge:
    """Maps messages from one input port onto `session`."""

    def __init__(self, session: Session, vocab: Vocabulary, cfg: MidiConfig, say: Say, learn: bool = False) -> None:
        self.session = session
        self.vocab = vocab
        self.cfg = cfg
        self.say = say
        self.learn = learn
        self.cc: dict[tuple[int, int], MidiCC] = {}
        self.notes: dict[tuple[int, int], MidiScene] = {}
        self.programs: dict[tuple[int, int], MidiScene] = {}
        for m in cfg.cc:
            if m.control not in CONTROLS:
                say(f"midi: CC {m.cc} maps to '{m.control}', which is not a control ({', '.join(CONTROLS)}): ignored")
                continue
            self.cc[(m.channel, m.cc)] = m
        for s in cfg.scenes:
            if s.note >= 0:
                self.notes[(s.channel, s.note)] = s
            elif s.program >= 0:
                self.programs[(s.channel, s.program)] = s
            else:
                say(f"midi: the scene '{s.prompt[:40]}' has neither a note nor a program: ignored")
        self.port: Any = None
        self.port_name: str | None = None
        self.messages = 0  # requests made (a fast knob's messages coalesce into one a frame)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._sent_at: dict[str, float] = {}  # control -> when its last value went out (monotonic s)
        self._pending: dict[str, list[object]] = {}  # control -> its newest value, waiting for the frame
        self._due = threading.Event()
        self._missing_said = False
        self._client: Any = None  # the one rtmidi client, kept for the run (port listings, the open port)
        self._threads: list[threading.Thread] = []

    # -- ports ------------------------------------------------------------------------------------
    # python-rtmidi directly (mido parses the bytes), through one rtmidi client kept for the whole
    # run: creating a client (JACK: ~65 ms, holding the interpreter lock) would stall the generation
    # thread, and mido creates one for every port listing. On the kept client a listing takes well
    # under a millisecond and opening or closing the port ~4 ms. `start` before the music starts.
    def start(self) -> None:
        """Open the port now if it is there; a watcher thread finds it later (or again) if not."""
        self._connect()
        self._threads = [
            threading.Thread(target=self._watch, name="midi-watch", daemon=True),
            threading.Thread(target=self._flush, name="midi-knobs", daemon=True),
        ]
        for t in self._threads:
            t.start()

    def close(self) -> None:
        self._stop.set()
        self._due.set()  # wake the flusher
        for t in self._threads:
            t.join(timeout=2)
        self._close_port()
        if self._client is not None:
            self._client.delete()
            self._client = None

    def _connect(self) -> None:
        import rtmidi

        api = rtmidi.API_UNIX_JACK if self.cfg.api == "jack" else rtmidi.API_LINUX_ALSA
        try:
            if self._client is None:
                self._client = rtmidi.MidiIn(rtapi=api, name="musicgen-live")
                self._client.ignore_types(sysex=True, timing=True, active_sense=True)
            if self.cfg.virtual:
                name = self.cfg.port or "musicgen-live"
                self._client.open_virtual_port(name)
                self._client.set_callback(self._raw)
                self.port, self.port_name = self._client, name
                self.say(f"midi: listening on a new {self.cfg.api} port '{name}' (connect a controller to it)")
                return
            names = self._client.get_ports()
            match = [i for i, n in enumerate(names) if self.cfg.port.lower() in n.lower()]
            if not match:
                if not self._missing_said:
                    found = ", ".join(f"'{n}'" for n in names) or "none"
                    want = f"'{self.cfg.port}'"
                    self.say(f"midi: no {self.cfg.api} input port matches {want} (found: {found}); looking for it")
                    self._missing_said = True
                return
            self._client.open_port(match[0], name="in")
            self._client.set_callback(self._raw)  # python-rtmidi drops it when a port closes
            self.port, self.port_name = self._client, names[match[0]]
            self.say(f"midi: listening to '{self.port_name}'")
            self._missing_said = False
        except Exception as e:  # rtmidi's errors (no ALSA sequencer, JACK not running ...): said, music goes on
            if not self._missing_said:
                self.say(f"midi: cannot open {self.cfg.api} MIDI ({type(e).__name__}: {e}); looking again every second")
                self._missing_said = True

    def _watch(self) -> None:
        while not self._stop.wait(RESCAN_S):
            if self.cfg.virtual and self.port is not None:
                continue
            if self.port is not None:
                try:
                    present = self.port_name in self._client.get_ports()
                except Exception:
                    present = False
                if not present:
                    self.say(f"midi: '{self.port_name}' vanished; looking for it again")
                    self._close_port()
                    self._missing_said = True
            if self.port is None:
                self._connect()

    def _close_port(self) -> None:
        port, self.port = self.port, None
        if port is not None:
            try:
                port.close_port()
            except Exception:  # a port whose device is gone may fail to close: it is gone anyway
                pass

    def _raw(self, event: tuple[list[int], float], _data: object = None) -> None:
        """rtmidi's callback thread: raw bytes -> a mido message."""
        try:
            msg = mido.Message.from_bytes(event[0])
        except (ValueError, TypeError):  # running status fragments, vendor messages: not ours
            return
        self.on_message(msg)

    # -- messages ---------------------------------------------------------------------------------
    def on_message(self, msg: Any) -> None:
        """rtmidi's callback thread: one message -> requests in the shared vocabulary."""
        channel = getattr(msg, "channel", 0) + 1
        if self.learn:
            self.say(learn_line(msg))
        request: tuple[str, list[object]] | None = None
        if msg.type == "control_change":
            m = self.cc.get((channel, msg.control)) or self.cc.get((0, msg.control))
            if m is not None:
                request = (m.control, [cc_value(m, msg.value)])
        elif msg.type == "note_on" and msg.velocity > 0:
            scene = self.notes.get((channel, msg.note)) or self.notes.get((0, msg.note))
            request = _scene_request(scene)
        elif msg.type == "program_change":
            scene = self.programs.get((channel, msg.program)) or self.programs.get((0, msg.program))
            request = _scene_request(scene)
        if request is None:
            return
        if msg.type == "control_change":  # a knob turned fast sends hundreds a second: one a frame is heard
            self._knob(*request)
        else:
            self._submit(*request)

    def _knob(self, control: str, args: list[object]) -> None:
        """Send a knob's value now if its last went out a frame (20 ms) ago; else keep the newest for
        the flusher, which sends it when that frame is over."""
        now = time.monotonic()
        with self._lock:
            if now - self._sent_at.get(control, -1.0) >= KNOB_INTERVAL_S and control not in self._pending:
                self._sent_at[control] = now
                send = True
            else:
                self._pending[control] = args
                self._due.set()
                send = False
        if send:
            self._submit(control, args)

    def _flush(self) -> None:
        while not self._stop.is_set():
            self._due.wait(0.5)
            time.sleep(KNOB_INTERVAL_S)  # this frame's newest values collect meanwhile
            with self._lock:
                due, self._pending = self._pending, {}
                self._due.clear()
                now = time.monotonic()
                for control in due:
                    self._sent_at[control] = now
            for control, args in due.items():
                self._submit(control, args)

    def _submit(self, name: str, args: list[object]) -> None:
        try:
            outcome = self.vocab.handle(name, args)
        except ProtocolError as e:
            self.say(f"midi: {e}")
            return
        self.messages += 1
        for cmd in outcome.commands:
            self.session.submit(cmd, source=f"midi {self.port_name}")


def _scene_request(scene: MidiScene | None) -> tuple[str, list[object]] | None:
    if scene is None:
        return None
    if scene.fade is None:
        return ("prompt", [scene.prompt])
    return ("prompt/fade", [scene.fade, scene.prompt])


def learn_line(msg: Any) -> str:
    """What `--midi-learn` prints for a message: it, and the entry of `[midi] cc` or `scenes` that
    would map it (as config.toml writes them)."""
    ch = getattr(msg, "channel", 0) + 1
    if msg.type == "control_change":
        return (
            f"midi learn: CC {msg.control} = {msg.value} on channel {ch}  ->  [midi] cc = [... "
            f'{{cc = {msg.control}, channel = {ch}, control = "cfg"}} ...]  (any control)'
        )
    if msg.type == "note_on":
        return (
            f"midi learn: note {msg.note} on channel {ch}  ->  [midi] scenes = [... "
            f'{{note = {msg.note}, channel = {ch}, prompt = "..."}} ...]'
        )
    if msg.type == "program_change":
        return (
            f"midi learn: program {msg.program} on channel {ch}  ->  [midi] scenes = [... "
            f'{{program = {msg.program}, channel = {ch}, prompt = "..."}} ...]'
        )
    return f"midi learn: {msg}"
