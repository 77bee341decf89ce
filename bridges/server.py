"""`serve`: the session(s) plus every bridge, in one asyncio loop on the main thread.

One session runs its own generation thread; several share one engine through a `SessionGroup`
(one thread, one batched forward). Session i (from 0) gets its own OSC and WebSocket ports, the
configured ones + i, so each performer has a full, independent control surface and audio stream.
OSC and WebSocket live in the loop; stdin control lines (first session) are read by a small thread.
Any of them may stop the server (`quit`, --seconds, Ctrl-C).
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable

from streamer.group import SessionGroup
from streamer.session import Session

from .config import BridgesConfig, OscConfig, WebSocketConfig
from .control_line import ControlError, parse_line
from .protocol import Vocabulary


@dataclass
class Running:
    session: Session
    osc: Any = None
    ws: Any = None
    others: list["Running"] = field(default_factory=list)  # sessions 2.. when serving several


async def serve_forever(
    session: Session | list[Session],
    osc_cfg: OscConfig,
    ws_cfg: WebSocketConfig,
    bridges_cfg: BridgesConfig,
    info: dict[str, Any],
    seconds: float | None,
    status_every: float,
    say: Callable[[str], None],
    read_stdin: bool = True,
    started: Callable[[Running], None] | None = None,
    stop: threading.Event | None = None,
    group: SessionGroup | None = None,
) -> None:
    """Serve `session`, or a list of sessions stepped together by `group` (required for several)."""
    from .osc import start_osc
    from .ws import start_ws

    sessions = session if isinstance(session, list) else [session]
    if len(sessions) > 1 and group is None:
        raise ValueError("several sessions need a SessionGroup to run them")
    runs = [Running(s) for s in sessions]
    quit_event = asyncio.Event()
    loop = asyncio.get_running_loop()
    servers = []
    if group is not None:
        group.start()
        for s in sessions:
            group.add(s)
    else:
        sessions[0].start()
    try:
        for i, (s, run) in enumerate(zip(sessions, runs)):
            label = f"session {i + 1}: " if len(sessions) > 1 else ""
            vocab = Vocabulary(s.snapshot, {**info, "session": i + 1} if len(sessions) > 1 else info,
                               bridges_cfg.audio_dirs)
            if osc_cfg.enabled:
                cfg = replace(osc_cfg, port=osc_cfg.port + i)
                run.osc, transport = await start_osc(s, vocab, cfg)
                servers.append(transport)
                if run.osc.tcp_server is not None:
                    servers.append(run.osc.tcp_server)
                say(f"{label}OSC on udp{'+tcp' if cfg.tcp else ''}://{cfg.host}:{cfg.port}{cfg.prefix}/...")
            if ws_cfg.enabled:
                cfg = replace(ws_cfg, port=ws_cfg.port + i)
                run.ws, server = await start_ws(s, vocab, cfg)
                servers.append(server)
                say(f"{label}WebSocket on ws://{cfg.host}:{cfg.port}/ ; browser client at http://{cfg.host}:{cfg.port}/")
        runs[0].others = runs[1:]
        if read_stdin:
            threading.Thread(target=_stdin_loop, args=(sessions[0], say, loop, quit_event), daemon=True).start()
        if started:
            started(runs[0])
        t0 = last = time.perf_counter()
        while not quit_event.is_set():
            try:
                await asyncio.wait_for(quit_event.wait(), timeout=0.2)
            except asyncio.TimeoutError:
                pass
            now = time.perf_counter()
            if (seconds and now - t0 >= seconds) or (stop is not None and stop.is_set()):
                break
            if status_every and now - last >= status_every:
                last = now
                for i, s in enumerate(sessions):
                    snap = s.snapshot()
                    label = f"{i + 1}: " if len(sessions) > 1 else ""
                    say(f"{label}[{snap['seconds']:7.1f} s] {snap['state']} buffer {snap['buffer_ms']:.0f} ms  "
                        f"step p50 {snap['step_ms_p50'] or 0:.1f} ms  underruns {snap['underruns']}  slides {snap['slides']}")
    finally:
        snaps = [s.snapshot() for s in sessions]
        for srv in servers:
            srv.close()
        if group is not None:
            group.close()
        else:
            sessions[0].close()
        for i, snap in enumerate(snaps):
            label = f"session {i + 1} " if len(sessions) > 1 else ""
            say(f"{label}stopped after {snap['seconds']:.1f} s of music, {snap['underruns']} underruns")


def _stdin_loop(session: Session, say: Callable[[str], None], loop: asyncio.AbstractEventLoop, quit_event: asyncio.Event) -> None:
    for line in sys.stdin:
        try:
            cmd = parse_line(line)
        except ControlError as e:
            say(f"error: {e}")
            continue
        if cmd is None:
            continue
        if cmd == "quit":
            break
        if cmd == "status":
            say(json.dumps(session.snapshot()))
            continue
        ticket = session.submit(cmd)
        ticket.wait(30)
        say(f"error: {ticket.error}" if ticket.error else f"ok: {type(cmd).__name__} at frame {ticket.frame}")
    else:
        return  # stdin closed (e.g. started in the background): keep serving
    loop.call_soon_threadsafe(quit_event.set)
