"""Hostile and careless input of every kind: none of it may stall, starve or silently stop the music.
Protects: bounded, numeric, expiring OSC subscriptions (no amplifier); answers for any number (no
encoding crash); ctrl nested one level only; OSC beyond loopback only with an allow-list (unknown
peers dropped unanswered); WebSocket Origin judged without the Host header (DNS rebinding refused),
deep JSON and huge numbers answered with an error; a connection cap; uploads capped for all clients
together; a file continuation reads only the tail it needs, and only from the file it checked."""

from __future__ import annotations

import asyncio
import json
import socket
import time

import numpy as np
import pytest
import soundfile as sf
import websockets
from musicgen_live.bridges.config import OscConfig, WebSocketConfig
from musicgen_live.bridges.osc import encode, start_osc
from musicgen_live.bridges.protocol import Vocabulary
from musicgen_live.engine.errors import UserError
from musicgen_live.streamer import commands as c
from pythonosc.osc_message import OscMessage
from websockets.sync.client import connect

from .conftest import Stack


def udp(port: int, *messages: tuple, wait: float = 0.5, source: str = "127.0.0.1") -> list[OscMessage]:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((source, 0))
        for address, *args in messages:
            sock.sendto(encode(address, tuple(args)), ("127.0.0.1" if source == "127.0.0.1" else source, port))
        out, end = [], time.time() + wait
        while time.time() < end:
            sock.settimeout(max(0.01, end - time.time()))
            try:
                out.append(OscMessage(sock.recvfrom(65536)[0]))
            except TimeoutError:
                break
        return out


def test_subscriptions_are_bounded_numeric_and_lapse(tiny, tmp_path):
    # subscriptions lapse after 2 s: the answers are read for 0.5 s (reading them for as long as a
    # subscription lasts raced its lapse on a busy machine)
    s = Stack(tiny, tmp_path, osc_cfg=OscConfig(subscription_s=2.0))
    try:
        answers = udp(s.osc_port, *[("/musicgen/subscribe", 20000 + i) for i in range(20)], wait=0.5)
        errors = [m.params[1] for m in answers if m.address == "/musicgen/error"]
        assert len(s.running.osc.subscribers) == 8 and len(errors) == 12
        assert errors[0] == "too many subscriptions from 127.0.0.1 (at most 8)"
        bad = udp(s.osc_port, ("/musicgen/subscribe", 9000, "evil.example"))
        assert "numeric host" in bad[0].params[1]
        time.sleep(2.6)  # nobody renewed
        assert len(s.running.osc.subscribers) == 0
    finally:
        s.close()


def test_any_number_gets_an_answer_and_ctrl_nests_one_level(stack):
    answers = udp(stack.osc_port, ("/musicgen/ping", 1e300), ("/musicgen/ping", -1e300), ("/musicgen/ping", 2**62))
    assert [m.params[0] for m in answers] == [1e300, -1e300, 2**62]
    t0 = time.perf_counter()
    answers = udp(
        stack.osc_port,
        ("/musicgen/ctrl", *(["ctrl"] * 2000), "cfg", 3.0),
        ("/musicgen/ctrl", "ctrl", "cfg", 3.0),
        ("/musicgen/ping", 1),
    )
    assert time.perf_counter() - t0 < 1.0
    assert [m.address for m in answers] == ["/musicgen/error", "/musicgen/error", "/musicgen/pong"]
    assert answers[0].params[1] == "OSC packet of 18028 bytes: at most 8192"
    assert answers[1].params[1] == "ctrl cannot carry another ctrl"
    answers = udp(stack.osc_port, ("/musicgen/ctrl", *(["ctrl"] * 100), "cfg", 3.0))
    assert answers[0].params[1] == "'ctrl' takes at most 64 arguments, got 102"


def test_osc_beyond_loopback_needs_an_allow_list_and_drops_other_peers(stack):
    vocab = Vocabulary({})

    async def listen(cfg):
        bridge, transport = await start_osc(stack.session, vocab, cfg)
        transport.close()
        return bridge

    with pytest.raises(UserError, match=r"beyond loopback.*\[osc\] allow"):
        asyncio.run(listen(OscConfig(host="0.0.0.0", port=0)))
    with pytest.raises(UserError, match="allow"):
        asyncio.run(listen(OscConfig(host="0.0.0.0", port=0, allow=["not a network"])))
    bridge = asyncio.run(listen(OscConfig(host="0.0.0.0", port=0, allow=["203.0.113.0/24"])))
    assert bridge._peer_allowed(("127.0.0.1", 5000)) and bridge._peer_allowed(("203.0.113.9", 5000))
    assert not bridge._peer_allowed(("192.0.2.77", 5000))


