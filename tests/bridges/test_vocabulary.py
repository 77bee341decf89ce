"""One table of requests, good and bad, sent through every bridge - stdin, OSC and WebSocket - of one
running `serve`. Protects: the same names, ranges, clamps, sandbox and sentences everywhere; answers
that are true and single (a continuation: /done once or /fail alone; a WebSocket client is never
told "applied" for something refused); a get right after a set answers the new value."""

from __future__ import annotations

import json
import shlex
import socket
import time
from typing import Any

import numpy as np
import pytest
import soundfile as sf
from musicgen_live.bridges.osc import encode
from musicgen_live.streamer import commands as c
from pythonosc.osc_message import OscMessage
from websockets.sync.client import connect

from .conftest import Stack

BAD: list[tuple[list[Any], str]] = [
    (["cfg", "loud"], "cfg needs a number, got 'loud'"),
    (["cfg"], "cfg takes one number, got 0 arguments"),
    (["cfg", 1, 2], "cfg takes one number, got 2 arguments"),
    (["top_k", "nan"], "top_k needs a finite number, got nan"),
    (["prompt"], "prompt needs some text"),
    (["prompt/fade", 3], "prompt/fade takes a number of seconds and the prompt"),
    (["prompt/weighted", "a"], "prompt/weighted takes pairs: text weight [text weight ...]"),
    (["prompt/weighted", "a", -1], "prompt weights must be >= 0, got -1"),
    (["prompt/weighted", "a", 1, "b", 1, "c", 1, "d", 1, "e", 1], "at most 4 prompts can sound at once, got 5"),
    (
        ["fade", 4, "warm"],
        "fade takes one number (the default crossfade); to crossfade to a prompt over S "
        "seconds send prompt/fade S TEXT",
    ),
    (["continue", -2], "continue needs a positive number of seconds, got -2"),
    (["continue/input", 2], "no input device is open (start serve with --input DEVICE)"),  # refused by the session
    (["continue/file", "../../etc/passwd"], "'../../etc/passwd' is outside the folders continue/file may read"),
    (["continue/file", "silence.txt"], "could not be read"),  # refused by the session's job
    (["melody/history", -1], "melody/history needs a positive number of seconds, got -1"),
    (["melody/input", 1, 2], "melody/input takes at most one number of seconds"),
    (["melody/file"], "melody/file takes a file name and, optionally, seconds"),
    (["melody/file", "../../etc/passwd"], "'../../etc/passwd' is outside the folders melody/file may read"),
    (["melody/history", 2], "has no melody conditioning: melody commands need a MusicGen-Melody checkpoint"),
    (["style/history", 0], "style/history needs a positive number of seconds, got 0"),
    (["style/input", 1, 2], "style/input takes at most one number of seconds"),
    (["style/file", "../../etc/passwd"], "'../../etc/passwd' is outside the folders style/file may read"),
    (["style/history", 3], "has no style conditioning: style commands need a MusicGen-Style checkpoint"),
    (["cfg_beta", 4], "cfg_beta (double guidance) needs a MusicGen-Style checkpoint"),
    (["get/nothing"], "cannot get 'nothing'"),
    (["launch/rockets"], "unknown command 'launch/rockets'"),
    (["ctrl", "ctrl", "cfg", 3], "ctrl cannot carry another ctrl"),
]
GOOD: list[tuple[list[Any], dict[str, Any], str]] = [  # request, state after it, note
    (["cfg", 4.5], {"cfg": 4.5}, ""),
    (["top_k", 99999], {"top_k": 2048}, "top_k 99999 is outside 0..2048: 2048 will sound"),
    (["prompt/fade", 0, "dub", "techno"], {"prompts": [{"text": "dub techno", "weight": 1.0}]}, ""),
    (["ctrl", "temperature", 0.5], {"temperature": 0.5}, ""),
    (["seed", 12], {"seed": 12}, ""),
    (["pause"], {"state": "paused"}, ""),
    (["play"], {"state": "playing"}, ""),
]


def stdin_answer(stack: Stack, request: list[Any]) -> tuple[str, str, str]:
    """(error sentence, note, answer line) as serve's console printed them for this request."""
    while not stack.said.empty():
        stack.said.get()  # earlier output (start-up lines, refusals of other clients)
    stack.stdin.lines.put(shlex.join(str(x) for x in request) + "\n")
    note = ""
    while True:
        out = stack.said.get(timeout=20)
        if out.startswith("note: "):
            note = out[len("note: ") :]
        elif out.startswith(("ok: ", "error: ")):
            return (out[len("error: ") :] if out.startswith("error: ") else "", note, out)


class OscClient:
    def __init__(self, port: int) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(3)
        self.server = ("127.0.0.1", port)

    def send(self, request: list[Any]) -> None:
        self.sock.sendto(encode("/musicgen/" + str(request[0]), tuple(request[1:])), self.server)

    def messages(self, seconds: float = 1.0, until: tuple[str, ...] = (), then: float = 0.1) -> list[OscMessage]:
        """What arrives within `seconds`; with `until`, stop `then` seconds after one of those addresses
        arrived (to catch anything sent with it: a second answer would be a bug)."""
        out, end = [], time.time() + seconds
        while time.time() < end:
            self.sock.settimeout(max(0.01, end - time.time()))
            try:
                out.append(OscMessage(self.sock.recvfrom(65536)[0]))
            except TimeoutError:
                break
            if out[-1].address in until:
                end = min(end, time.time() + then)
        return out

    def close(self) -> None:
        self.sock.close()


