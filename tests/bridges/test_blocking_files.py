"""Nothing a client points at can block the music (issue 32). Protects: every file a client names is
read off the generation thread; what is not a regular file (a named pipe - with or without a
writer -, a folder, a device) and what is empty or over the size cap is refused before it is read;
a `~user` name is taken literally; each request is answered once, within its deadline, the music
steps on throughout and the next request is answered at once - over OSC and over WebSocket. A
stuck generation thread is told to every client as `stalled` (naming where it is), and again when
it goes on."""

from __future__ import annotations

import json
import os
import socket
import stat
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from musicgen_live.bridges.osc import encode
from musicgen_live.streamer.session import PLAYING
from pythonosc.osc_message import OscMessage
from websockets.sync.client import connect

from .conftest import Stack

RATE = 32000
REFUSED_S = 5.0  # a refusal comes at once
DONE_S = 30.0  # a good file's continuation is encoded and prefilled first (tiny: ~1 s; a loaded host: more)
MAX_GAP_S = 0.5  # no two steps further apart than this while the request is handled (tiny steps ~every 20 ms)


def _wav(path: Path, seconds: float = 2.0) -> None:
    sf.write(str(path), np.random.default_rng(1).uniform(-0.2, 0.2, (int(RATE * seconds), 1)), RATE)


