"""`musicgen-live bench-bridges`: command -> audible latency through OSC and WebSocket, and audio to
many WebSocket clients at once, against a full `serve` stack in this process.

Latency runs from the moment the client sends (same clock, same process) to the moment the output
callback reads the first sample generated under the command.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from musicgen_live.bridges.config import OscConfig, WebSocketConfig
from musicgen_live.bridges.osc import encode
from musicgen_live.bridges.server import serve_in_thread
from musicgen_live.engine.model import MusicGen, model_summary
from musicgen_live.engine.stats import median, percentile
from musicgen_live.streamer import commands as c
from musicgen_live.streamer.config import StreamConfig
from musicgen_live.streamer.outputs import make_output_or_null
from musicgen_live.streamer.session import Session


@dataclass
class BridgeBench:
    output: str
    osc_ms: list[float]
    ws_ms: list[float]
    clients: int
    client_chunks: list[int]
    seconds: float
    underruns: int


def _port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_bridge_bench(
    model: MusicGen,
    output: str,
    stream: StreamConfig,
    commands: int,
    clients: int,
    seconds: float,
    say: Callable[[str], None],
) -> BridgeBench:
    osc_cfg = replace(OscConfig(), port=_port(socket.SOCK_DGRAM))
    ws_cfg = replace(WebSocketConfig(), port=_port(socket.SOCK_STREAM), client_queue=256)
    out = make_output_or_null(output, 2, stream.buffer_ms / 1000, stream.blocksize, say)
    session = Session(model, out, stream)
    audible: dict[Any, float] = {}
    session.listeners.append(
        lambda kind, d: audible.__setitem__(d["ticket"].command, d["ticket"].audible) if kind == "audible" else None
    )
    server = serve_in_thread(session, osc_cfg, ws_cfg, model_summary(model), timeout_s=30)
    time.sleep(2.0)
    try:
        osc_ms = _osc_latencies(osc_cfg.port, commands, audible)
        say(f"OSC: {len(osc_ms)} commands")
        ws_ms = asyncio.run(_ws_latencies(ws_cfg.port, commands, audible))
        say(f"WebSocket: {len(ws_ms)} commands")
        u0 = session.output.underruns
        chunks = asyncio.run(_many_clients(ws_cfg.port, clients, seconds))
        underruns = session.output.underruns - u0
    finally:
        server.close()
    return BridgeBench(out.describe(), osc_ms, ws_ms, clients, chunks, seconds, underruns)


def _wait_audible(audible: dict[Any, float], cmd: Any, t_send: float, timeout: float = 5.0) -> float | None:
    end = time.perf_counter() + timeout
    while time.perf_counter() < end:
        if audible.get(cmd):
            return 1000 * (audible[cmd] - t_send)
        time.sleep(0.002)
    return None


def _osc_latencies(port: int, n: int, audible: dict[Any, float]) -> list[float]:
    out = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for i in range(n):
            value = 2.0 + 0.125 * i  # exact in float32, which OSC carries
            t = time.perf_counter()
            sock.sendto(encode("/musicgen/cfg", (value,)), ("127.0.0.1", port))
            ms = _wait_audible(audible, c.Set("cfg", value), t)
            if ms is not None:
                out.append(ms)
            time.sleep(0.3)
    return out


async def _ws_latencies(port: int, n: int, audible: dict[Any, float]) -> list[float]:
    from websockets.asyncio.client import connect

    out = []
    async with connect(f"ws://127.0.0.1:{port}/", compression=None) as ws:
        for i in range(n):
            value = round(6.0 + 0.01 * i + 0.5 * (i % 2), 3)
            t = time.perf_counter()
            await ws.send(json.dumps({"type": "session.update", "cfg": value}))
            ms = await asyncio.get_running_loop().run_in_executor(None, _wait_audible, audible, c.Set("cfg", value), t)
            if ms is not None:
                out.append(ms)
            await asyncio.sleep(0.3)
    return out


async def _many_clients(port: int, n: int, seconds: float) -> list[int]:
    from websockets.asyncio.client import connect

    async def one() -> int:
        got = 0
        async with connect(f"ws://127.0.0.1:{port}/", compression=None) as ws:
            await ws.send(json.dumps({"type": "audio.subscribe", "codec": "f32"}))
            end = time.perf_counter() + seconds
            while time.perf_counter() < end:
                try:
                    msg = await asyncio.wait_for(ws.recv(), 1.0)
                except TimeoutError:
                    continue
                got += isinstance(msg, bytes)
        return got

    return list(await asyncio.gather(*[one() for _ in range(n)]))


def format_bridge_bench(r: BridgeBench) -> str:
    def pct(v: list[float], q: float) -> str:
        p = percentile(sorted(v), q)
        return "-" if p is None else f"{p:.0f}"

    return "\n".join(
        [
            f"output {r.output}",
            f"  OSC -> audible:       p50 {pct(r.osc_ms, 0.5)} ms, p99 {pct(r.osc_ms, 0.99)} ms "
            f"({len(r.osc_ms)} commands)",
            f"  WebSocket -> audible: p50 {pct(r.ws_ms, 0.5)} ms, p99 {pct(r.ws_ms, 0.99)} ms "
            f"({len(r.ws_ms)} commands)",
            f"  {r.clients} WebSocket clients for {r.seconds:.0f} s: audio chunks each {r.client_chunks} "
            f"(median {median(r.client_chunks) if r.client_chunks else 0:.0f}), "
            f"device underruns {r.underruns}",
        ]
    )
