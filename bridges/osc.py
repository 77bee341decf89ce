"""OSC over UDP: a thin adapter from packets to the shared vocabulary and back.

python-osc does the encoding and decoding; this module is a plain asyncio datagram protocol so it
never sleeps in the dispatcher (python-osc's own server waits for a bundle's timetag in the event
loop). A bundle with a future timetag is scheduled so that its change is *heard* at that moment:
it is applied one expected latency (buffer + delay pattern + codec hold-back) early, and never
further ahead than `horizon_s`.

Replies go to the sender, or to `reply_port` on the sender's host for tools that listen on another
port than they send from. With `tcp = true` the same vocabulary is also served over TCP with SLIP
framing (OSC 1.1), replies and subscriptions going back over the connection. Subscribers
(`/subscribe [port] [host]`) get every applied change, whoever made it (OSC, WebSocket, the
browser, stdin): `/cfg 4.5`, `/prompt "..."`, `/transport playing` ...; and the notifications
`/status`, `/position`, `/underrun`, `/done`, `/fail`, `/error`, `/warning`, and with `serve --link`
`/link tempo beat phase quantum peers` beside each `/status`.

One idea at ~510 lines: OSC, end to end (UDP and SLIP over TCP, timetags, replies, subscribers).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import math
import os
import socket
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from musicgen_live.streamer import commands as c
from pythonosc.osc_message import OscMessage
from pythonosc.osc_message_builder import OscMessageBuilder
from pythonosc.osc_packet import OscPacket

if TYPE_CHECKING:  # `send` imports this module to encode one message: it must not load torch
    from musicgen_live.streamer.session import Session

from .config import OscConfig, is_loopback
from .limits import Budget, Budgets
from .protocol import Outcome, ProtocolError, Vocabulary, state_replies

Addr = tuple[str, int]
SLIP_END, SLIP_ESC, SLIP_ESC_END, SLIP_ESC_ESC = 0xC0, 0xDB, 0xDC, 0xDD
MAX_TCP_PACKET = 1 << 16
MAX_DRAIN = 20_000  # datagrams dropped at most when reading resumes (~20 ms of work)
INTAKE_PAUSE_S = 0.02  # how long the UDP socket goes unread when all senders together exceed [osc] max_intake
MAX_PACKET = 8192  # bytes: a 2000-character prompt and its arguments fit; larger packets are not parsed
MAX_SUBSCRIBERS = 64
MAX_SUBSCRIBERS_PER_HOST = 8
FLOAT32_MAX = 3.4028234663852886e38


def slip_encode(packet: bytes) -> bytes:
    body = packet.replace(bytes([SLIP_ESC]), bytes([SLIP_ESC, SLIP_ESC_ESC])).replace(
        bytes([SLIP_END]), bytes([SLIP_ESC, SLIP_ESC_END])
    )
    return bytes([SLIP_END]) + body + bytes([SLIP_END])


def slip_decode(frame: bytes) -> bytes:
    out, esc = bytearray(), False
    for b in frame:
        if esc:
            out.append(SLIP_END if b == SLIP_ESC_END else SLIP_ESC if b == SLIP_ESC_ESC else b)
            esc = False
        elif b == SLIP_ESC:
            esc = True
        else:
            out.append(b)
    return bytes(out)


class TcpPeer(asyncio.Protocol):
    """One OSC-over-TCP connection: SLIP frames in, SLIP frames out."""

    def __init__(self, bridge: OscBridge) -> None:
        self.bridge = bridge
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buf.extend(data)
        while True:
            end = self.buf.find(bytes([SLIP_END]))
            if end < 0:
                if len(self.buf) > MAX_TCP_PACKET:  # a frame that never ends: drop it, say so
                    self.buf.clear()
                    self.bridge._send(self, "error", ("", "OSC packet over TCP too large"))
                return
            frame, self.buf = bytes(self.buf[:end]), self.buf[end + 1 :]
            if frame:
                self.bridge.packet_received(slip_decode(frame), self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.bridge.subscribers.discard(self)
        self.transport = None

    def write(self, packet: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(slip_encode(packet))


Peer = Addr | TcpPeer  # who sent a packet, or is subscribed: a UDP address or a TCP connection


def encode(address: str, args: tuple[object, ...]) -> bytes:
    """An OSC message; any value can be sent (floats beyond float32 as doubles, integers beyond
    int64 and other objects as text), so no answer ever fails to encode."""
    b = OscMessageBuilder(address=address)
    for a in args:
        if a is None:
            b.add_arg("", "s")
        elif isinstance(a, bool):
            b.add_arg(int(a))
        elif isinstance(a, int):
            b.add_arg(a) if -(2**63) <= a < 2**63 else b.add_arg(str(a))
        elif isinstance(a, float):
            b.add_arg(a, "f" if not math.isfinite(a) or abs(a) <= FLOAT32_MAX else "d")
        elif isinstance(a, (str, bytes)):
            b.add_arg(a)
        else:
            b.add_arg(json.dumps(a) if isinstance(a, (dict, list)) else str(a))
    return b.build().dgram


class Subscribers:
    """Who hears every change: bounded (per host and in all) and expiring unless renewed, so a flood
    of /subscribe cannot turn the server into an amplifier. Hosts are numeric addresses only (no
    name lookups in the event loop)."""

    def __init__(self, ttl_s: float, per_host: int = MAX_SUBSCRIBERS_PER_HOST, total: int = MAX_SUBSCRIBERS) -> None:
        self.ttl_s = ttl_s
        self.per_host = per_host
        self.total = total
        self._until: dict[Peer, float] = {}  # (host, port) or a TcpPeer -> when it lapses (monotonic)

    def add(self, who: Peer) -> None:
        """Subscribe or renew; ValueError with the sentence to send back when there is no room."""
        now = time.monotonic()
        self.expire(now)
        if who not in self._until:
            host = who[0] if isinstance(who, tuple) else "tcp"
            if sum(1 for w in self._until if isinstance(w, tuple) and w[0] == host) >= self.per_host:
                raise ValueError(f"too many subscriptions from {host} (at most {self.per_host})")
            if len(self._until) >= self.total:
                raise ValueError(f"too many subscribers (at most {self.total})")
        self._until[who] = now + self.ttl_s

    def renew(self, who: Peer) -> None:
        if who in self._until:
            self._until[who] = time.monotonic() + self.ttl_s

    def discard(self, who: Peer) -> None:
        self._until.pop(who, None)

    def expire(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        for who in [w for w, until in self._until.items() if until <= now]:
            del self._until[who]

    def __iter__(self) -> Iterator[Peer]:
        return iter(list(self._until))

    def __len__(self) -> int:
        return len(self._until)

    def __contains__(self, who: object) -> bool:
        return who in self._until


UNDERRUN_EVERY_S = 1.0  # /underrun at most this often (a long stretch below real time: one a second)


class OscBridge(asyncio.DatagramProtocol):
    def __init__(self, session: Session, vocab: Vocabulary, cfg: OscConfig) -> None:
        self.session = session
        self.vocab = vocab
        self.cfg = cfg
        self.prefix = "/" + cfg.prefix.strip("/")
        self.transport: asyncio.DatagramTransport | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.subscribers = Subscribers(cfg.subscription_s)
        self.pending: dict[int, tuple[Peer, str]] = {}  # ticket id -> (reply to, the address it came on)
        self.allowed = [ipaddress.ip_network(n, strict=False) for n in cfg.allow]
        self.received = 0
        self.refused_peers = 0  # packets from peers beyond loopback that [osc] allow does not list
        self.budgets = Budgets(cfg.max_rate)  # per host
        self.intake = Budget(cfg.max_intake)  # all UDP datagrams together
        self.intake_pauses = 0
        self.intake_dropped = 0  # datagrams dropped unread after a pause
        self._drain: socket.socket | None = None
        self.over_budget = 0
        self.errors_sent = 0
        self._underruns = 0
        self._next_underrun = 0.0  # monotonic: /underrun is sent at most every UNDERRUN_EVERY_S
        # host -> the port its tools listen on (`/subscribe PORT` from a port other than PORT): answers
        # to requests from that host's other ports go there (oscsend sends from a new port every time)
        self.listen_ports: dict[str, int] = {}
        self.tcp_server: asyncio.AbstractServer | None = None
        session.listeners.append(self._on_session_event)

    # -- asyncio plumbing ----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.loop = asyncio.get_running_loop()
        sock = transport.get_extra_info("socket")
        if sock is not None:  # a second handle on the same socket, to drop a flood's backlog cheaply
            self._drain = socket.socket(sock.family, sock.type, fileno=os.dup(sock.fileno()))
            self._drain.setblocking(False)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._drain is not None:
            self._drain.close()
            self._drain = None

    def datagram_received(self, data: bytes, addr: Addr) -> None:
        if not self.intake.allow():  # a flood (spoofed senders too): stop reading for a moment
            self._pause_intake()
            return
        self.packet_received(data, addr)

    def _pause_intake(self) -> None:
        """Stop reading the UDP socket for `INTAKE_PAUSE_S`: what arrives meanwhile waits in (or is
        dropped by) the kernel at no cost to us, so a datagram flood cannot take the interpreter
        from the generation thread. Legitimate senders lose packets only while a flood lasts."""
        self.intake_pauses += 1
        transport = self.transport
        if transport is None or self.loop is None or not transport.is_reading():  # type: ignore[attr-defined]
            return
        transport.pause_reading()  # type: ignore[attr-defined]
        self.loop.call_later(INTAKE_PAUSE_S, self._resume_intake)

    def _resume_intake(self) -> None:
        """Drop what queued up while reading was paused (a plain recv loop: ~1 us a datagram, not
        the ~10 of a parsed one), so requests sent after a flood are not stuck behind its backlog."""
        if self.transport is None or self.transport.is_closing():
            return
        if self._drain is not None:
            for _ in range(MAX_DRAIN):
                try:
                    self._drain.recv(1)
                except OSError:  # BlockingIOError: nothing left queued
                    break
                self.intake_dropped += 1
        self.transport.resume_reading()  # type: ignore[attr-defined]

    def packet_received(self, data: bytes, addr: Peer) -> None:
        """One OSC packet from a UDP address or a `TcpPeer`."""
        self.received += 1
        if not self._peer_allowed(addr):
            self.refused_peers += 1  # dropped without an answer: no reflection to unknown peers
            return
        budget = self.budgets.get(addr if isinstance(addr, TcpPeer) else addr[0])
        if not budget.allow():
            self.over_budget += 1
            if dropped := budget.complaint():
                self._send(
                    self._reply_to(addr),
                    "error",
                    ("", f"too many messages: {dropped} dropped (at most {self.cfg.max_rate:.0f} a second)"),
                )
            return
        if len(data) > MAX_PACKET:
            self._send(self._reply_to(addr), "error", ("", f"OSC packet of {len(data)} bytes: at most {MAX_PACKET}"))
            return
        self.subscribers.renew(self._reply_to(addr))
        try:
            packet = OscPacket(data)
        except Exception:  # ParseError, and whatever a hostile packet makes the parser raise
            self._send(self._reply_to(addr), "error", ("", "malformed OSC packet"))
            return
        now = time.time()
        lead = self._lead_s()
        for timed in packet.messages:
            delay = timed.time - now - lead
            if delay > 0.002:
                asyncio.get_running_loop().call_later(min(delay, self.cfg.horizon_s), self._handle, addr, timed.message)
            else:
                self._handle(addr, timed.message)

    def _peer_allowed(self, addr: Peer) -> bool:
        if isinstance(addr, TcpPeer):
            addr = _peer_address(addr)
        try:
            ip = ipaddress.ip_address(addr[0])
        except ValueError:
            return False
        return ip.is_loopback or any(ip in net for net in self.allowed)

    def _lead_s(self) -> float:
        """How long a change takes to be heard: a bundle is applied this much before its timetag."""
        return min(self.session.expected_latency_s(), self.cfg.horizon_s)

    # -- requests ------------------------------------------------------------------------------
    def _handle(self, addr: Peer, message: OscMessage) -> None:
        address = message.address
        reply_to = self._reply_to(addr)
        if not address.startswith(self.prefix + "/"):
            self._send(reply_to, "error", (address, f"addresses start with {self.prefix}/"))
            return
        try:
            outcome: Outcome = self.vocab.handle(address[len(self.prefix) + 1 :], list(message.params))
        except ProtocolError as e:
            self._send(reply_to, "error", (address, str(e)))
            return
        for r in outcome.replies:
            self._send(reply_to, r.name, r.args)
        for note in outcome.notes:
            self._send(reply_to, "warning", (address, note))
        if outcome.subscribe is not None:
            self._subscribe(addr, outcome.subscribe)
        if outcome.unsubscribe:
            self.subscribers.discard(reply_to)
            self.subscribers.discard(addr)
        source = f"osc {_peer(addr)}"
        for cmd in outcome.commands:
            self.pending[self.session.submit(cmd, source=source).id] = (reply_to, address)
        if outcome.query is not None:
            self.pending[self.session.submit(c.Query(), source=source).id] = (reply_to, outcome.query)

    def _subscribe(self, addr: Peer, args: tuple[object, ...]) -> None:
        """`/subscribe [port] [host]`: the host must be a numeric address (no name lookups)."""
        reply_to = self._reply_to(addr, listening=False)
        try:
            if isinstance(addr, TcpPeer) and not args:
                who: Peer = addr
            else:
                peer = _peer_address(addr) if isinstance(addr, TcpPeer) else addr
                port = int(float(str(args[0]))) if args else (reply_to if isinstance(reply_to, tuple) else peer)[1]
                host = str(args[1]) if len(args) > 1 else peer[0]
                if not 0 < port < 65536:
                    raise ValueError("subscribe takes [port] [host]: a port of 1..65535")
                try:
                    ipaddress.ip_address(host)
                except ValueError:
                    raise ValueError(
                        "subscribe takes [port] [host]: a numeric host address, e.g. 192.168.1.20"
                    ) from None
                who = (host, port)
            self.subscribers.add(who)
            if args and who != addr and host == peer[0]:  # "I listen on PORT": answers go there
                self.listen_ports[host] = port
        except (ValueError, TypeError, OverflowError, AttributeError) as e:
            msg = (
                str(e)
                if isinstance(e, ValueError) and str(e).startswith(("subscribe", "too many"))
                else "subscribe takes [port] [host]"
            )
            self._send(reply_to, "error", ("/subscribe", msg))
            return
        self._send(who, "subscribed", (0 if isinstance(who, TcpPeer) else who[1],))

    def _reply_to(self, addr: Peer, listening: bool = True) -> Peer:
        """Where answers to `addr`'s requests go: `[osc] reply_port` when set; the sender itself when
        it is subscribed; else (`listening`) the port its host said it listens on (`/subscribe
        PORT`); else the sender (most OSC tools listen where they send from). A subscribe's own
        answer goes to its sender (`listening=False`)."""
        if isinstance(addr, TcpPeer):
            return addr
        if self.cfg.reply_port:
            return (addr[0], self.cfg.reply_port)
        port = self.listen_ports.get(addr[0]) if listening else None
        if addr in self.subscribers or port is None or (addr[0], port) not in self.subscribers:
            return addr
        return (addr[0], port)

    # -- answers from the session (its thread) -------------------------------------------------
    def _on_session_event(self, kind: str, data: dict[str, Any]) -> None:
        if self.loop is not None and kind in ("applied", "refused", "changed", "error", "warning"):
            self.loop.call_soon_threadsafe(self._answer, kind, data)

    def _answer(self, kind: str, data: dict[str, Any]) -> None:
        if kind in ("error", "warning"):
            self._broadcast(kind, ("", data["message"]))
            return
        if kind == "changed":
            for r in state_replies(data["changes"]):
                self._broadcast(r.name, r.args)
            return
        ticket = data["ticket"]
        reply_to, address = self.pending.pop(ticket.id, (None, ""))
        continuation = isinstance(ticket.command, (*c.CONTINUATIONS, c.Follow))  # answered when heard
        if kind == "refused":
            if reply_to is not None and not ticket.superseded:  # replaced by the sender's own newer one: no error
                self._send(reply_to, "error", (address, ticket.error))
            if continuation:
                self._broadcast("fail", (ticket.name, ticket.error))
            return
        if isinstance(ticket.command, c.Query):
            if reply_to is not None and ticket.result is not None:
                r = self.vocab.answer(address, ticket.result)
                self._send(reply_to, r.name, r.args)
            return
        if ticket.note and reply_to is not None:
            self._send(reply_to, "warning", (address, ticket.note))
        if isinstance(ticket.command, c.Reset):  # no state changes, but every subscriber should know
            self._broadcast("reset", (ticket.frame or 0,))
        if continuation:
            self._broadcast("done", (ticket.name, ticket.frame or 0))

    # -- notifications -------------------------------------------------------------------------
    async def notify_forever(self) -> None:
        next_status = 0.0
        period = 1.0 / max(self.cfg.position_hz, 0.1)
        while True:
            await asyncio.sleep(period)
            self.subscribers.expire()
            if not self.subscribers:
                continue
            snap = self.session.snapshot()
            self._broadcast("position", (float(snap["seconds"]),))
            now = time.monotonic()
            if snap["underruns"] > self._underruns and now >= self._next_underrun:  # once a second at most
                self._underruns = snap["underruns"]
                self._next_underrun = now + UNDERRUN_EVERY_S
                self._broadcast("underrun", (self._underruns,))
            if now >= next_status:
                next_status = now + self.cfg.status_s
                self._broadcast(
                    "status",
                    (
                        "stalled" if snap["stalled"] else snap["state"],
                        float(snap["seconds"]),
                        float(snap["buffer_ms"]),
                        int(snap["underruns"]),
                    ),
                )
                if snap["link"]:  # serve --link: /link tempo beat phase quantum peers
                    beat = snap["link"]
                    self._broadcast("link", tuple(beat[k] for k in ("tempo", "beat", "phase", "quantum", "peers")))

    def _broadcast(self, name: str, args: tuple[object, ...]) -> None:
        for sub in self.subscribers:
            self._send(sub, name, args)

    def _send(self, addr: Peer, name: str, args: tuple[object, ...]) -> None:
        if name == "error":
            self.errors_sent += 1
        packet = encode(f"{self.prefix}/{name}", args)
        if isinstance(addr, TcpPeer):
            addr.write(packet)
            return
        if self.transport is None or self.transport.is_closing():  # an answer that outlived the server
            return
        try:
            self.transport.sendto(packet, addr)
        except (OSError, ValueError):
            pass  # an unreachable or invalid peer must not disturb anything else


def _peer(addr: Peer) -> str:
    if isinstance(addr, TcpPeer):
        host, port = _peer_address(addr)
        return f"tcp {host}:{port}"
    return f"{addr[0]}:{addr[1]}"


def _peer_address(peer: TcpPeer) -> tuple[str, int]:
    """A TCP peer's (host, port); ("", 0) once it has gone."""
    name = peer.transport.get_extra_info("peername") if peer.transport is not None else None
    return (str(name[0]), int(name[1])) if name else ("", 0)


