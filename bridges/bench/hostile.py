"""`musicgen-live bench-hostile`: what floods of bad input cost the music, and memory over a long soak.

Runs a full `serve` stack in this process (null output) and, for `seconds` each, a quiet baseline
and then floods from another process: malformed OSC datagrams, OSC `/subscribe` from one peer, OSC
`/ctrl` nested deep, bad WebSocket messages, and WebSocket uploads from several clients. For each
it reports the music's pace (seconds of music per second of wall time: 1.0 is real time) and the
underruns, against the baseline. `--soak-minutes` then plays on with a change every second and a
continuation every 20 s, sampling the process' resident memory, and fits a straight line to it.
"""

from __future__ import annotations

import json
import multiprocessing
import random
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from multiprocessing.sharedctypes import Synchronized
from multiprocessing.synchronize import Event

import numpy as np
from musicgen_live.bridges.config import OscConfig, WebSocketConfig
from musicgen_live.bridges.osc import encode
from musicgen_live.bridges.server import serve_in_thread
from musicgen_live.engine.model import MusicGen, model_summary
from musicgen_live.streamer import commands as c
from musicgen_live.streamer.config import StreamConfig
from musicgen_live.streamer.outputs import make_output
from musicgen_live.streamer.session import Session

FLOODS = ["quiet", "osc malformed", "osc subscribe", "osc nested ctrl", "ws bad messages", "ws uploads"]


@dataclass
class Phase:
    name: str
    pace: float  # seconds of music per wall second
    underruns: int
    sent: int  # datagrams / messages sent


@dataclass
class HostileBench:
    phases: list[Phase] = field(default_factory=list)
    soak_minutes: float = 0.0
    rss_mb: list[tuple[float, float]] = field(default_factory=list)  # (minutes, MB)
    rss_slope_mb_per_min: float | None = None
    rss_late_slope_mb_per_min: float | None = None  # over the second half only (past the warm-up)


def run_hostile_bench(
    model: MusicGen, stream: StreamConfig, seconds: float, soak_minutes: float, say: Callable[[str], None]
) -> HostileBench:
    osc_cfg = replace(OscConfig(), port=_port(socket.SOCK_DGRAM))
    ws_cfg = replace(WebSocketConfig(), port=_port(socket.SOCK_STREAM))
    session = Session(model, make_output("null", 2, stream.buffer_ms / 1000), stream)
    server = serve_in_thread(session, osc_cfg, ws_cfg, model_summary(model))
    result = HostileBench()
    try:
        time.sleep(2.0)  # past the start
        for name in FLOODS:
            result.phases.append(_phase(session, name, seconds, osc_cfg.port, ws_cfg.port))
            say(f"{name}: pace {result.phases[-1].pace:.3f}, underruns {result.phases[-1].underruns}")
        if soak_minutes > 0:
            result.soak_minutes = soak_minutes
            result.rss_mb = _soak(session, soak_minutes, say)
            minutes, mb = zip(*result.rss_mb)
            result.rss_slope_mb_per_min = float(np.polyfit(minutes, mb, 1)[0])
            late = [(m, r) for m, r in result.rss_mb if m >= soak_minutes / 2]
            if len(late) >= 2:
                result.rss_late_slope_mb_per_min = float(np.polyfit([m for m, _ in late], [r for _, r in late], 1)[0])
    finally:
        server.close()
    return result


def _phase(session: Session, name: str, seconds: float, osc_port: int, ws_port: int) -> Phase:
    """One flood from another process (as an attacker on the network would be: it does not share
    the server's interpreter lock), timed against the music."""
    ctx = multiprocessing.get_context("spawn")
    done, sent = ctx.Event(), ctx.Value("q", 0)
    worker = ctx.Process(target=_flood_process, args=(name, osc_port, ws_port, done, sent), daemon=True)
    worker.start()
    time.sleep(1.0)  # the process is up (it imports this module) before the clock starts
    before, u0, t0 = session.snapshot()["seconds"], session.output.underruns, time.perf_counter()
    time.sleep(seconds)
    snap = session.snapshot()
    elapsed = time.perf_counter() - t0
    done.set()
    worker.join(timeout=30)
    if worker.is_alive():
        worker.kill()
    return Phase(name, (snap["seconds"] - before) / elapsed, snap["underruns"] - u0, int(sent.value))


def _flood_process(name: str, osc_port: int, ws_port: int, done: Event, sent: Synchronized) -> None:
    counter = [0]
    stop = threading.Event()
    worker = threading.Thread(target=_FLOODS[name], args=(osc_port, ws_port, stop, counter), daemon=True)
    worker.start()
    done.wait()
    stop.set()
    worker.join(timeout=10)
    sent.value = counter[0]


def _quiet(_osc: int, _ws: int, done: threading.Event, _sent: list[int]) -> None:
    done.wait()


