"""`serve`: the session plus every bridge, in one asyncio loop on the main thread.

The session runs its own generation thread; OSC and WebSocket live in the loop; stdin control
lines are read by a small thread. Any of them may stop the server (`quit`, --seconds, Ctrl-C).
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from streamer.session import Session

from .config import BridgesConfig, OscConfig, WebSocketConfig
from .control_line import ControlError, parse_line
from .protocol import Vocabulary


@dataclass
class Running:
    session: Session
    osc: Any = None
    ws: Any = None


async def serve_forever(
    session: Session,
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
) -> None:
    from .osc import start_osc
    from .ws import start_ws

    vocab = Vocabulary(session.snapshot, info, bridges_cfg.audio_dirs)
    running = Running(session)
    quit_event = asyncio.Event()
    loop = asyncio.get_running_loop()
    servers = []
    session.start()
    try:
        if osc_cfg.enabled:
            running.osc, transport = await start_osc(session, vocab, osc_cfg)
            servers.append(transport)
            if running.osc.tcp_server is not None:
                servers.append(running.osc.tcp_server)
            say(f"OSC on udp{'+tcp' if osc_cfg.tcp else ''}://{osc_cfg.host}:{osc_cfg.port}{osc_cfg.prefix}/...")
        if ws_cfg.enabled:
            running.ws, server = await start_ws(session, vocab, ws_cfg)
            servers.append(server)
            say(f"WebSocket on ws://{ws_cfg.host}:{ws_cfg.port}/ ; browser client at http://{ws_cfg.host}:{ws_cfg.port}/")
        if read_stdin:
            threading.Thread(target=_stdin_loop, args=(session, say, loop, quit_event), daemon=True).start()
        if started:
            started(running)
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
                snap = session.snapshot()
                say(f"[{snap['seconds']:7.1f} s] {snap['state']} buffer {snap['buffer_ms']:.0f} ms  "
                    f"step p50 {snap['step_ms_p50'] or 0:.1f} ms  underruns {snap['underruns']}  slides {snap['slides']}")
    finally:
        snap = session.snapshot()
        for s in servers:
            s.close()
        session.close()
        say(f"stopped after {snap['seconds']:.1f} s of music, {snap['underruns']} underruns")


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