def _trickle(fifo: Path, stop: threading.Event) -> None:
    """A writer that feeds a valid WAV into `fifo` over ~5 s (as a slow network read would)."""
    tmp = fifo.with_name("source.tmp.wav")
    _wav(tmp, 3.0)
    data = tmp.read_bytes()
    tmp.unlink()
    try:
        fd = os.open(fifo, os.O_WRONLY)  # waits for a reader: the server must never become that reader for long
    except OSError:
        return
    try:
        for i in range(0, len(data), len(data) // 50):
            if stop.wait(0.1):
                break
            os.write(fd, data[i : i + len(data) // 50])
    except OSError:  # the reader went away (BrokenPipe)
        pass
    finally:
        os.close(fd)


def _hazard(kind: str, folder: Path, stop: threading.Event) -> tuple[str, str, str]:
    """Make the hazard in `folder`: (the name a client sends, "fail" or "done", words the answer has)."""
    if kind == "fifo":
        os.mkfifo(folder / "pipe.wav")
        return "pipe.wav", "fail", "named pipe"
    if kind == "trickling fifo":
        os.mkfifo(folder / "slow.wav")
        threading.Thread(target=_trickle, args=(folder / "slow.wav", stop), daemon=True).start()
        return "slow.wav", "fail", "named pipe"
    if kind == "folder":
        (folder / "loops.wav").mkdir()
        return "loops.wav", "fail", "folder"
    if kind == "device":
        try:
            os.mknod(folder / "zero.wav", stat.S_IFCHR | 0o600, os.makedev(1, 5))  # like /dev/zero
        except PermissionError:
            pytest.skip("making a device node needs root (CI runs as root)")
        return "zero.wav", "fail", "device"
    if kind == "empty":
        (folder / "empty.wav").write_bytes(b"")
        return "empty.wav", "fail", "empty"
    if kind == "sparse":
        with open(folder / "huge.wav", "wb") as f:
            f.truncate(4 * 1024**3)  # 4.3 GB of holes: no disk used, over the 1024 MB cap
        return "huge.wav", "fail", "MB"
    assert kind == "tilde"
    (folder / "~root").mkdir()
    _wav(folder / "~root" / "x.wav")
    return "~root/x.wav", "done", ""  # read from inside the folder, never from root's home


def _max_gap(stack: Stack, since: float, until: float) -> float:
    """The longest time between two steps (or the window's ends and a step) in [since, until]."""
    times = [since] + [t for t, *_ in list(stack.session.step_log) if since <= t <= until] + [until]
    return max(b - a for a, b in zip(times, times[1:]))


def _osc_ask(stack: Stack, name: str) -> tuple[str, str, float]:
    """continue/file over OSC from a subscribed peer: ("done" / "fail", its text, seconds taken),
    then a get that must be answered at once."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        server = ("127.0.0.1", stack.osc_port)

        def until(*addresses: str, timeout: float) -> OscMessage:
            end = time.perf_counter() + timeout
            while time.perf_counter() < end:
                sock.settimeout(max(0.01, end - time.perf_counter()))
                try:
                    m = OscMessage(sock.recvfrom(65536)[0])
                except TimeoutError:
                    break
                if m.address in addresses:
                    return m
            raise AssertionError(f"none of {addresses} within {timeout} s")

        sock.sendto(encode("/musicgen/subscribe", ()), server)
        until("/musicgen/subscribed", timeout=5)
        t0 = time.perf_counter()
        sock.sendto(encode("/musicgen/continue/file", (name, 2.0)), server)
        m = until("/musicgen/done", "/musicgen/fail", timeout=DONE_S)
        took = time.perf_counter() - t0
        t1 = time.perf_counter()
        sock.sendto(encode("/musicgen/get/cfg", ()), server)
        until("/musicgen/cfg", timeout=2)
        assert time.perf_counter() - t1 < 2
        return m.address.rsplit("/", 1)[1], " ".join(str(p) for p in m.params), took


def _ws_ask(stack: Stack, name: str) -> tuple[str, str, float]:
    with connect(f"ws://127.0.0.1:{stack.ws_port}/", open_timeout=10) as ws:

        def until(event_id: int, timeout: float) -> dict:
            end = time.perf_counter() + timeout
            while True:
                msg = json.loads(ws.recv(timeout=max(0.01, end - time.perf_counter())))
                if msg.get("event_id") == event_id:
                    return msg

        t0 = time.perf_counter()
        ws.send(json.dumps({"type": "generate.continue", "source": "file", "path": name, "seconds": 2, "event_id": 1}))
        m = until(1, DONE_S)
        took = time.perf_counter() - t0
        t1 = time.perf_counter()
        ws.send(json.dumps({"type": "state.get", "event_id": 2}))
        assert until(2, 2)["type"] == "state"
        assert time.perf_counter() - t1 < 2
        kind = {"session.updated": "done", "error": "fail"}[m["type"]]
        return kind, m.get("message", ""), took


HAZARDS = ["fifo", "trickling fifo", "folder", "device", "empty", "sparse", "tilde"]


@pytest.mark.parametrize("bridge", ["osc", "ws"])
@pytest.mark.parametrize("kind", HAZARDS)
def test_a_file_a_client_names_never_blocks_the_music(tiny, tmp_path, kind, bridge):
    stop = threading.Event()
    stack = Stack(tiny, tmp_path)
    try:
        name, expected, words = _hazard(kind, tmp_path, stop)
        deadline = time.perf_counter() + 10
        while stack.session.state != PLAYING or stack.session.steps < 20:  # playing, past its start
            assert time.perf_counter() < deadline
            time.sleep(0.05)
        seconds0, t0 = stack.session.snapshot()["seconds"], time.perf_counter()
        answer, text, took = (_osc_ask if bridge == "osc" else _ws_ask)(stack, name)
        time.sleep(0.3)  # and on after it (a refusal can take a few ms: less than a frame)
        t1 = time.perf_counter()
        assert (answer, kind) == (expected, kind), text
        assert words in text and len(text) < 300, text  # one sentence that says what is wrong
        assert took < (DONE_S if expected == "done" else REFUSED_S)
        assert _max_gap(stack, t0, t1) < MAX_GAP_S  # the music stepped on throughout
        assert stack.session.snapshot()["seconds"] > seconds0
        assert stack.session.errors == 0
    finally:
        stop.set()
        if kind == "trickling fifo":  # release a writer still waiting for a reader
            try:
                os.close(os.open(tmp_path / "slow.wav", os.O_RDONLY | os.O_NONBLOCK))
            except OSError:
                pass
        stack.close()


def test_a_read_past_its_deadline_is_given_up_and_the_music_goes_on(tiny, tmp_path, monkeypatch):
    """A file on a stalled share: the read blocks longer than [stream] read_timeout_s."""
    import musicgen_live.streamer.audio_requests as session_module  # where a session reads its files

    release = threading.Event()

    def stalled_read(*_args, **_kwargs):
        release.wait(30)  # a network share that does not answer
        raise OSError("never")

    monkeypatch.setattr(session_module, "read_audio_file", stalled_read)
    _wav(tmp_path / "loop.wav")
    stack = Stack(tiny, tmp_path, stream={"read_timeout_s": 1.0})
    try:
        t0 = time.perf_counter()
        answer, text, took = _osc_ask(stack, "loop.wav")
        assert answer == "fail" and "took longer than 1 s" in text, text
        assert 0.9 < took < 3
        assert _max_gap(stack, t0, time.perf_counter()) < MAX_GAP_S
    finally:
        release.set()
        stack.close()


def test_a_stalled_generation_thread_is_told_to_every_client_and_clears(tiny, tmp_path):
    """A test hook blocks one step for 2 s: OSC subscribers and WebSocket clients hear `stalled`
    (with where the thread is) and then `playing`; /status never says playing meanwhile."""
    stack = Stack(tiny, tmp_path, stream={"stall_s": 0.5})  # a stall is told after 0.5 s: 1.5 s of /status
    gen = stack.session.gen
    step, block = gen.step, threading.Event()

    def blocking_step():  # the hook: one step that takes 2 s
        if block.is_set():
            block.clear()
            time.sleep(2.0)
        return step()

    gen.step = blocking_step
    try:
        with (
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock,
            connect(f"ws://127.0.0.1:{stack.ws_port}/", open_timeout=10) as ws,
        ):
            sock.bind(("127.0.0.1", 0))
            sock.sendto(encode("/musicgen/subscribe", ()), ("127.0.0.1", stack.osc_port))
            time.sleep(0.5)
            block.set()
            osc, web, end = [], [], time.perf_counter() + 8
            while time.perf_counter() < end and not (
                ("phase", "playing") in [(a, p[0]) for a, p in osc if p] and {"phase": "playing"} in web
            ):
                sock.settimeout(0.05)
                try:
                    m = OscMessage(sock.recvfrom(65536)[0])
                    osc.append((m.address.rsplit("/", 1)[1], m.params))
                except TimeoutError:
                    pass
                try:
                    msg = json.loads(ws.recv(timeout=0.05))
                    if msg["type"] == "state.changed" and "phase" in msg["changes"]:
                        web.append(msg["changes"])
                    elif msg["type"] == "error":
                        web.append({"error": msg["message"]})
                except TimeoutError:
                    pass
        phases = [p[0] for a, p in osc if a == "phase"]
        assert phases == ["stalled", "playing"], osc
        errors = [p[1] for a, p in osc if a == "error"]
        assert any("blocking_step" in e and "no step for" in e for e in errors), errors
        stalled_at = next(i for i, (a, p) in enumerate(osc) if a == "phase")
        resumed_at = max(i for i, (a, p) in enumerate(osc) if a == "phase")
        assert all(p[0] != "playing" for a, p in osc[stalled_at:resumed_at] if a == "status")
        assert "stalled" in [p[0] for a, p in osc[stalled_at:resumed_at] if a == "status"]
        assert web[0] == {"phase": "stalled"} and {"phase": "playing"} in web, web
        assert any("error" in w and "blocking_step" in w["error"] for w in web), web
        assert stack.session.snapshot()["phase"] != "stalled" and stack.session.stalled is None
    finally:
        stack.close()