def _osc_malformed(osc: int, _ws: int, done: threading.Event, sent: list[int]) -> None:
    rng = random.Random(1)
    good = encode("/musicgen/cfg", (3.0,))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        while not done.is_set():
            data = (
                bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 64)))
                if rng.random() < 0.5
                else good[: rng.randint(0, len(good))]
            )
            sock.sendto(data, ("127.0.0.1", osc))
            sent[0] += 1
            if sent[0] % 200 == 0:
                time.sleep(0.001)  # as fast as a script on this machine can send without losing the socket


def _osc_subscribe(osc: int, _ws: int, done: threading.Event, sent: list[int]) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        while not done.is_set():
            sock.sendto(encode("/musicgen/subscribe", (20000 + sent[0] % 2000,)), ("127.0.0.1", osc))
            sent[0] += 1
            time.sleep(0.0005)


def _osc_nested(osc: int, _ws: int, done: threading.Event, sent: list[int]) -> None:
    deep = encode("/musicgen/ctrl", tuple(["ctrl"] * 2000 + ["cfg", 3.0]))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        while not done.is_set():
            sock.sendto(deep, ("127.0.0.1", osc))
            sent[0] += 1
            time.sleep(0.001)


def _ws_bad(_osc: int, ws: int, done: threading.Event, sent: list[int]) -> None:
    from websockets.sync.client import connect

    rng = random.Random(2)
    bad = [
        "[" * 5000 + "]" * 5000,
        "not json",
        '{"type": "session.update", "cfg": ' + "9" * 400 + "}",
        '{"type": "dance"}',
        '{"type": "session.update", "cfg": "loud"}',
        '{"type": ["x"]}',
    ]
    with connect(f"ws://127.0.0.1:{ws}/", max_size=None) as conn:
        while not done.is_set():
            conn.send(rng.choice(bad))
            sent[0] += 1
            try:
                conn.recv(timeout=1)  # over its budget a client is answered once a second, not each time
            except TimeoutError:
                pass


def _ws_uploads(_osc: int, ws: int, done: threading.Event, sent: list[int]) -> None:
    from websockets.sync.client import connect

    chunk = np.zeros(48000, "<f4").tobytes()  # 1 s of 48 kHz mono a frame

    def client() -> None:
        with connect(f"ws://127.0.0.1:{ws}/", max_size=None) as conn:
            conn.recv(timeout=10)
            while not done.is_set():
                conn.send(json.dumps({"type": "input_audio.begin", "rate": 48000, "channels": 1}))
                conn.recv(timeout=10)
                for _ in range(40):  # past the 30 s a client may hold: the upload is discarded
                    conn.send(chunk)
                    sent[0] += 1
                    if done.is_set():
                        break

    threads = [threading.Thread(target=client, daemon=True) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)


_FLOODS = {
    "quiet": _quiet,
    "osc malformed": _osc_malformed,
    "osc subscribe": _osc_subscribe,
    "osc nested ctrl": _osc_nested,
    "ws bad messages": _ws_bad,
    "ws uploads": _ws_uploads,
}


def _soak(session: Session, minutes: float, say: Callable[[str], None]) -> list[tuple[float, float]]:
    samples, t0, n = [], time.perf_counter(), 0
    while (elapsed := (time.perf_counter() - t0) / 60) < minutes:
        n += 1
        if n % 20 == 0:
            session.submit(c.ContinueHistory(8.0))
        elif n % 2:
            session.submit(c.SetPrompt(f"soak prompt {n % 40}"))  # new prompts for a while, then cached ones
        else:
            session.submit(c.Set("cfg", 2.0 + (n % 7)))
        if n % 10 == 0:
            samples.append((elapsed, _rss_mb()))
            if n % 300 == 0:
                say(
                    f"soak {elapsed:5.1f} min: rss {samples[-1][1]:.0f} MB, music {session.snapshot()['seconds']:.0f} s"
                )
        time.sleep(1.0)
    return samples


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def format_hostile_bench(r: HostileBench) -> str:
    quiet = r.phases[0].pace if r.phases else 1.0
    lines = ["flood                pace (music s / wall s)   against quiet   underruns   sent"]
    for p in r.phases:
        lines.append(f"{p.name:20s} {p.pace:10.3f} {p.pace / quiet:20.3f} {p.underruns:11d} {p.sent:8d}")
    if r.rss_mb:
        first, last = r.rss_mb[0], r.rss_mb[-1]
        lines.append(
            f"soak {r.soak_minutes:.0f} min: rss {first[1]:.0f} -> {last[1]:.0f} MB, straight-line fit "
            f"{r.rss_slope_mb_per_min:+.3f} MB/min over {len(r.rss_mb)} samples"
            + (
                f"; second half alone {r.rss_late_slope_mb_per_min:+.3f} MB/min"
                if r.rss_late_slope_mb_per_min is not None
                else ""
            )
        )
        step = max(1, len(r.rss_mb) // 6)
        lines.append("  rss: " + ", ".join(f"{m:.0f} min {mb:.0f} MB" for m, mb in r.rss_mb[::step]))
    return "\n".join(lines)
