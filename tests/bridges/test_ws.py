"""WebSocket and the browser client over real sockets. Protects: the JSON protocol, audio frames and
their header, uploads for continuation, Origin and token checks, many clients at once, a slow
client losing its oldest audio, a fuzz of bad messages, and the page itself in headless Chromium."""

from __future__ import annotations

import asyncio
import json
import random
import urllib.request

import numpy as np
import pytest
import websockets
from musicgen_live.bridges.ws import HEADER, MAGIC, Client
from websockets.asyncio.client import connect

from ..polling import until
from .conftest import Stack


def url(stack: Stack, query: str = "") -> str:
    return f"ws://127.0.0.1:{stack.ws_port}/{query}"


async def recv_json(ws, kind: str, timeout: float = 10.0) -> dict:
    async def loop():
        while True:
            msg = await ws.recv()
            if isinstance(msg, str):
                obj = json.loads(msg)
                if obj["type"] == kind:
                    return obj

    return await asyncio.wait_for(loop(), timeout)


def run(coro):
    return asyncio.run(coro)


def test_session_update_is_applied_and_answered_with_its_frame(stack):
    async def go():
        async with connect(url(stack), compression=None) as ws:
            created = await recv_json(ws, "session.created")
            assert created["session"]["sample_rate"] == 32000
            await ws.send(
                json.dumps(
                    {"type": "session.update", "cfg": 6, "prompt": "glass harmonica", "fade": 0, "event_id": "e1"}
                )
            )
            up = await recv_json(ws, "session.updated")
            assert up["event_id"] == "e1" and up["frame"] is not None
            assert set(up["applied"]) == {"cfg", "prompt", "fade"}
            await ws.send(json.dumps({"type": "state.get"}))
            state = (await recv_json(ws, "state"))["state"]
            assert state["cfg"] == 6.0 and state["prompts"][0]["text"] == "glass harmonica"

    run(go())


def test_audio_frames_carry_the_header_and_follow_each_other(stack):
    async def go():
        async with connect(url(stack), compression=None) as ws:
            await ws.send(json.dumps({"type": "audio.subscribe", "codec": "s16"}))
            frames = []
            while len(frames) < 10:
                msg = await asyncio.wait_for(ws.recv(), 10)
                if isinstance(msg, bytes):
                    frames.append(msg)
            heads = [HEADER.unpack(f[: HEADER.size]) for f in frames]
            for (magic, ver, codec, ch, _, rate, _first, n), f in zip(heads, frames):
                assert magic == MAGIC and ver == 1 and codec == 1 and ch == 1 and rate == 32000
                assert len(f) == HEADER.size + 2 * n * ch
            for a, b in zip(heads, heads[1:]):
                assert b[6] == a[6] + a[7]  # contiguous: no gap, no overlap

    run(go())


def test_upload_then_continue(stack):
    async def go():
        async with connect(url(stack), compression=None) as ws:
            await ws.send(json.dumps({"type": "input_audio.begin", "rate": 44100, "channels": 2, "codec": "f32"}))
            await recv_json(ws, "input_audio.ready")
            audio = (0.1 * np.random.default_rng(0).standard_normal((44100 * 2, 2))).astype("<f4")
            for chunk in np.array_split(audio, 8):
                await ws.send(chunk.tobytes())
            await ws.send(json.dumps({"type": "input_audio.commit", "seconds": 1.5, "event_id": "up"}))
            up = await recv_json(ws, "session.updated", timeout=20)
            assert up["applied"] == ["upload"] and up["event_id"] == "up"

    run(go())


@pytest.mark.parametrize(
    "message, expected",
    [
        ("not json", "JSON"),
        ("[1, 2]", "JSON objects"),
        (json.dumps({"type": "dance"}), "unknown message type"),
        (json.dumps({"type": "session.update", "cfg": "loud"}), "needs a number"),
        (json.dumps({"type": "session.update", "cfg": [1]}), "must be a number"),
        (json.dumps({"type": "session.update", "volume": 3}), "does not know"),
        (json.dumps({"type": "session.update"}), "changed nothing"),
        (json.dumps({"type": "session.update", "weighted_prompts": "a"}), "pairs"),
        (json.dumps({"type": "playback.control", "action": "explode"}), "action"),
        (json.dumps({"type": "generate.continue", "source": "file", "path": "../../etc/passwd"}), "outside"),
        (json.dumps({"type": "generate.continue", "source": "history", "seconds": -1}), "positive"),
        (json.dumps({"type": "input_audio.commit"}), "nothing uploaded"),
        (json.dumps({"type": "input_audio.begin", "rate": 5}), "rate"),
        (json.dumps({"type": "audio.subscribe", "codec": "mp3"}), "codec"),
    ],
)
def test_bad_messages_get_an_error_and_the_connection_stays(stack, message, expected):
    async def go():
        async with connect(url(stack), compression=None) as ws:
            await recv_json(ws, "session.created")
            await ws.send(message)
            err = await recv_json(ws, "error")
            assert expected in err["message"]
            await ws.send(json.dumps({"type": "state.get"}))
            await recv_json(ws, "state")

    run(go())


