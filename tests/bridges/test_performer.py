"""The performer's surface (issue 34). Protects: OSC tools that send from one port and listen on
another (oscsend + oscdump, Max, TouchOSC) get every answer where they listen once they said so
with `/subscribe PORT`; the Pure Data example prints the server's replies (real `pd -nogui`); a
refused request leaves pending work and the state untouched, on every bridge; a request replaced
by the same sender's newer one is no error for them; the blend board keeps its texts in place;
float32 noise does not leak into values; `reset` reaches subscribers; `/underrun` at most once a
second; a WebSocket continuation is answered by its request's name."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from musicgen_live.bridges.osc import encode
from musicgen_live.bridges.protocol import Vocabulary
from pythonosc.osc_message import OscMessage
from websockets.sync.client import connect

from .conftest import Stack, free_port

EXAMPLES = Path(__file__).resolve().parents[2] / "docs" / "examples"


def _oscsend(port: int, address: str, *typed: str) -> None:
    """liblo's oscsend: a new process, so a new source port every time (as a shell user sends)."""
    subprocess.run(["oscsend", "127.0.0.1", str(port), address, *typed], check=True, timeout=10)


def _until(predicate, timeout: float = 20.0) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.05)


def test_oscsend_gets_every_answer_on_the_port_oscdump_listens_on(stack):
    if not shutil.which("oscsend"):
        pytest.fail("liblo-tools is not installed: run scripts/setup.sh")
    listen = free_port()
    dump = subprocess.Popen(["oscdump", "-L", str(listen)], stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(0.3)
        _oscsend(stack.osc_port, "/musicgen/subscribe", "i", str(listen))  # "I listen on this port"
        _oscsend(stack.osc_port, "/musicgen/cfg", "s", "loud")  # an error, from another source port
        _oscsend(stack.osc_port, "/musicgen/get/top_k")  # a query
        _oscsend(stack.osc_port, "/musicgen/temperature", "f", "9")  # clamped: a warning
        _oscsend(stack.osc_port, "/musicgen/cfg", "f", "0.8")  # float32 0.8: echoed as 0.8
        _oscsend(stack.osc_port, "/musicgen/reset")
        _oscsend(stack.osc_port, "/musicgen/continue/file", "s", "nope.wav")  # refused later, by the session
        time.sleep(1.5)
    finally:
        dump.terminate()
        out = dump.communicate(timeout=5)[0]
    assert "/musicgen/subscribed" in out
    assert '/musicgen/error ss "/musicgen/cfg" "cfg needs a number' in out, out
    assert "/musicgen/top_k i 250" in out
    assert '/musicgen/warning ss "/musicgen/temperature" "temperature 9 is outside' in out
    assert "/musicgen/cfg f 0.8" in out and stack.session.controls["cfg"] == 0.8  # not 0.800000011920929
    assert '/musicgen/error ss "/musicgen/continue/file"' in out and "does not exist" in out
    assert "/musicgen/reset i" in out  # reset reaches subscribers


def test_the_pure_data_example_prints_the_servers_replies(stack, tmp_path):
    if not shutil.which("pd"):
        pytest.fail("Pure Data is not installed: run scripts/setup.sh (puredata-core)")
    patch = tmp_path / "pd-musicgen.pd"  # the example as shipped, pointed at this test's port
    patch.write_text((EXAMPLES / "pd-musicgen.pd").read_text().replace("57130", str(stack.osc_port)))
    pd = subprocess.Popen(
        ["pd", "-nogui", "-nosound", "-nomidi", "-stderr", "-open", str(patch)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        time.sleep(4)
    finally:
        pd.kill()
        out = pd.communicate(timeout=10)[0]
    assert "reply: musicgen subscribed" in out, out[-2000:]
    assert "reply: musicgen position" in out and "reply: musicgen status playing" in out


@pytest.mark.parametrize("bridge", ["osc", "ws", "stdin"])
def test_a_refused_request_leaves_pending_work_and_state_untouched(tiny, tmp_path, monkeypatch, bridge):
    """A good continuation from a file, still being read (held here), then bad requests of every
    kind: the bad ones are refused, the good one still waits and then plays, the state unchanged."""
    import musicgen_live.streamer.audio_requests as session_module  # where a session reads its files

    release, real = threading.Event(), session_module.read_audio_file

    def held(path, *args, **kwargs):  # the good file's read waits (a slow disk); the others go at once
        if str(path).endswith("good.wav"):
            release.wait(30)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(session_module, "read_audio_file", held)
    sf.write(str(tmp_path / "good.wav"), np.random.default_rng(0).uniform(-0.2, 0.2, (32000 * 3, 1)), 32000)
    (tmp_path / "empty.wav").write_bytes(b"")
    (tmp_path / "folder.wav").mkdir()
    stack = Stack(tiny, tmp_path)
    try:
        _until(lambda: stack.session.steps > 20)
        vocab = Vocabulary({}, [str(tmp_path)])
        good = stack.session.submit(vocab.handle("continue/file", ["good.wav", 2]).commands[0])
        _until(lambda: stack.session.snapshot()["pending"] == ["continue/file"])
        before = stack.session.view()
        bad = [
            ("continue/file", ["nope.wav", 2], "does not exist"),
            ("continue/file", ["folder.wav", 2], "folder"),
            ("continue/file", ["empty.wav", 2], "empty"),
            ("cfg", ["loud"], "cfg needs a number"),
        ]
        for name, args, words in bad:
            assert words in _ask(stack, bridge, name, args)
        assert not good.done.is_set(), good.error  # the good continuation still waits for its file
        assert stack.session.snapshot()["pending"] == ["continue/file"]
        assert stack.session.view() == before
        release.set()
        assert good.wait(30) and good.error is None, good.error  # and then it is the one that plays
    finally:
        release.set()
        stack.close()


def _ask(stack: Stack, bridge: str, name: str, args: list) -> str:
    """Send one request over `bridge` and return the error it is answered with."""
    if bridge == "osc":
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind(("127.0.0.1", 0))
            sock.settimeout(10)
            sock.sendto(encode(f"/musicgen/{name}", tuple(args)), ("127.0.0.1", stack.osc_port))
            while True:
                m = OscMessage(sock.recvfrom(65536)[0])
                if m.address == "/musicgen/error":
                    return str(m.params[1])
    if bridge == "ws":
        with connect(f"ws://127.0.0.1:{stack.ws_port}/", open_timeout=10) as ws:
            ws.send(json.dumps({"type": "command", "name": name, "args": args, "event_id": 1}))
            while (m := json.loads(ws.recv(timeout=10))).get("event_id") != 1:
                pass
            assert m["type"] == "error"
            return str(m["message"])
    return stack.type(" ".join([name, *map(str, args)]), answer="error")


def test_a_newer_request_from_the_same_sender_is_no_error_for_them(stack):
    with connect(f"ws://127.0.0.1:{stack.ws_port}/", open_timeout=10) as ws:
        for i in range(3):  # prompts never heard before: each takes T5 a few steps, the next replaces it
            ws.send(json.dumps({"type": "session.update", "prompt": f"never heard {i}", "event_id": i}))
        answers = {}
        while len(answers) < 3:
            m = json.loads(ws.recv(timeout=30))
            if m.get("event_id") in (0, 1, 2):
                answers[m["event_id"]] = m
    assert answers[2]["type"] == "session.updated" and answers[2]["applied"] == ["prompt"]
    for i in (0, 1):  # replaced, or applied if T5 was quicker than the next message
        assert answers[i]["type"] == "session.updated", answers[i]
        assert answers[i].get("superseded") in (True, None)
    assert stack.session.prompts == [("never heard 2", 1.0)]


def test_the_blend_board_keeps_its_texts_in_place(stack):
    s, vocab = stack.session, Vocabulary({})

    def send(name, *args):
        for cmd in vocab.handle(name, list(args)).commands:
            t = s.submit(cmd, source="osc 1")
            assert t.wait(30) and t.error is None, t.error

    def board():
        return [(p["text"], p["weight"]) for p in s.view()["slots"]]

    send("slots", "dub techno", 1.0, "rain", 0.4, "granular", 0.25, "solo cello", 0.84)
    send("slots", "dub techno", 0.0, "rain", 0.4, "granular", 0.25, "solo cello", 0.84)  # slot 1 to 0
    assert board() == [("dub techno", 0.0), ("rain", 0.4), ("granular", 0.25), ("solo cello", 0.84)]
    assert s.prompts == [("rain", 0.4), ("granular", 0.25), ("solo cello", 0.84)]  # what sounds
    send("slots", "dub techno", 1.0, "rain", 0.4, "granular", 0.25, "solo cello", 0.84)  # and back
    assert board()[0] == ("dub techno", 1.0) and len(s.prompts) == 4
    send("prompt", "rain")  # a prompt from elsewhere: texts stay, weights follow
    assert board() == [("dub techno", 0.0), ("rain", 1.0), ("granular", 0.0), ("solo cello", 0.0)]
    send("slots", "", 0, "rain", 0, "", 0, "", 0)  # every slot at 0: the blend sounds on
    assert board() == [("", 0.0), ("rain", 0.0), ("", 0.0), ("", 0.0)] and s.prompts == [("rain", 1.0)]
    send("prompt/weighted", "brass", 0.5, "rain", 0.5)  # a new text takes the first empty slot
    assert board() == [("brass", 0.5), ("rain", 0.5), ("", 0.0), ("", 0.0)]


def test_a_websocket_continuation_is_answered_by_its_name(stack):
    _until(lambda: stack.session.steps > 60)
    with connect(f"ws://127.0.0.1:{stack.ws_port}/", open_timeout=10) as ws:
        ws.send(json.dumps({"type": "generate.continue", "source": "history", "seconds": 1, "event_id": 5}))
        while (m := json.loads(ws.recv(timeout=30))).get("event_id") != 5:
            pass
    assert m["type"] == "session.updated" and m["applied"] == ["continue"]


def test_a_newer_request_wins_over_an_older_one_still_being_read(tiny, tmp_path, monkeypatch):
    """continue/file (its read held) then continue from history: the history one plays, and the
    file's read finishing later changes nothing."""
    import musicgen_live.streamer.audio_requests as session_module  # where a session reads its files

    release, real = threading.Event(), session_module.read_audio_file

    def held(path, *args, **kwargs):
        release.wait(30)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(session_module, "read_audio_file", held)
    sf.write(str(tmp_path / "slow.wav"), np.random.default_rng(0).uniform(-0.2, 0.2, (32000 * 3, 1)), 32000)
    stack = Stack(tiny, tmp_path)
    try:
        _until(lambda: stack.session.steps > 60)
        vocab = Vocabulary({}, [str(tmp_path)])
        older = stack.session.submit(vocab.handle("continue/file", ["slow.wav", 2]).commands[0], source="osc 1")
        _until(lambda: stack.session.snapshot()["pending"] == ["continue/file"])
        newer = stack.session.submit(vocab.handle("continue", [1]).commands[0], source="osc 1")
        assert older.wait(10) and older.superseded and "superseded" in (older.error or "")
        release.set()
        assert newer.wait(30) and newer.error is None
        time.sleep(0.5)
        assert stack.session.snapshot()["pending"] == []
    finally:
        release.set()
        stack.close()
