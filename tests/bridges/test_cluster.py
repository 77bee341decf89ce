"""`musicgen-live cluster` on a Ray Serve application started here: 2 CPU replicas of `tiny`.

Protects: clients of the ingress speak `serve`'s WebSocket protocol and get the same answers (the
shared table of bad input); each client is its own session and cannot reach another's; 4 clients
get contiguous audio for 20 s while the replica playing one of them is killed mid-stream - each
keeps receiving (within a few seconds on a quiet host, within a minute on a loaded one), with its
prompt and parameters unchanged.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest

ray = pytest.importorskip("ray")
from musicgen_live.bridges.bench.cluster import replica_pids  # noqa: E402
from musicgen_live.bridges.cluster.app import Cluster, start_cluster  # noqa: E402
from musicgen_live.bridges.cluster.spec import NAMESPACE, ClusterSpec  # noqa: E402
from musicgen_live.bridges.config import BridgesConfig, ClusterConfig, WebSocketConfig  # noqa: E402
from musicgen_live.engine.config import SamplingConfig  # noqa: E402
from musicgen_live.streamer.config import StreamConfig  # noqa: E402
from websockets.sync.client import ClientConnection, connect  # noqa: E402

from .test_vocabulary import BAD, ws_answer  # noqa: E402

pytestmark = pytest.mark.cluster
RATE = 32000  # tiny's sample rate


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    audio = tmp_path_factory.mktemp("audio")
    (audio / "silence.txt").write_text("not audio")
    spec = ClusterSpec(
        model="tiny",
        device="cpu",
        kernels={"exact": False, "precision": "float32", "guidance": "batched", "kv": "float32", "codec": "float32"},
        stream=StreamConfig(output="null", buffer_ms=200, window_s=8, context_s=3),
        sampling=SamplingConfig(),
        websocket=WebSocketConfig(),
        bridges=BridgesConfig(audio_dirs=[str(audio)]),
        cluster=ClusterConfig(replicas=2, sessions_per_replica=4, port=free_port(), save_every_s=0.5),
    )
    ray.init(address="local", num_cpus=2, namespace=NAMESPACE, include_dashboard=False, log_to_driver=False)
    try:
        running = start_cluster(spec, lambda _m: None)
        try:
            yield running
        finally:
            running.close()
    finally:
        from ray import serve

        serve.shutdown()
        ray.shutdown()


@contextmanager
def client(cluster: Cluster) -> Iterator[ClientConnection]:
    with connect(cluster.url.replace("http", "ws"), open_timeout=60) as ws:
        created = json.loads(ws.recv(timeout=60))
        assert created["type"] == "session.created", created
        yield ws


def test_the_browser_page_is_served_as_by_serve(cluster):
    page = urllib.request.urlopen(cluster.url, timeout=30).read().decode()
    assert "musicgen-live" in page
    assert urllib.request.urlopen(cluster.url + "client.js", timeout=30).status == 200


def test_the_browser_instrument_plays_through_the_ingress(cluster):
    """The page served by the ingress connects back to it (same origin), loads its session's state,
    sends a fader's change, and plays the audio."""
    from .browser import Browser

    page = Browser()
    try:
        page.open(cluster.url)
        page.wait_for("window.musicgenView && window.musicgenView.cfg === 3", timeout=60)
        page.eval(
            "(() => { const e = document.getElementById('cfg'); e.value = 6; e.dispatchEvent(new Event('change')); })()"
        )
        page.wait_for("window.musicgenView.cfg === 6")  # the server's state.changed, back on the page
        page.eval("document.getElementById('start').click()")  # Listen: the audio comes from then on
        page.wait_for("document.getElementById('status').textContent.match(/audio frames (\\d+)/)[1] > 25", timeout=60)
    finally:
        page.close()


def test_bad_input_through_the_ingress_gets_serve_s_sentences(cluster):
    with client(cluster) as ws:
        for request, sentence in BAD:
            answer = ws_answer(ws, request)
            assert answer["type"] == "error" and sentence in answer["message"], (request, answer)
        ws.send("not json")
        assert json.loads(ws.recv(timeout=20)) == {
            "type": "error",
            "message": "messages must be JSON objects",
            "event_id": None,
        }
        answer = ws_answer(ws, ["cfg", 6.5])  # and the session still plays and answers
        assert answer["type"] == "session.updated", answer


def test_a_client_cannot_reach_another_client_s_session(cluster):
    with client(cluster) as a, client(cluster) as b:
        assert ws_answer(a, ["cfg", 7.5])["type"] == "session.updated"
        assert ws_answer(b, ["cfg", 2.5])["type"] == "session.updated"
        a.send(json.dumps({"type": "state.get", "event_id": "s"}))
        b.send(json.dumps({"type": "state.get", "event_id": "s"}))
        states = [_answer(ws, "s")["state"] for ws in (a, b)]
        assert [s["cfg"] for s in states] == [7.5, 2.5]


