"""`musicgen-live bench-cluster`: the cluster against plain `serve`, measured from the client's side.

- command -> answered and command -> its audio at the client: a client changes cfg and times the
  `session.updated` answer and the arrival of the first audio generated under the change (the
  frame the answer names), through `serve`'s WebSocket and through the cluster's ingress, in one run;
- sessions per replica: N clients on the replicas, each client's audio seconds received per second
  of wall time (1.0 = real time) over a stage, N growing until the slowest falls below real time;
- recovery: a replica holding sessions is killed (SIGKILL); how long its clients heard nothing and
  when the ingress said the session was restored.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from musicgen_live.bridges.cluster.spec import ClusterSpec
from musicgen_live.engine.stats import median, percentile


@dataclass
class Latencies:
    answered_ms: list[float] = field(default_factory=list)
    heard_ms: list[float] = field(default_factory=list)


@dataclass
class ClusterBench:
    model: str
    serve: Latencies
    cluster: Latencies
    load: list[tuple[int, int, float, float]]  # (clients, replicas, slowest, median) audio s per wall s
    recoveries: list[tuple[float, float]]  # (longest silence at a client, restored after) seconds


def replica_pids(deployment: str = "Replica") -> list[int]:
    """The processes of this machine's replicas of `deployment` (Ray names them in their command line)."""
    name = f"ServeReplica:musicgen-live:{deployment}".encode()
    pids = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if name in f.read():
                    pids.append(int(entry))
        except (OSError, ValueError):
            continue
    return pids


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def change_latencies(url: str, n: int) -> Latencies:
    """n cfg changes: to the answer, and to the first audio generated under the change (the sample
    the answer names) arriving at this client."""
    from websockets.asyncio.client import connect

    out = Latencies()
    async with connect(url, compression=None, open_timeout=60, max_queue=None) as ws:
        await ws.recv()  # session.created
        await ws.send(json.dumps({"type": "audio.subscribe", "codec": "s16"}))
        await asyncio.sleep(2.0)
        while not isinstance(msg := await asyncio.wait_for(ws.recv(), 30), bytes):
            pass
        (rate_seen,) = struct.unpack_from("<I", msg, 8)
        received = 0  # samples per channel received so far (the next frame's first sample)
        for i in range(n):
            t0 = time.perf_counter()
            await ws.send(json.dumps({"type": "session.update", "cfg": 3.0 + (i % 2), "event_id": i}))
            answered = heard = target = None
            while heard is None:
                msg = await asyncio.wait_for(ws.recv(), 30)
                now = time.perf_counter()
                if isinstance(msg, bytes):
                    (rate,), (first, count) = struct.unpack_from("<I", msg, 8), struct.unpack_from("<QI", msg, 12)
                    received = first + count
                    rate_seen = rate
                    if target is not None and received > target:
                        heard = now
                elif (m := json.loads(msg)).get("event_id") == i:
                    answered = now
                    target = int(m["seconds"] * rate_seen)
                    if received > target:
                        heard = now
            assert answered is not None
            out.answered_ms.append(1000 * (answered - t0))
            out.heard_ms.append(1000 * (heard - t0))
            await asyncio.sleep(0.3)
    return out


async def _listen(url: str, seconds: float, rates: list[float], start: asyncio.Event) -> None:
    """Audio seconds received per wall second, from `start` for `seconds`."""
    from websockets.asyncio.client import connect

    async with connect(url, compression=None, open_timeout=120, max_queue=None) as ws:
        await ws.recv()  # session.created
        await ws.send(json.dumps({"type": "audio.subscribe", "codec": "s16"}))
        while not start.is_set():  # what arrives before the stage is read and not counted
            try:
                await asyncio.wait_for(ws.recv(), 0.1)
            except TimeoutError:
                pass
        audio_s, t0 = 0.0, time.perf_counter()
        while (now := time.perf_counter()) - t0 < seconds:
            try:
                msg = await asyncio.wait_for(ws.recv(), seconds - (now - t0))
            except TimeoutError:
                break
            if isinstance(msg, bytes):
                (rate,), (n,) = struct.unpack_from("<I", msg, 8), struct.unpack_from("<I", msg, 20)
                audio_s += n / rate
        rates.append(audio_s / (time.perf_counter() - t0))


async def _load_stage(url: str, clients: int, seconds: float) -> list[float]:
    rates: list[float] = []
    start = asyncio.Event()
    tasks = [asyncio.create_task(_listen(url, seconds, rates, start)) for _ in range(clients)]
    await asyncio.sleep(6.0)  # every session opened and past its first steps
    start.set()
    await asyncio.gather(*tasks)
    return rates