def ws_answer(ws: Any, request: list[Any]) -> dict[str, Any]:
    ws.send(json.dumps({"type": "command", "name": request[0], "args": request[1:], "event_id": "t"}))
    while True:
        msg = json.loads(ws.recv(timeout=20))
        if msg.get("event_id") == "t":
            return msg


@pytest.fixture
def clients(stack):
    (stack.audio_dir / "silence.txt").write_text("not audio")
    time.sleep(0.5)  # a little history to continue from
    osc = OscClient(stack.osc_port)
    with connect(f"ws://127.0.0.1:{stack.ws_port}/") as ws:
        json.loads(ws.recv(timeout=10))  # session.created
        yield stack, osc, ws
    osc.close()


def test_bad_input_gets_the_same_sentence_on_every_bridge(clients):
    stack, osc, ws = clients
    for request, sentence in BAD:
        error, _note, line = stdin_answer(stack, request)
        assert sentence in error, (request, line)
        osc.send(request)
        errors = [m for m in osc.messages(10, until=("/musicgen/error",)) if m.address == "/musicgen/error"]
        assert len(errors) == 1 and sentence in errors[0].params[1], (request, errors)
        answer = ws_answer(ws, request)
        assert answer["type"] == "error" and sentence in answer["message"], (request, answer)
    assert stack.session.state == "playing"  # and nothing stopped the music


def test_good_requests_do_the_same_on_every_bridge(clients):
    stack, osc, ws = clients
    for request, after, note in GOOD:
        for bridge in ("stdin", "osc", "ws"):
            stack.session.submit(c.Set("cfg", 3.0)).wait(10)
            if bridge == "stdin":
                _error, got_note, line = stdin_answer(stack, request)
                assert line.startswith("ok: "), (request, line)
            elif bridge == "osc":
                osc.send(request)
                msgs = osc.messages(0.5)
                assert not [m for m in msgs if m.address == "/musicgen/error"], (request, msgs)
                warnings = [m.params[1] for m in msgs if m.address == "/musicgen/warning"]
                got_note = warnings[0] if warnings else ""
                time.sleep(0.2)
            else:
                answer = ws_answer(ws, request)
                assert answer["type"] == "session.updated", answer
                got_note = answer["notes"][0] if answer["notes"] else ""
            assert got_note == note, (bridge, request)
            view = stack.session.view()
            assert {k: view[k] for k in after} == after, (bridge, request)


def test_a_continuation_is_answered_once_done_or_once_failed(clients):
    stack, osc, ws = clients
    osc.send(["subscribe"])
    osc.messages(0.3)
    answers = ("/musicgen/done", "/musicgen/fail", "/musicgen/error")
    osc.send(["continue", 1])  # answered when heard; a second answer would come within the next second
    msgs = [m for m in osc.messages(20.0, until=answers, then=1.0) if m.address in answers]
    assert [m.address for m in msgs] == ["/musicgen/done"]
    osc.send(["continue/input", 1])
    msgs = [m for m in osc.messages(20.0, until=("/musicgen/fail",), then=1.0) if m.address in answers]
    assert sorted(m.address for m in msgs) == ["/musicgen/error", "/musicgen/fail"]  # the sender's error + the /fail
    ws.send(json.dumps({"type": "generate.continue", "source": "input", "event_id": "c"}))
    answer = json.loads(ws.recv(timeout=10))
    while answer.get("event_id") != "c":
        answer = json.loads(ws.recv(timeout=10))
    assert answer["type"] == "error" and "no input device" in answer["message"]


def test_a_get_right_after_a_set_answers_the_new_value(clients):
    stack, osc, _ws = clients
    for value in (4.5, 7.25, 2.0):
        osc.send(["cfg", value])
        osc.send(["get/cfg"])  # no wait in between: the get is answered after the set applied
        answers = [m.params for m in osc.messages(0.5) if m.address == "/musicgen/cfg"]
        assert answers == [[value]]


def test_an_uploaded_clip_past_the_cap_is_continued_from_its_last_30_seconds(clients):
    stack, _osc, ws = clients
    ws.send(json.dumps({"type": "input_audio.begin", "rate": 8000, "channels": 1, "codec": "s16"}))
    json.loads(ws.recv(timeout=10))
    ws.send((np.zeros(8000, "<i2")).tobytes())
    ws.send(json.dumps({"type": "input_audio.commit", "seconds": 400, "event_id": "u"}))
    answer = json.loads(ws.recv(timeout=30))
    while answer.get("event_id") != "u":
        answer = json.loads(ws.recv(timeout=30))
    assert answer["type"] == "session.updated"
    assert "input_audio.commit 400 s is more than 30 s: asking for 30 s" in answer["notes"]
    sf.write(str(stack.audio_dir / "x.wav"), np.zeros(100), 8000)  # (a file for the sandbox table)