def test_binary_without_an_upload_and_oversized_messages(stack):
    async def go():
        async with connect(url(stack), compression=None) as ws:
            await recv_json(ws, "session.created")
            await ws.send(b"\x01\x02\x03")  # a truncated, header-less binary frame
            assert "input_audio.begin" in (await recv_json(ws, "error"))["message"]
        async with connect(url(stack), compression=None, max_size=None) as ws:
            await recv_json(ws, "session.created")
            await ws.send("x" * (2 << 20))  # over max_message_bytes: the server closes this one
            with pytest.raises(websockets.ConnectionClosed):
                for _ in range(100):
                    await asyncio.wait_for(ws.recv(), 5)
        async with connect(url(stack), compression=None) as ws:  # and is still up for others
            await recv_json(ws, "session.created")

    run(go())


def test_origin_check_and_token(tiny, tmp_path, stack):
    async def go():
        with pytest.raises(websockets.InvalidStatus) as e:
            async with connect(url(stack), origin="http://evil.example"):
                pass
        assert e.value.response.status_code == 403
        async with connect(url(stack), origin=f"http://127.0.0.1:{stack.ws_port}") as ws:
            await recv_json(ws, "session.created")

    run(go())
    from musicgen_live.bridges.config import WebSocketConfig

    s = Stack(tiny, tmp_path / "t", ws_cfg=WebSocketConfig(token="s3cret"))
    try:

        async def tokened():
            with pytest.raises(websockets.InvalidStatus):
                async with connect(url(s)):
                    pass
            async with connect(url(s, "?token=s3cret")) as ws:
                await recv_json(ws, "session.created")

        run(tokened())
    finally:
        s.close()


def test_binding_beyond_loopback_without_a_token_is_refused(stack):
    from musicgen_live.bridges.config import WebSocketConfig
    from musicgen_live.bridges.protocol import Vocabulary
    from musicgen_live.bridges.ws import WebSocketBridge
    from musicgen_live.engine.errors import UserError

    with pytest.raises(UserError, match="token"):
        WebSocketBridge(stack.session, Vocabulary(dict, {}), WebSocketConfig(host="0.0.0.0"))


def test_eight_clients_receive_audio_at_once(stack):
    """Eight listeners each get the one stream: contiguous chunks, the same bytes at the same sample
    positions. (What fanning out costs the generator - underruns with many clients - is a figure of
    `musicgen-live bench-bridges`, not an assertion: a loaded host spoils it.)"""

    async def one():
        async with connect(url(stack), compression=None) as ws:
            await ws.send(json.dumps({"type": "audio.subscribe"}))
            chunks = []
            while len(chunks) < 40:
                if isinstance(m := await asyncio.wait_for(ws.recv(), 10), bytes):
                    chunks.append(m)
            return chunks

    async def go():
        return await asyncio.gather(*[one() for _ in range(8)])

    received = run(go())
    at: dict[int, bytes] = {}  # sample position -> the chunk every client must have got there
    for chunks in received:
        heads = [HEADER.unpack(c[: HEADER.size]) for c in chunks]
        assert len(chunks) == 40
        for a, b in zip(heads, heads[1:]):
            assert b[6] == a[6] + a[7]  # contiguous
        for head, chunk in zip(heads, chunks):
            assert at.setdefault(head[6], chunk) == chunk


def test_a_slow_client_loses_its_oldest_audio_and_is_warned(stack):
    """A client that never takes its audio (its connection stalled): the real bridge fans the
    session's audio out to it, keeps only the newest chunks in its bounded queue and warns it."""
    sent = []

    class Stalled:
        async def send(self, data):
            sent.append(data)

    client = Client(Stalled(), asyncio.Queue(maxsize=3), audio=True)  # no sender task: nothing drains it
    bridge = stack.running.ws
    stack.loop.call_soon_threadsafe(bridge.clients.add, client)
    assert until(lambda: client.dropped >= 20, seconds=20)  # ~50 chunks a second on a quiet host

    async def leave() -> None:
        bridge.clients.discard(client)

    asyncio.run_coroutine_threadsafe(leave(), stack.loop).result(5)  # no chunk reaches it after this
    produced = stack.session.sink.samples  # model samples so far (the tap numbers chunks the same way)
    kept = [client.queue.get_nowait() for _ in range(client.queue.qsize())]
    heads = [HEADER.unpack(k[: HEADER.size]) for k in kept]
    assert len(kept) == 3 and client.dropped >= 20
    for a, b in zip(heads, heads[1:]):
        assert b[6] == a[6] + a[7]  # contiguous ...
    assert heads[-1][6] + heads[-1][7] >= produced - 10 * 640  # ... and the newest ones
    assert any(isinstance(m, str) and "too slow" in m for m in sent)