def test_a_dns_rebinding_page_is_refused(stack):
    for origin, ok in [
        (f"http://127.0.0.1:{stack.ws_port}", True),
        (f"http://localhost:{stack.ws_port}", True),
        (f"http://evil.example:{stack.ws_port}", False),
        ("http://127.0.0.1:1", False),
        ("null", False),
    ]:
        headers = {"Host": f"evil.example:{stack.ws_port}"}  # the rebinding page's Host
        if ok:
            with connect(f"ws://127.0.0.1:{stack.ws_port}/", origin=origin, additional_headers=headers) as ws:
                assert json.loads(ws.recv(timeout=10))["type"] == "session.created"
        else:
            with pytest.raises(websockets.InvalidStatus) as e:
                with connect(f"ws://127.0.0.1:{stack.ws_port}/", origin=origin, additional_headers=headers):
                    pass
            assert e.value.response.status_code == 403


def test_deep_json_and_huge_numbers_are_answered_with_an_error(stack):
    with connect(f"ws://127.0.0.1:{stack.ws_port}/", max_size=None) as ws:
        ws.recv(timeout=10)
        for message in [
            "[" * 5000 + "]" * 5000,
            '{"type": "session.update", "cfg": ' + "9" * 400 + "}",
            '{"type": "session.update", "seed": ' + "9" * 400 + "}",
            '{"type": "generate.continue", "seconds": ' + "9" * 400 + "}",
            '{"type": "input_audio.begin", "rate": 1e400, "channels": 1e400}',
            '{"type": ["not", "hashable"]}',
        ]:
            ws.send(message)
            answer = json.loads(ws.recv(timeout=10))
            assert answer["type"] == "error" and "internal" not in answer["message"], (message[:40], answer)
        ws.send(json.dumps({"type": "state.get"}))
        assert json.loads(ws.recv(timeout=10))["type"] == "state"  # the connection stays


def test_connections_and_uploads_are_capped(tiny, tmp_path):
    s = Stack(tiny, tmp_path, ws_cfg=WebSocketConfig(max_clients=2, max_uploads_mb=0.5))
    try:
        url = f"ws://127.0.0.1:{s.ws_port}/"
        with connect(url) as a, connect(url) as b:
            with pytest.raises(websockets.InvalidStatus) as e:
                with connect(url):
                    pass
            assert e.value.response.status_code == 503
            for ws in (a, b):
                ws.recv(timeout=10)
                ws.send(json.dumps({"type": "input_audio.begin", "rate": 48000, "channels": 1, "codec": "f32"}))
                ws.recv(timeout=10)
            a.send(np.zeros(100_000, "<f4").tobytes())  # 0.4 MB held for a
            a.send(json.dumps({"type": "state.get"}))
            assert json.loads(a.recv(timeout=10))["type"] == "state"  # (the server has a's audio now)
            b.send(np.zeros(50_000, "<f4").tobytes())  # 0.2 MB more: over the 0.5 MB for all clients
            assert "MB of uploads from all clients at most" in json.loads(b.recv(timeout=10))["message"]
    finally:
        s.close()


def test_a_fast_uploader_is_read_no_faster_than_upload_mb_s(tiny, tmp_path):
    """An upload flood is slowed at the socket (the server stops reading it), not paid for by the
    music: 2 MB at 0.5 MB/s after a 1 s burst cannot all be in before ~3 s have passed (a lower
    bound: a slow host only makes it later)."""
    s = Stack(tiny, tmp_path, ws_cfg=WebSocketConfig(upload_mb_s=0.5, max_upload_s=60))
    try:
        with connect(f"ws://127.0.0.1:{s.ws_port}/", max_size=None) as ws:
            ws.recv(timeout=10)
            ws.send(json.dumps({"type": "input_audio.begin", "rate": 48000, "channels": 1, "codec": "f32"}))
            ws.recv(timeout=10)
            chunk = np.zeros(25_000, "<f4").tobytes()  # 0.1 MB
            t0 = time.monotonic()
            for _ in range(20):
                ws.send(chunk)
            ws.send(json.dumps({"type": "state.get"}))  # answered once every frame before it was read
            assert json.loads(ws.recv(timeout=30))["type"] == "state"
            assert time.monotonic() - t0 >= 2.5
    finally:
        s.close()


