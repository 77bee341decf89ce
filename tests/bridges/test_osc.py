"""OSC over real UDP sockets, with python-osc clients and Debian's oscsend / oscdump.
Protects: replies, echoes to subscribers, reply ports, bundles scheduled on the audio timeline,
errors for bad input, and a fuzz of malformed packets that must not stop the music."""

from __future__ import annotations

import asyncio
import random
import shutil
import socket
import subprocess
import threading
import time

import pytest
from pythonosc.osc_bundle_builder import OscBundleBuilder
from pythonosc.osc_message import OscMessage
from pythonosc.osc_message_builder import OscMessageBuilder
from pythonosc.udp_client import SimpleUDPClient

from ..polling import until
from .conftest import free_port


class Peer:
    """A python-osc client that sends from, and listens on, one UDP port (like most OSC tools)."""

    def __init__(self, server_port: int):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(5)
        self.server = ("127.0.0.1", server_port)

    def send(self, address: str, *args):
        b = OscMessageBuilder(address=address)
        for a in args:
            b.add_arg(a)
        self.sock.sendto(b.build().dgram, self.server)

    def raw(self, data: bytes):
        self.sock.sendto(data, self.server)

    def expect(self, address: str, timeout: float = 5.0) -> OscMessage:
        end = time.time() + timeout
        while time.time() < end:
            try:
                data, _ = self.sock.recvfrom(65536)
            except TimeoutError:
                break
            msg = OscMessage(data)
            if msg.address == address:
                return msg
        raise AssertionError(f"no {address} within {timeout} s")

    def close(self):
        self.sock.close()


@pytest.fixture
def peer(stack):
    p = Peer(stack.osc_port)
    yield p
    p.close()


def test_ping_and_queries_answer_the_sender(peer):
    peer.send("/musicgen/ping", 42)
    assert peer.expect("/musicgen/pong").params == [42]
    peer.send("/musicgen/get/top_k")
    assert peer.expect("/musicgen/top_k").params == [250]


def test_parameters_land_and_are_echoed_to_subscribers(stack, peer):
    peer.send("/musicgen/subscribe")
    peer.expect("/musicgen/subscribed")
    peer.send("/musicgen/cfg", 5.5)
    assert peer.expect("/musicgen/cfg").params == [5.5]
    assert stack.session.params.cfg == 5.5
    peer.send("/musicgen/top_k", 40.0)  # Pd and Open Stage Control send floats
    assert peer.expect("/musicgen/top_k").params == [40]
    peer.send("/musicgen/prompt", "late", "night", "garage")
    assert peer.expect("/musicgen/prompt").params == ["late night garage"]
    assert stack.session.prompts == [("late night garage", 1.0)]


def test_bad_input_is_answered_on_error(peer):
    peer.send("/musicgen/cfg", "loud")
    msg = peer.expect("/musicgen/error")
    assert msg.params[0] == "/musicgen/cfg" and "needs a number" in msg.params[1]
    peer.send("/somewhere/else", 1)
    assert "start with /musicgen/" in peer.expect("/musicgen/error").params[1]
    peer.raw(b"\x00\x01garbage")
    assert "malformed" in peer.expect("/musicgen/error").params[1]
    peer.send("/musicgen/continue/file", "../../etc/passwd")
    assert "outside the folders" in peer.expect("/musicgen/error").params[1]


def test_replies_go_to_the_configured_reply_port(tiny, tmp_path):
    from musicgen_live.bridges.config import OscConfig

    from .conftest import Stack

    listen = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    listen.bind(("127.0.0.1", 0))
    listen.settimeout(5)
    s = Stack(tiny, tmp_path, osc_cfg=OscConfig(reply_port=listen.getsockname()[1]))
    try:
        SimpleUDPClient("127.0.0.1", s.osc_port).send_message("/musicgen/ping", 7)
        data, _ = listen.recvfrom(65536)
        assert OscMessage(data).address == "/musicgen/pong"
    finally:
        s.close()
        listen.close()


def test_a_future_bundle_lands_on_the_audio_timeline(stack, peer):
    lead = stack.running.osc._lead_s()
    bundle = OscBundleBuilder(time.time() + lead + 1.0)
    msg = OscMessageBuilder(address="/musicgen/temperature")
    msg.add_arg(0.5)
    bundle.add_content(msg.build())
    peer.raw(bundle.build().dgram)
    time.sleep(0.5)  # a wait that only a fast host shortens: what is asserted is "not early"
    assert stack.session.params.temperature == 1.0  # not yet: it is scheduled
    assert until(lambda: stack.session.params.temperature == 0.5)


