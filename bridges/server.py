"""`serve`: the session(s) plus every bridge, in one asyncio loop on the main thread.

One session runs its own generation thread; several share one engine through a `SessionGroup`
(one thread, one batched forward). Session i (from 0) gets its own OSC and WebSocket ports, the
configured ones + i, so each performer has a full, independent control surface and audio stream.
OSC and WebSocket live in the loop; stdin lines (the first session's console, the same vocabulary)
are read by a small thread.
Any of them may stop the server (`quit`, --seconds, Ctrl-C).
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from musicgen_live.streamer.group import SessionGroup
from musicgen_live.streamer.session import Session

from .config import BridgesConfig, LinkConfig, MidiConfig, OscConfig, WebSocketConfig
from .console import Console
from .link import LinkClock, LinkUnavailable
from .midi import MidiBridge
from .protocol import Vocabulary


@dataclass
class Running:
    session: Session
    vocab: Vocabulary | None = None
    osc: Any = None
    ws: Any = None
    others: list[Running] = field(default_factory=list)  # sessions 2.. when serving several


async def serve_forever(
    session: Session | list[Session],
    osc_cfg: OscConfig,
    ws_cfg: WebSocketConfig,
    bridges_cfg: BridgesConfig,
    info: dict[str, Any],
    seconds: float | None,
    status_every: float,
    say: Callable[[str], None],
    stdin: Iterable[str] | None = None,
    started: Callable[[Running], None] | None = None,
    stop: threading.Event | None = None,
    group: SessionGroup | None = None,
    link: LinkConfig | None = None,
    midi: MidiConfig | None = None,
    midi_learn: bool = False,
) -> None:
    """Serve `session`, or a list of sessions stepped together by `group` (required for several);
    with `link` enabled, every session lands its changes on the Ableton Link beat; `midi` (a port
    set, or `midi_learn`) maps a controller onto the first session."""
    from .osc import start_osc
    from .ws import start_ws

    sessions = session if isinstance(session, list) else [session]
    if len(sessions) > 1 and group is None:
        raise ValueError("several sessions need a SessionGroup to run them")
    runs = [Running(s) for s in sessions]
    quit_event = asyncio.Event()
    loop = asyncio.get_running_loop()
    clock = _join_link(link, say) if link is not None and link.enabled else None
    if clock is not None:
        for s in sessions:
            s.attach_clock(clock, link.quantum if link else 0.0)
    servers = []
    midi_bridge: MidiBridge | None = None
    if midi is not None and (midi.port or midi.virtual or midi_learn):  # its MIDI client before the music
        midi_bridge = MidiBridge(sessions[0], Vocabulary(info), midi, say, learn=midi_learn)
        midi_bridge.start()
    if group is not None:
        group.start()
        for s in sessions:
            group.add(s)
    else:
        sessions[0].start()
    first_vocab: Vocabulary | None = None
    try:
        for i, (s, run) in enumerate(zip(sessions, runs)):
            label = f"session {i + 1}: " if len(sessions) > 1 else ""
            vocab = Vocabulary({**info, "session": i + 1} if len(sessions) > 1 else info, bridges_cfg.audio_dirs)
            run.vocab = vocab
            first_vocab = first_vocab or vocab
            if osc_cfg.enabled:
                cfg = replace(osc_cfg, port=osc_cfg.port + i)
                run.osc, transport = await start_osc(s, vocab, cfg)
                servers.append(transport)
                if run.osc.tcp_server is not None:
                    servers.append(run.osc.tcp_server)
                say(f"{label}OSC on udp{'+tcp' if cfg.tcp else ''}://{cfg.host}:{cfg.port}{cfg.prefix}/...")
            if ws_cfg.enabled:
                wcfg = replace(ws_cfg, port=ws_cfg.port + i)
                run.ws, server = await start_ws(s, vocab, wcfg)
                servers.append(server)
                say(
                    f"{label}WebSocket on ws://{wcfg.host}:{wcfg.port}/ ; browser client at http://{wcfg.host}:{wcfg.port}/"
                )
        runs[0].others = runs[1:]
        if stdin is not None and first_vocab is not None:
            say("stdin: one request a line, as over OSC - 'prompt dub techno', 'cfg 4', 'pause', 'help', 'quit'")
            console = Console(sessions[0], first_vocab, say)
            threading.Thread(
                target=_console_loop, args=(console, stdin, loop, quit_event), daemon=True, name="console"
            ).start()
        if started:
            started(runs[0])
        t0 = last = time.perf_counter()
        while not quit_event.is_set():
            try:
                await asyncio.wait_for(quit_event.wait(), timeout=0.2)
            except TimeoutError:
                pass
            now = time.perf_counter()
            if (seconds and now - t0 >= seconds) or (stop is not None and stop.is_set()):
                break
            if status_every and now - last >= status_every:
                last = now
                for i, s in enumerate(sessions):
                    snap = s.snapshot()
                    label = f"{i + 1}: " if len(sessions) > 1 else ""
                    say(
                        f"{label}[{snap['seconds']:7.1f} s] {transport_word(snap)} buffer {snap['buffer_ms']:.0f} ms  "
                        f"step p50 {snap['step_ms_p50'] or 0:.1f} ms  underruns {snap['underruns']}  "
                        f"slides {snap['slides']}{_link_line(snap['link'])}"
                    )
    finally:
        snaps = [s.snapshot() for s in sessions]
        for srv in servers:
            srv.close()
        if group is not None:
            group.close()
        else:
            sessions[0].close()
        if clock is not None:
            clock.close()
        if midi_bridge is not None:
            midi_bridge.close()
        for i, snap in enumerate(snaps):
            label = f"session {i + 1} " if len(sessions) > 1 else ""
            say(f"{label}stopped after {snap['seconds']:.1f} s of music, {snap['underruns']} underruns")


def transport_word(snap: dict[str, Any]) -> str:
    """The transport as a status line or `/status` says it: a frozen stream is never "playing"."""
    return f"STALLED in {snap['stalled']}" if snap.get("stalled") else snap["state"]


def _link_line(beat: dict[str, Any] | None) -> str:
    """The status line's Link part: tempo, the beat of the bar as a musician counts it (1.0 ..), peers."""
    if not beat:
        return ""
    counted = math.floor(beat["phase"] * 10) / 10 + 1  # 3.99 beats into the bar is "4.9", never "5.0"
    return f"  link {beat['tempo']:.1f} bpm, beat {counted:.1f}/{beat['quantum']:g}, {beat['peers']} peer(s)"