async def _recover(url: str, clients: int, say: Callable[[str], None]) -> list[tuple[float, float]]:
    """`clients` listeners; one replica killed once they play; each affected client's silence."""
    from websockets.asyncio.client import connect

    arrivals: dict[int, list[float]] = {i: [] for i in range(clients)}
    restored: dict[int, float] = {}
    stop = asyncio.Event()

    async def one(i: int) -> None:
        async with connect(url, compression=None, open_timeout=120, max_queue=None) as ws:
            await ws.recv()
            await ws.send(json.dumps({"type": "audio.subscribe", "codec": "s16"}))
            while not stop.is_set():
                try:
                    msg = await asyncio.wait_for(ws.recv(), 1.0)
                except TimeoutError:
                    continue
                if isinstance(msg, bytes):
                    arrivals[i].append(time.perf_counter())
                elif "restored_after_s" in (m := json.loads(msg)):
                    restored[i] = m["restored_after_s"]

    tasks = [asyncio.create_task(one(i)) for i in range(clients)]
    await asyncio.sleep(8.0)
    pids = replica_pids()
    killed = time.perf_counter()
    os.kill(pids[0], signal.SIGKILL)
    say(f"killed replica process {pids[0]}")
    await asyncio.sleep(25.0)
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    out = []
    for i, times in arrivals.items():
        gaps = [b - a for a, b in zip(times, times[1:]) if b > killed]
        if i in restored:
            out.append((max(gaps, default=0.0), restored[i]))
    return out


def run_cluster_bench(
    spec: ClusterSpec, changes: int, most_clients: int, stage_s: float, kills: int, say: Callable[[str], None]
) -> ClusterBench:
    import ray
    from musicgen_live.bridges.cluster.app import start_cluster
    from musicgen_live.bridges.cluster.spec import NAMESPACE

    serve_lat = _serve_latencies(spec, changes, say)
    ray.init(address="local", namespace=NAMESPACE, include_dashboard=False, log_to_driver=False)
    spec = replace(spec, cluster=replace(spec.cluster, port=_port()))
    cluster = start_cluster(spec, say)
    url = cluster.url.replace("http", "ws")
    try:
        cluster_lat = asyncio.run(change_latencies(url, changes))
        say(f"through the ingress: {len(cluster_lat.heard_ms)} changes")
        load = []
        replicas = spec.cluster.replicas
        clients = replicas
        while clients <= most_clients:
            rates = sorted(asyncio.run(_load_stage(url, clients, stage_s)))
            load.append((clients, replicas, rates[0], median(rates)))
            say(f"{clients} clients on {replicas} replica(s): slowest {rates[0]:.2f}x real time")
            if rates[0] < 0.98:
                break
            clients += replicas
        recoveries = []
        for _ in range(kills):
            recoveries += asyncio.run(_recover(url, 2 * replicas, say))
            time.sleep(15.0)  # the replacement replica comes up
    finally:
        cluster.close()
        from ray import serve

        serve.shutdown()
        ray.shutdown()
    return ClusterBench(spec.model, serve_lat, cluster_lat, load, recoveries)


def _serve_latencies(spec: ClusterSpec, changes: int, say: Callable[[str], None]) -> Latencies:
    """The same changes through plain `serve`'s WebSocket, in this process."""
    from musicgen_live.bridges.config import OscConfig
    from musicgen_live.bridges.server import serve_in_thread
    from musicgen_live.engine.model import MusicGen, model_summary
    from musicgen_live.streamer.outputs import make_output
    from musicgen_live.streamer.session import Session

    model = MusicGen.load(spec.model, device=spec.device, **spec.kernels)
    ws_cfg = replace(spec.websocket, port=_port())
    session = Session(model, make_output("null", 2, spec.stream.buffer_ms / 1000), spec.stream, spec.sampling)
    server = serve_in_thread(session, replace(OscConfig(), enabled=False), ws_cfg, model_summary(model))
    try:
        lat = asyncio.run(change_latencies(f"ws://127.0.0.1:{ws_cfg.port}/", changes))
    finally:
        server.close()
    say(f"through serve: {len(lat.heard_ms)} changes")
    return lat


def format_cluster_bench(r: ClusterBench) -> str:
    def p(v: list[float], q: float) -> str:
        x = percentile(sorted(v), q)
        return "-" if x is None else f"{x:.0f}"

    lines = [f"model {r.model}"]
    for name, lat in (("serve", r.serve), ("cluster", r.cluster)):
        lines.append(
            f"  {name:8s} change -> answered p50 {p(lat.answered_ms, 0.5)} ms p99 {p(lat.answered_ms, 0.99)} ms; "
            f"-> its first audio at the client p50 {p(lat.heard_ms, 0.5)} ms p99 {p(lat.heard_ms, 0.99)} ms "
            f"({len(lat.heard_ms)} changes)"
        )
    for clients, replicas, slowest, middle in r.load:
        lines.append(
            f"  {clients} clients on {replicas} replica(s) ({clients / replicas:g} per replica): "
            f"slowest {slowest:.2f}x real time, median {middle:.2f}x"
        )
    for gap, after in r.recoveries:
        lines.append(f"  replica lost: client silent {gap:.1f} s, session restored after {after:.1f} s")
    return "\n".join(lines)