def test_debian_oscsend_and_oscdump(stack):
    if not shutil.which("oscsend"):
        pytest.fail("liblo-tools is not installed: run scripts/setup.sh")
    port = free_port()
    dump = subprocess.Popen(["oscdump", "-L", str(port)], stdout=subprocess.PIPE, text=True)
    lines: list[str] = []  # -L: oscdump writes each message as a line as it comes

    def read() -> None:
        for line in dump.stdout:
            lines.append(line)

    threading.Thread(target=read, daemon=True).start()
    try:
        # oscdump binds its port as it starts: subscribe again until the server's answer reaches it
        def subscribed() -> bool:
            subprocess.run(["oscsend", "127.0.0.1", str(stack.osc_port), "/musicgen/subscribe", "i", str(port)])
            return any("/musicgen/subscribed" in line for line in lines)

        assert until(subscribed, seconds=20, every=0.3), "".join(lines)
        subprocess.run(["oscsend", "127.0.0.1", str(stack.osc_port), "/musicgen/cfg", "f", "4.25"], check=True)
        assert until(lambda: any("/musicgen/cfg f 4.25" in line for line in lines)), "".join(lines)
        assert until(lambda: any("/musicgen/position" in line for line in lines))  # notifications flow
    finally:
        dump.terminate()
        dump.wait(timeout=5)
    assert stack.session.params.cfg == 4.25


def test_fuzz_malformed_packets_never_stop_the_music(stack, peer):
    rng = random.Random(1)
    addresses = [
        "/musicgen/cfg",
        "/musicgen/prompt",
        "/musicgen/play",
        "/musicgen/prompt/weighted",
        "/musicgen/top_k",
        "/musicgen/get/state",
        "/musicgen/nope",
        "/x",
        "/musicgen/continue",
        "/musicgen/seed",
        "/musicgen/ctrl",
    ]
    frame = stack.session.snapshot()["frame"]
    for i in range(3000):
        kind = rng.random()
        if kind < 0.4:
            peer.raw(bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 64))))
        else:
            b = OscMessageBuilder(address=rng.choice(addresses))
            for _ in range(rng.randint(0, 4)):
                b.add_arg(
                    rng.choice(
                        [
                            rng.uniform(-1e9, 1e9),
                            rng.randint(-(2**31), 2**31 - 1),
                            "x" * rng.randint(0, 50),
                            True,
                            b"\x00\xff",
                            float("inf"),
                        ]
                    )
                )
            data = b.build().dgram
            if kind < 0.6:
                data = data[: rng.randint(0, len(data))]  # truncated
            peer.raw(data)
        if i % 500 == 0:
            time.sleep(0.05)
    time.sleep(1.0)
    peer.sock.settimeout(0.2)
    try:
        while True:
            peer.sock.recvfrom(65536)  # drain the errors
    except TimeoutError:
        pass
    peer.sock.settimeout(5)
    peer.send("/musicgen/ping", 1)
    assert peer.expect("/musicgen/pong").params == [1]
    assert stack.running.osc.errors_sent > 500  # bad packets were answered
    assert stack.session.snapshot()["frame"] > frame  # and the music went on
    assert stack.session.state == "playing"  # the flood holds no pause or stop: nothing may have stopped it


def test_send_command_talks_to_a_running_server(stack, capsys):
    from musicgen_live.bridges.cli import main

    assert main(["send", "--port", str(stack.osc_port), "ping", "9"]) == 0
    assert "/musicgen/pong 9" in capsys.readouterr().out
    assert main(["send", "--port", str(stack.osc_port), "/musicgen/cfg", "banana"]) == 2
    assert "needs a number" in capsys.readouterr().out
    assert main(["send", "--port", str(stack.osc_port), "cfg", "7"]) == 0
    assert until(lambda: stack.session.params.cfg == 7.0)


def test_a_port_taken_is_said_as_setup_trouble(stack):
    """A second OSC bridge on the port the stack holds: one sentence, as a SetupError (the CLI prints
    it and exits 2; it is this machine's trouble, not a bad request's), and the music plays on."""
    from musicgen_live.bridges.osc import start_osc
    from musicgen_live.bridges.protocol import Vocabulary
    from musicgen_live.engine.errors import SetupError

    frame = stack.session.snapshot()["frame"]
    with pytest.raises(SetupError, match=f"cannot listen for OSC on 127.0.0.1:{stack.osc_port}"):
        asyncio.run(start_osc(stack.session, Vocabulary({}), stack.osc_cfg))
    deadline = time.monotonic() + 10
    while stack.session.snapshot()["frame"] <= frame and time.monotonic() < deadline:
        time.sleep(0.05)
    assert stack.session.snapshot()["frame"] > frame


def test_osc_over_tcp_with_slip_framing(tiny, tmp_path):
    from musicgen_live.bridges.config import OscConfig
    from musicgen_live.bridges.osc import SLIP_END, encode, slip_decode, slip_encode

    from .conftest import Stack

    assert slip_decode(slip_encode(b"a\xc0b\xdbc")[1:-1]) == b"a\xc0b\xdbc"
    s = Stack(tiny, tmp_path, osc_cfg=OscConfig(tcp=True))
    try:
        with socket.create_connection(("127.0.0.1", s.osc_port), timeout=5) as tcp:
            tcp.sendall(slip_encode(encode("/musicgen/ping", (5,))) + slip_encode(encode("/musicgen/cfg", (4.5,))))
            tcp.sendall(slip_encode(b"\x00garbage"))
            data = b""
            while data.count(bytes([SLIP_END])) < 4:
                data += tcp.recv(65536)
            frames = [slip_decode(f) for f in data.split(bytes([SLIP_END])) if f]
            addresses = [OscMessage(f).address for f in frames]
            assert "/musicgen/pong" in addresses and "/musicgen/error" in addresses
        assert until(lambda: s.session.params.cfg == 4.5)
    finally:
        s.close()