def _join_link(cfg: LinkConfig, say: Callable[[str], None]) -> LinkClock | None:
    """The Link clock, or None with a warning: without Link the music plays on, unquantized."""
    try:
        clock = LinkClock.join(cfg)
    except LinkUnavailable as e:
        say(f"warning: {e}; playing without Link (changes are not quantized)")
        return None
    say(f"Ableton Link on: {cfg.tempo:g} bpm until a peer leads, changes land every {cfg.quantum:g} beat(s)")
    return clock


@dataclass
class InThread:
    """A `serve_forever` stack on a thread of its own, for benchmarks that drive it from this
    process; `close()` stops it."""

    thread: threading.Thread
    stop: threading.Event
    running: Running

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=10)


def serve_in_thread(
    session: Session, osc_cfg: OscConfig, ws_cfg: WebSocketConfig, info: dict[str, Any], timeout_s: float = 60.0
) -> InThread:
    """Start `serve_forever(session, ...)` quietly (no stdin, no status lines) and wait until it listens."""
    ready, stop = threading.Event(), threading.Event()
    running: list[Running] = []

    def started(run: Running) -> None:
        running.append(run)
        ready.set()

    def serve() -> None:
        asyncio.run(
            serve_forever(
                session, osc_cfg, ws_cfg, BridgesConfig(), info, None, 0, lambda m: None, started=started, stop=stop
            )
        )

    thread = threading.Thread(target=serve, name="serve", daemon=True)
    thread.start()
    if not ready.wait(timeout_s):
        stop.set()
        raise RuntimeError(f"the server did not start within {timeout_s:.0f} s")
    return InThread(thread, stop, running[0])


def _console_loop(
    console: Console, lines: Iterable[str], loop: asyncio.AbstractEventLoop, quit_event: asyncio.Event
) -> None:
    if console.run(lines):
        loop.call_soon_threadsafe(quit_event.set)
    # else stdin closed (e.g. started in the background): keep serving