async def start_osc(session: Session, vocab: Vocabulary, cfg: OscConfig) -> tuple[OscBridge, asyncio.DatagramTransport]:
    from musicgen_live.engine.errors import SetupError

    if not is_loopback(cfg.host) and not cfg.allow:
        raise SetupError(
            f"OSC would listen on {cfg.host}, beyond loopback, with no authentication: list the "
            'peers allowed to control it in [osc] allow (addresses or networks, e.g. "192.168.1.0/24")'
        )
    try:
        for net in cfg.allow:
            ipaddress.ip_network(net, strict=False)
    except ValueError as e:
        raise SetupError(f"[osc] allow: {e}") from None
    _quiet_python_osc()
    loop = asyncio.get_running_loop()
    bridge = OscBridge(session, vocab, cfg)
    try:
        transport, _ = await loop.create_datagram_endpoint(lambda: bridge, local_addr=(cfg.host, cfg.port))
    except OSError as e:
        raise SetupError(f"cannot listen for OSC on {cfg.host}:{cfg.port} ({e.strerror or e})") from None
    if cfg.tcp:
        try:
            server = await loop.create_server(lambda: TcpPeer(bridge), cfg.host, cfg.port)
        except OSError as e:
            transport.close()
            raise SetupError(f"cannot listen for OSC over TCP on {cfg.host}:{cfg.port} ({e.strerror or e})") from None
        bridge.tcp_server = server
    asyncio.ensure_future(bridge.notify_forever())
    return bridge, transport


class _PythonOscWarnings(logging.Filter):
    """python-osc logs a warning (with the raw datagram) on the root logger for every odd packet it
    parses; a flood of them would fill the console. The packet is answered with /error anyway."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "pythonosc" not in record.pathname


def _quiet_python_osc() -> None:
    root = logging.getLogger()
    if not any(isinstance(f, _PythonOscWarnings) for f in root.filters):
        root.addFilter(_PythonOscWarnings())