@dataclass
class Listener:
    """One client: its own prompt and cfg, every audio frame's index and arrival time."""

    number: int
    url: str
    frames: list[tuple[float, int, int]] = field(default_factory=list)  # (arrival, first sample, samples)
    warnings: list[dict[str, Any]] = field(default_factory=list)
    state: dict[str, Any] = field(default_factory=dict)
    error: BaseException | None = None

    @property
    def seconds(self) -> float:
        return sum(n for _, _, n in self.frames) / RATE

    def run(self, seconds: float, stop: threading.Event) -> None:
        try:
            with connect(self.url, open_timeout=60) as ws:
                json.loads(ws.recv(timeout=60))  # session.created
                prompt, cfg = f"client {self.number}", 2.0 + self.number
                ws.send(json.dumps({"type": "session.update", "prompt": prompt, "cfg": cfg, "event_id": "u"}))
                ws.send(json.dumps({"type": "audio.subscribe", "codec": "s16"}))
                while self.seconds < seconds and not stop.is_set():
                    message = ws.recv(timeout=30)
                    if isinstance(message, bytes):
                        first, n = struct.unpack_from("<QI", message, 12)
                        self.frames.append((time.monotonic(), first, n))
                    elif (msg := json.loads(message))["type"] in ("warning", "error"):
                        self.warnings.append(msg)
                ws.send(json.dumps({"type": "state.get", "event_id": "s"}))
                self.state = _answer(ws, "s")["state"]
        except BaseException as e:  # the test reads it
            self.error = e


def test_four_clients_play_on_through_the_loss_of_a_replica(cluster):
    stop = threading.Event()
    listeners = [Listener(i, cluster.url.replace("http", "ws")) for i in range(4)]
    threads = [threading.Thread(target=li.run, args=(20.0, stop), daemon=True) for li in listeners]
    for t in threads:
        t.start()
    try:
        deadline = time.monotonic() + 120
        while min(li.seconds for li in listeners) < 6 and time.monotonic() < deadline:
            assert not any(li.error for li in listeners), [li.error for li in listeners]
            time.sleep(0.2)
        engines = replica_pids()
        assert len(engines) == 2, engines
        killed_at = time.monotonic()
        os.kill(engines[0], signal.SIGKILL)
        for t in threads:
            t.join(timeout=180)
    finally:
        stop.set()
    for li in listeners:
        assert li.error is None, (li.number, li.error)
        assert li.seconds >= 20.0, (li.number, li.seconds)
        firsts = [f for _, f, _ in li.frames]
        ends = [f + n for _, f, n in li.frames]
        assert firsts[1:] == ends[:-1], f"client {li.number}: audio not contiguous"
        gaps = [b[0] - a[0] for a, b in zip(li.frames, li.frames[1:]) if b[0] > killed_at]
        # every client keeps receiving: within a few seconds on a quiet host; 29 s was measured with
        # `make serve` and the suite's other tests beside it (a killed replica's sessions are
        # restored on a replica that shares two cores with all of it)
        assert max(gaps) < 60.0, (li.number, max(gaps))
        assert li.state["prompts"] == [{"text": f"client {li.number}", "weight": 1.0}], li.state
        assert li.state["cfg"] == 2.0 + li.number and li.state["state"] == "playing", li.state
    lost = [li for li in listeners if any("restored" in w["message"] for w in li.warnings)]
    assert 1 <= len(lost) <= 3, [li.warnings for li in listeners]  # the killed replica's sessions, told so
    for li in listeners:  # the loss is told as warnings; a stall a loaded host caused is said, and its end too
        told = li.warnings
        for i, w in enumerate(told):
            if w["type"] != "warning":
                assert w["message"].startswith("the music has stopped"), told
                assert any(later["message"].startswith("the music goes on") for later in told[i + 1 :]), told


def test_a_client_comes_back_to_its_session_after_the_ingress_is_lost(cluster):
    """The ingress holds every client's connection: when it dies they all drop. A client that
    reconnects with its session's token (`?resume=`) carries on with the same prompt and settings,
    continued from its codes; a token nobody has gets a new session and a sentence saying so."""
    url = cluster.url.replace("http", "ws")
    with connect(url, open_timeout=60) as ws:
        token = json.loads(ws.recv(timeout=60))["resume"]
        assert ws_answer(ws, ["prompt/fade", 0, "resumed", "groove"])["type"] == "session.updated"
        assert ws_answer(ws, ["cfg", 8.5])["type"] == "session.updated"
        time.sleep(1.5)  # its codes kept (save_every_s 0.5)
        (ingress,) = replica_pids("Ingress")
        os.kill(ingress, signal.SIGKILL)
        with pytest.raises(Exception):  # noqa: B017 - the connection is gone, however it says so
            while True:
                ws.recv(timeout=30)
    deadline = time.monotonic() + 90
    while True:  # Serve starts a new ingress
        try:
            with connect(f"{url}?resume={token}", open_timeout=10) as ws:
                created = json.loads(ws.recv(timeout=60))
                assert created["type"] == "session.created" and created["resume"] == token
                assert created["state"]["cfg"] == 8.5
                assert created["state"]["prompts"] == [{"text": "resumed groove", "weight": 1.0}]
                ws.send(json.dumps({"type": "audio.subscribe", "codec": "s16"}))
                assert any(isinstance(ws.recv(timeout=30), bytes) for _ in range(200))  # and it plays
            break
        except (OSError, TimeoutError) as e:
            assert time.monotonic() < deadline, e
            time.sleep(1.0)
    with connect(f"{url}?resume={'0' * 32}", open_timeout=30) as ws:
        created = json.loads(ws.recv(timeout=60))
        assert created["type"] == "session.created" and created["resume"] != "0" * 32
        assert "no session to resume" in json.loads(ws.recv(timeout=30))["message"]


def _answer(ws: ClientConnection, event_id: str) -> dict[str, Any]:
    while True:
        message = ws.recv(timeout=30)
        if isinstance(message, str) and (msg := json.loads(message)).get("event_id") == event_id:
            return msg