def test_a_file_continuation_reads_only_its_tail_and_only_the_file_it_checked(stack, tmp_path):
    from musicgen_live.engine.audiofile import read_audio
    from musicgen_live.engine.errors import AudioInputError

    loops = stack.audio_dir
    sf.write(str(loops / "long.wav"), np.random.default_rng(0).uniform(-0.1, 0.1, (48000 * 60, 1)), 48000)
    tail = read_audio(loops / "long.wav", 32000, 1, last_s=2.0, inside=[loops])
    assert 2.0 <= tail.shape[-1] / 32000 < 2.2  # a minute of audio, two seconds read
    outside = tmp_path.parent / f"outside-{tmp_path.name}.wav"
    sf.write(str(outside), np.zeros((4800, 1)), 48000)
    (loops / "swap.wav").write_bytes((loops / "long.wav").read_bytes()[:48000])
    checked = Vocabulary({}, [str(loops)]).handle("continue/file", ["swap.wav", 1]).commands[0]  # passes the check
    (loops / "swap.wav").unlink()
    (loops / "swap.wav").symlink_to(outside)  # ... and is swapped for a link to somewhere else
    t = stack.session.submit(checked)
    assert t.wait(20) and "outside the folders" in t.error
    with pytest.raises(AudioInputError, match="outside the folders"):
        read_audio(loops / "swap.wav", 32000, 1, inside=[loops])
    assert stack.session.submit(c.Query()).wait(5)  # and the session answers on


def test_a_flooding_sender_is_held_to_its_budget(tiny, tmp_path):
    s = Stack(tiny, tmp_path, osc_cfg=OscConfig(max_rate=100))
    try:
        osc = s.running.osc
        received = osc.received
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind(("127.0.0.1", 0))
            t0 = time.perf_counter()
            for _ in range(1000):  # ~2000 a second for half a second: 20x the budget
                sock.sendto(encode("/musicgen/ping", (1,)), ("127.0.0.1", s.osc_port))
                time.sleep(0.0005)
            flood_s = time.perf_counter() - t0
            time.sleep(1.2)
            sock.sendto(encode("/musicgen/ping", (2,)), ("127.0.0.1", s.osc_port))  # the budget has refilled
            sock.settimeout(2)
            answers = []
            while not answers or answers[-1].params != [2]:
                answers.append(OscMessage(sock.recvfrom(65536)[0]))
        pongs = [m for m in answers if m.address == "/musicgen/pong"]
        complaints = [m.params[1] for m in answers if m.address == "/musicgen/error"]
        assert len(pongs) <= 100 + 100 * flood_s + 2  # the burst, and what refilled while the flood lasted
        assert osc.over_budget == osc.received - received - len(pongs)  # the rest: dropped unparsed
        assert osc.over_budget > 500
        assert len(complaints) == 1 and "too many messages" in complaints[0] and "at most 100 a second" in complaints[0]
    finally:
        s.close()


def test_a_datagram_flood_pauses_reading_and_the_server_answers_after(tiny, tmp_path):
    """All senders together are held to [osc] max_intake: beyond it the socket goes unread for a
    moment (the kernel drops the rest), so a flood - from spoofed addresses too - cannot take the
    interpreter from the music; reading resumes, the flood's backlog is dropped (at 50 a second the
    kernel's few hundred queued datagrams would hold a request back for seconds) and a later request
    is answered at once."""
    s = Stack(tiny, tmp_path, osc_cfg=OscConfig(max_intake=50, max_rate=10_000))
    try:
        osc = s.running.osc
        received = osc.received
        junk = b"\x00garbage"
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind(("127.0.0.1", 0))
            t0 = time.perf_counter()
            for _ in range(4000):  # as fast as this loop goes: far over 50 a second
                sock.sendto(junk, ("127.0.0.1", s.osc_port))
            flood_s = time.perf_counter() - t0
            time.sleep(1.5)  # the flood's backlog is drained or dropped; the bucket refills
            sock.sendto(encode("/musicgen/ping", (7,)), ("127.0.0.1", s.osc_port))
            sock.settimeout(3)  # behind the backlog it would be ~5 s
            while True:
                m = OscMessage(sock.recvfrom(65536)[0])
                if m.address == "/musicgen/pong":
                    break
        assert osc.intake_pauses > 0
        # parsed at most the bucket, what refilled while the flood and the wait lasted, and the ping
        assert osc.received - received <= 50 + 50 * (flood_s + 1.5) + 1
        assert m.params == [7]
    finally:
        s.close()