@pytest.fixture
def unlimited(tiny, tmp_path):
    """A stack whose WebSocket takes every message (no per-client budget): what each bad message
    gets back does not then depend on how fast this host sends them."""
    from musicgen_live.bridges.config import WebSocketConfig

    s = Stack(tiny, tmp_path, ws_cfg=WebSocketConfig(max_rate=1e9, client_queue=10_000))
    yield s
    s.close()


def test_fuzz_random_messages_never_stop_the_music(unlimited):
    """1 500 random messages, most of them malformed: each bad one answered, and the music plays on.
    (Floods beyond a client's budget: tests/bridges/test_hostile.py.)"""
    stack = unlimited
    rng = random.Random(3)
    values = [None, True, -1, 0, 3.5, 1e308, "x", "", [1, "a"], {"a": 1}, "play", float("nan")]
    types = [
        "session.update",
        "playback.control",
        "generate.continue",
        "audio.subscribe",
        "input_audio.begin",
        "input_audio.commit",
        "state.get",
        "bogus",
        None,
        7,
    ]
    keys = [
        "prompt",
        "cfg",
        "top_k",
        "top_p",
        "seed",
        "action",
        "source",
        "seconds",
        "rate",
        "codec",
        "weighted_prompts",
    ]

    async def go():
        async with connect(url(stack), compression=None) as ws:
            await recv_json(ws, "session.created")
            answers: list[dict] = []

            async def read() -> None:  # as a client does: replies are taken as they come
                while True:
                    msg = await asyncio.wait_for(ws.recv(), 30)
                    if isinstance(msg, str):
                        answers.append(obj := json.loads(msg))
                        if obj.get("event_id") == "last":  # answers come in order: all are in
                            return

            reader = asyncio.create_task(read())
            for _ in range(1500):
                r = rng.random()
                if r < 0.2:
                    await ws.send(bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 40))))
                elif r < 0.35:
                    await ws.send("".join(rng.choice('{}[]",:ab1') for _ in range(rng.randint(0, 30))))
                else:
                    msg = {"type": rng.choice(types)}
                    for k in rng.sample(keys, rng.randint(0, 3)):
                        msg[k] = rng.choice(values)
                    if msg["type"] == "playback.control" and msg.get("action") in ("stop", "pause"):
                        msg["action"] = "play"  # keep the music playing so the test can check it
                    await ws.send(json.dumps(msg, allow_nan=True))
            frame = stack.session.snapshot()["frame"]
            await ws.send(json.dumps({"type": "playback.control", "action": "play", "event_id": "last"}))
            await reader
            errors = sum(a["type"] == "error" for a in answers)
            replies = sum(a["type"] != "state.changed" for a in answers)  # state.changed: the session's own
            return errors, replies, frame

    errors, replies, frame = run(go())
    # this seed's 1 500 give 1 223 errors and ~1 500 replies in all: each message its answer
    assert errors >= 1200 and replies >= 1490, (errors, replies)
    assert until(lambda: stack.session.snapshot()["frame"] > frame)


def test_http_serves_the_browser_client(stack):
    page = urllib.request.urlopen(f"http://127.0.0.1:{stack.ws_port}/", timeout=5).read().decode()
    assert "<title>musicgen-live</title>" in page and "client.js" in page
    assert "registerProcessor" in urllib.request.urlopen(f"http://127.0.0.1:{stack.ws_port}/worklet.js").read().decode()


def test_the_page_plays_in_headless_chromium(stack):
    """A real browser loads the page, plays audio through its AudioWorklet, sends a prompt and sees
    session.updated. Driven over the DevTools protocol (real time, not virtual time)."""
    from .browser import Browser

    page = Browser()
    try:
        page.open(f"http://127.0.0.1:{stack.ws_port}/?selftest=1")
        title = page.wait_for('document.title.startsWith("selftest") && document.title', timeout=30)
    finally:
        page.close()
    fields = dict(kv.split("=") for kv in title.split()[1:])
    assert int(fields["frames"]) >= 20  # audio frames arrived
    assert int(fields["updated"]) >= 1  # the prompt was sent and session.updated came back
    assert fields["worklet"] == "1"
    assert stack.session.prompts == [("selftest prompt from the browser", 1.0)]
