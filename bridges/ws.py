"""WebSocket (JSON control + binary audio) and the browser client, on one port.

Client -> server, JSON text messages with a `type` (and an optional `event_id`, echoed back):
  session.update    {prompt?, weighted_prompts? [[text, weight], ...], cfg?, temperature?, top_k?,
                     top_p?, seed?, gain?, context?, fade?, cfg_beta?}  (a fade with a prompt is its crossfade)
  command           {name, args}: any request of the shared vocabulary (`bridges.protocol`)
  playback.control  {action: play|pause|stop|reset}
  generate.continue {source: history|input|file, seconds?, path?}
  melody.set        {source: history|input|file|off, seconds?, path?}  (a melody checkpoint's melody)
  style.set         {source: history|input|file|off, seconds?, path?}  (a MusicGen-Style checkpoint's style)
  audio.subscribe   {enabled: bool, codec?: f32|s16}
  input_audio.begin {rate, channels?, codec?: f32|s16}, then binary frames of interleaved PCM,
  input_audio.commit {seconds?, use?: continue|melody|style}   -> continue from (or follow the melody or style of)
                     the uploaded audio
  state.get
Server -> client: session.created {session, client, state}; session.updated {applied, frame,
seconds, notes} once a request took effect (or error {message}); state; state.changed {changes,
source} to every client whenever anything changed, whoever changed it; warning; error; and binary
audio frames: a 24-byte little-endian header (magic b"MGLA", version 1, codec 0=f32 1=s16,
channels, 0, sample rate u32, first sample index u64, samples per channel u32) then interleaved PCM.

One idea at ~580 lines: this protocol, end to end (the gate that admits a client, its messages,
its upload, its audio fan-out); the vocabulary it shares with the other bridges is `protocol`.

Every client has a bounded queue; a slow client loses its oldest audio and gets a warning, and
never slows the engine. Browsers: the Origin must be this server's own (or configured); beyond
loopback a token is required. The same port answers plain HTTP GETs with the browser client.
"""

from __future__ import annotations

import asyncio
import ipaddress
import itertools
import json
import struct
import time
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qs, urlparse

import numpy as np
from musicgen_live.engine.errors import SetupError
from musicgen_live.streamer import commands as c
from musicgen_live.streamer.controls import CONTROLS, DEFAULT_CONTINUE_S, DEFAULT_MELODY_S, DEFAULT_STYLE_S
from musicgen_live.streamer.session import Session
from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from .config import WebSocketConfig, is_loopback
from .limits import Budget
from .protocol import Outcome, ProtocolError, Vocabulary, continue_seconds, melody_seconds, style_seconds

MAGIC = b"MGLA"
HEADER = struct.Struct("<4sBBBBIQI")
CODECS = {"f32": 0, "s16": 1}
WEB = Path(__file__).resolve().parent / "web"
STATIC = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/client.js": ("client.js", "text/javascript"),
    "/worklet.js": ("worklet.js", "text/javascript"),
}
# the controls as the browser page builds its faders: the one table of names and ranges
CONTROL_TABLE = {
    name: {"lo": ctl.lo, "hi": ctl.hi, "integer": ctl.kind is int, "meaning": ctl.meaning}
    for name, ctl in CONTROLS.items()
}
ANSWER_TIMEOUT_S = 60.0  # a request not answered by then gets an error (a continuation on a slow CPU takes a while)
_client_numbers = itertools.count(1)
DEFAULT_RATE = 200.0  # text messages a second a client may send
UPLOAD_BURST_S = 1.0  # a client may send this long of `upload_mb_s` at once before it is slowed down


def audio_frame(first_sample: int, frames: np.ndarray, rate: int, codec: str) -> bytes:
    """Header + interleaved PCM for (n, channels) float32 frames."""
    n, ch = frames.shape
    if codec == "s16":
        pcm = (np.clip(frames, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()
    else:
        pcm = frames.astype("<f4").tobytes()
    return HEADER.pack(MAGIC, 1, CODECS[codec], ch, 0, rate, first_sample, n) + pcm


def join_audio_frames(frames: list[bytes]) -> list[bytes]:
    """Consecutive audio frames that continue one another (same format, contiguous sample
    indices) as one frame each run: fewer, larger messages for a hop that costs per message."""
    out: list[bytes] = []
    for frame in frames:
        if out and _continues(out[-1], frame):
            last = out[-1]
            n = struct.unpack_from("<I", last, 20)[0] + struct.unpack_from("<I", frame, 20)[0]
            out[-1] = last[:20] + struct.pack("<I", n) + last[HEADER.size :] + frame[HEADER.size :]
        else:
            out.append(frame)
    return out


def _continues(a: bytes, b: bytes) -> bool:
    if len(a) < HEADER.size or len(b) < HEADER.size or a[:12] != b[:12] or a[:4] != MAGIC:
        return False  # not both audio frames of one format (magic, version, codec, channels, rate)
    first_a, n_a = struct.unpack_from("<QI", a, 12)
    return struct.unpack_from("<Q", b, 12)[0] == first_a + n_a


@dataclass(frozen=True)
class UploadFormat:
    """What `input_audio.begin` announced for the binary frames that follow."""

    rate: int  # Hz
    channels: int
    codec: str  # "f32" | "s16"

    @property
    def width(self) -> int:
        """Bytes per sample."""
        return 4 if self.codec == "f32" else 2


class Connection(Protocol):
    """Where a client's messages go: a WebSocket connection here, or a cluster ingress's pipe."""

    async def send(self, message: str | bytes) -> None: ...


@dataclass(eq=False)  # clients are kept in a set: identity, not value
class Client:
    ws: Connection
    queue: asyncio.Queue
    audio: bool = False
    codec: str = "f32"
    dropped: int = 0
    warned_at: float = 0.0
    upload: bytearray | None = None
    upload_fmt: UploadFormat | None = None
    upload_clock: float = 0.0  # monotonic time by which its binary frames so far may have been read
    number: int = field(default_factory=lambda: next(_client_numbers))
    budget: Budget = field(default_factory=lambda: Budget(DEFAULT_RATE))
    tasks: set[asyncio.Task] = field(default_factory=set)  # answers still being waited for


class Gate:
    """Who may open a WebSocket: the Origin, the token and the number of clients (`serve` and a
    cluster's ingress ask the same questions)."""

    def __init__(self, cfg: WebSocketConfig) -> None:
        self.cfg = cfg
        self.loopback = is_loopback(cfg.host)
        if not self.loopback and not cfg.token:
            raise SetupError(f"the WebSocket server binds to {cfg.host}, beyond loopback: set [websocket] token")

    def refusal(self, origin: str | None, query: str, clients: int) -> tuple[HTTPStatus, str] | None:
        """Why this upgrade request is turned away (an HTTP status and a line), or None."""
        if origin is not None and not self._origin_ok(origin):
            return HTTPStatus.FORBIDDEN, "origin not allowed"
        if not self.loopback or self.cfg.token:
            token = parse_qs(query).get("token", [""])[0]
            if token != self.cfg.token:
                return HTTPStatus.UNAUTHORIZED, "token required"
        if clients >= self.cfg.max_clients:
            return HTTPStatus.SERVICE_UNAVAILABLE, "too many clients"
        return None

    def _origin_ok(self, origin: str) -> bool:
        """A page may connect from this server's own origin, or one configured - never judged by the
        request's Host header, which a DNS-rebinding page controls. Our own origin is a numeric
        address (or localhost on loopback) with our port: a rebinding page has a name."""
        if origin in self.cfg.origins:
            return True
        parsed = urlparse(origin)
        try:
            port = parsed.port
        except ValueError:
            return False
        if parsed.scheme not in ("http", "https") or port != self.cfg.port or not parsed.hostname:
            return False
        if parsed.hostname == "localhost":
            return self.loopback
        try:
            ip = ipaddress.ip_address(parsed.hostname)
        except ValueError:
            return False  # a name: possibly rebound to us
        return ip.is_loopback if self.loopback else True


def static_file(path: str) -> tuple[bytes, str] | None:
    """The browser client's file at URL `path` and its content type, or None."""
    if path not in STATIC:
        return None
    name, ctype = STATIC[path]
    return (WEB / name).read_bytes(), ctype


class WebSocketBridge:
    def __init__(self, session: Session, vocab: Vocabulary, cfg: WebSocketConfig) -> None:
        self.session = session
        self.vocab = vocab
        self.cfg = cfg
        self.gate = Gate(cfg)
        self.clients: set[Client] = set()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.pending: dict[int, asyncio.Future] = {}
        self.rate = session.model.sample_rate
        session.listeners.append(self._on_session_event)
        session.audio_taps.append(self._on_audio)

    # -- HTTP side: the browser client, Origin and token checks ---------------------------------
    def process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        url = urlparse(request.path)
        if request.headers.get("Upgrade", "").lower() != "websocket":
            found = static_file(url.path)
            if found is not None:
                return _response(HTTPStatus.OK, *found)
            return _response(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain")
        refused = self.gate.refusal(request.headers.get("Origin"), url.query, len(self.clients))
        if refused is not None:
            return _response(refused[0], f"{refused[1]}\n".encode(), "text/plain")
        return None

    # -- one connection ------------------------------------------------------------------------
    async def handler(self, ws: ServerConnection) -> None:
        client = await self.connect(ws)
        try:
            async for message in ws:
                await self.receive(client, message)
        except ConnectionClosed:
            pass
        finally:
            self.disconnect(client)

    async def connect(self, conn: Connection) -> Client:
        """A new client: it gets `session.created` (the state and the controls table), then
        whatever it asks for and every change."""
        client = Client(conn, asyncio.Queue(maxsize=max(2, self.cfg.client_queue)), budget=Budget(self.cfg.max_rate))
        self.clients.add(client)
        sender = asyncio.create_task(self._sender(client))
        client.tasks.add(sender)
        await self._send(
            client,
            {
                "type": "session.created",
                "session": self.vocab.info,
                "client": client.number,
                "state": self.session.snapshot(),
                "controls": CONTROL_TABLE,
            },
        )
        return client

    async def receive(self, client: Client, message: str | bytes) -> None:
        """One message from `client`: binary frames are audio uploads, text is JSON requests."""
        if isinstance(message, bytes):
            await self._on_binary(client, message)
        else:
            await self._on_text(client, message)

    def disconnect(self, client: Client) -> None:
        self.clients.discard(client)
        for task in list(client.tasks):
            task.cancel()

    async def _sender(self, client: Client) -> None:
        try:
            while True:
                await client.ws.send(await client.queue.get())
        except (ConnectionClosed, asyncio.CancelledError):
            pass

    async def _send(self, client: Client, obj: dict[str, Any]) -> None:
        try:
            await client.ws.send(json.dumps(obj))
        except ConnectionClosed:
            pass

    async def _error(self, client: Client, message: str, event_id: object = None) -> None:
        await self._send(client, {"type": "error", "message": message, "event_id": event_id})

    async def _on_text(self, client: Client, text: str) -> None:
        if not client.budget.allow():
            if dropped := client.budget.complaint():
                await self._error(
                    client, f"too many messages: {dropped} dropped (at most {self.cfg.max_rate:.0f} a second)"
                )
            return
        try:
            msg = json.loads(text)
        except (ValueError, RecursionError):
            await self._error(client, "messages must be JSON objects")
            return
        if not isinstance(msg, dict):
            await self._error(client, "messages must be JSON objects")
            return
        event_id = msg.get("event_id")
        kind = msg.get("type")
        try:
            if kind == "session.update":
                changes = {k: v for k, v in msg.items() if k not in ("type", "event_id")}
                self._answer_later(client, self.vocab.update(changes), event_id, sorted(changes))
            elif kind == "command":  # any request of the shared vocabulary, as OSC and stdin send it
                name, args = msg.get("name"), msg.get("args", [])
                if not isinstance(name, str) or not isinstance(args, list):
                    raise ProtocolError("command needs a name (string) and args (a list)")
                self._answer_later(client, self.vocab.handle(name, args), event_id, [name])
            elif kind == "playback.control":
                action = msg.get("action")
                if action not in ("play", "pause", "stop", "reset"):
                    raise ProtocolError("playback.control needs action: play, pause, stop or reset")
                self._answer_later(client, self.vocab.handle(action, []), event_id, [action])
            elif kind == "generate.continue":
                outcome = self._continue(msg)
                self._answer_later(client, outcome, event_id, [c.command_name(cmd) for cmd in outcome.commands])
            elif kind in ("melody.set", "style.set"):
                what = kind.split(".")[0]
                self._answer_later(
                    client, self._follow(what, msg), event_id, [f"{what}/{msg.get('source', 'history')}"]
                )
            elif kind == "audio.subscribe":
                codec = msg.get("codec", "f32")
                if not isinstance(codec, str) or codec not in CODECS:
                    raise ProtocolError("codec must be f32 or s16")
                client.audio, client.codec = bool(msg.get("enabled", True)), codec
                await self._send(
                    client,
                    {
                        "type": "audio.subscribed",
                        "enabled": client.audio,
                        "codec": codec,
                        "sample_rate": self.rate,
                        "channels": self.session.model.audio_channels,
                        "event_id": event_id,
                    },
                )
            elif kind == "input_audio.begin":
                self._begin_upload(client, msg)
                await self._send(client, {"type": "input_audio.ready", "event_id": event_id})
            elif kind == "input_audio.commit":
                self._answer_later(client, self._commit_upload(client, msg), event_id, ["upload"])
            elif kind == "state.get":
                self._answer_later(client, Outcome(query="state"), event_id, [])
            else:
                raise ProtocolError(f"unknown message type {str(kind)[:40]!r}")
        except ProtocolError as e:
            await self._error(client, str(e), event_id)
        except Exception as e:  # a bug: this client hears of it, the connection and the music go on
            await self._error(client, f"internal error: {type(e).__name__}: {e}", event_id)

    def _continue(self, msg: dict[str, object]) -> Outcome:
        source = msg.get("source", "history")
        seconds = msg.get("seconds", DEFAULT_CONTINUE_S)
        names = {"history": "continue", "input": "continue/input", "file": "continue/file"}
        if not isinstance(source, str) or source not in names:
            raise ProtocolError("generate.continue source must be history, input or file (or upload with input_audio)")
        args = [msg.get("path", ""), seconds] if source == "file" else [seconds]
        return self.vocab.handle(names[source], args)

    def _follow(self, what: str, msg: dict[str, object]) -> Outcome:
        """melody.set, style.set: the melody/... or style/... request of the shared vocabulary."""
        source = msg.get("source", "history")
        if not isinstance(source, str) or source not in ("history", "input", "file", "off"):
            raise ProtocolError(f"{what}.set source must be history, input, file or off (or upload with input_audio)")
        if source == "off":
            return self.vocab.handle(f"{what}/off", [])
        args: list[object] = [] if "seconds" not in msg else [msg["seconds"]]
        return self.vocab.handle(f"{what}/{source}", [msg.get("path", ""), *args] if source == "file" else args)

    def _answer_later(self, client: Client, outcome: Outcome, event_id: object, applied: list[str]) -> None:
        """Submit the outcome's commands now (in order) and answer once they took effect, without
        holding up this client's next messages (a continuation can take a while)."""
        source = f"ws {client.number}"
        tickets = [self.session.submit(cmd, source=source) for cmd in outcome.commands]
        query = self.session.submit(c.Query(), source=source) if outcome.query else None
        loop = asyncio.get_running_loop()
        futures = {t.id: loop.create_future() for t in tickets + ([query] if query else [])}
        self.pending.update(futures)
        task = asyncio.ensure_future(self._answer(client, tickets, query, futures, outcome.notes, event_id, applied))
        client.tasks.add(task)
        task.add_done_callback(client.tasks.discard)

    async def _answer(
        self,
        client: Client,
        tickets: list[c.Ticket],
        query: c.Ticket | None,
        futures: dict[int, asyncio.Future],
        notes: list[str],
        event_id: object,
        applied: list[str],
    ) -> None:
        try:
            late = (await asyncio.wait(futures.values(), timeout=ANSWER_TIMEOUT_S))[1] if futures else set()
        finally:
            for key in futures:
                self.pending.pop(key, None)
        if late:
            await self._error(
                client,
                f"{', '.join(applied) or 'the request'} did not take effect within {ANSWER_TIMEOUT_S:.0f} s",
                event_id,
            )
            return
        failed = next((t for t in tickets if t.error), None)
        if failed is not None and failed.superseded:  # replaced by this client's own newer request: no error
            await self._send(
                client,
                {
                    "type": "session.updated",
                    "applied": [],
                    "superseded": True,
                    "notes": [failed.error],
                    "event_id": event_id,
                },
            )
            return
        if failed is not None:
            await self._error(client, failed.error or "", event_id)
            return
        if query is not None:
            await self._send(client, {"type": "state", "state": query.result, "event_id": event_id})
            return
        frames = [t.frame for t in tickets if t.frame is not None]
        frame = max(frames, default=None)
        notes = notes + [t.note for t in tickets if t.note]
        await self._send(
            client,
            {
                "type": "session.updated",
                "applied": applied,
                "frame": frame,
                "seconds": None if frame is None else frame / self.session.model.spec.frame_rate,
                "notes": notes,
                "event_id": event_id,
            },
        )

    # -- audio upload for continuation ---------------------------------------------------------
    async def _pace_upload(self, client: Client, size: int) -> None:
        """Read this client's binary frames at most `upload_mb_s` (after a 1 s burst): sleeping here
        stops reading its connection, so TCP slows the sender instead of the music paying for it."""
        now = time.monotonic()
        client.upload_clock = max(client.upload_clock, now - UPLOAD_BURST_S) + size / (self.cfg.upload_mb_s * 1e6)
        if client.upload_clock > now:
            await asyncio.sleep(client.upload_clock - now)

    def _begin_upload(self, client: Client, msg: dict[str, object]) -> None:
        try:
            rate, channels = _whole(msg.get("rate", 0)), _whole(msg.get("channels", 1))
        except (TypeError, ValueError, OverflowError):
            raise ProtocolError("input_audio.begin needs a numeric rate and channels") from None
        codec = msg.get("codec", "f32")
        if not 8000 <= rate <= 192000 or not 1 <= channels <= 2 or not isinstance(codec, str) or codec not in CODECS:
            raise ProtocolError("input_audio.begin needs rate 8000..192000, channels 1..2, codec f32|s16")
        client.upload, client.upload_fmt = bytearray(), UploadFormat(rate, channels, codec)

    async def _on_binary(self, client: Client, data: bytes) -> None:
        await self._pace_upload(client, len(data))
        if client.upload is None:
            await self._error(client, "binary frames are audio uploads: send input_audio.begin first")
            return
        fmt = client.upload_fmt
        assert fmt is not None  # set with the upload
        limit = int(self.cfg.max_upload_s * fmt.rate) * fmt.channels * fmt.width
        if len(client.upload) + len(data) > limit:
            client.upload = None
            await self._error(client, f"upload longer than {self.cfg.max_upload_s:.0f} s: discarded")
            return
        held = sum(len(cl.upload) for cl in self.clients if cl.upload is not None)
        if held + len(data) > self.cfg.max_uploads_mb * 1e6:
            client.upload = None
            await self._error(
                client,
                f"the server holds {self.cfg.max_uploads_mb:.0f} MB of uploads from all "
                "clients at most: this upload was discarded, try again shortly",
            )
            return
        client.upload.extend(data)

    def _commit_upload(self, client: Client, msg: dict[str, object]) -> Outcome:
        if client.upload is None:
            raise ProtocolError("nothing uploaded: send input_audio.begin and audio first")
        data, fmt, client.upload = bytes(client.upload), client.upload_fmt, None
        assert fmt is not None  # set with the upload
        usable = len(data) - len(data) % (fmt.width * fmt.channels)
        if usable == 0:
            raise ProtocolError("the upload holds no complete audio frame")
        dtype = "<f4" if fmt.codec == "f32" else "<i2"
        audio = np.frombuffer(data[:usable], dtype=dtype).astype(np.float32).reshape(-1, fmt.channels)
        if fmt.codec == "s16":
            audio /= 32768.0
        if not np.all(np.isfinite(audio)):
            raise ProtocolError("the upload contains NaN or infinite samples")
        use = msg.get("use", "continue")
        if use == "melody":
            seconds, notes = melody_seconds([msg.get("seconds", DEFAULT_MELODY_S)], 0, "input_audio.commit")
            return Outcome(commands=[c.Follow("melody", c.FromUpload(audio, fmt.rate, seconds))], notes=notes)
        if use == "style":
            seconds, notes = style_seconds([msg.get("seconds", DEFAULT_STYLE_S)], 0, "input_audio.commit")
            return Outcome(commands=[c.Follow("style", c.FromUpload(audio, fmt.rate, seconds))], notes=notes)
        if use != "continue":
            raise ProtocolError("input_audio.commit use must be continue, melody or style")
        seconds, notes = continue_seconds([msg.get("seconds", DEFAULT_CONTINUE_S)], 0, "input_audio.commit")
        return Outcome(commands=[c.ContinueAudio(audio, fmt.rate, seconds)], notes=notes)

    # -- from the session thread ---------------------------------------------------------------
    def _on_session_event(self, kind: str, data: dict[str, Any]) -> None:
        if self.loop is None:
            return
        if kind in ("applied", "refused"):
            self.loop.call_soon_threadsafe(self._resolve, data["ticket"].id)
        elif kind in ("changed", "error", "warning"):
            self.loop.call_soon_threadsafe(self._push, kind, data)

    def _resolve(self, ticket_id: int) -> None:
        fut = self.pending.get(ticket_id)
        if fut is not None and not fut.done():
            fut.set_result(True)

    def _push(self, kind: str, data: dict[str, Any]) -> None:
        """A change (whoever made it) or a problem, to every client."""
        if kind == "changed":
            msg = {"type": "state.changed", "changes": data["changes"], "source": data["source"]}
        else:
            msg = {"type": kind, "message": data["message"]}
        for client in list(self.clients):
            asyncio.ensure_future(self._send(client, msg))

    def _on_audio(self, first_sample: int, frames: np.ndarray) -> None:
        if self.loop is not None and any(cl.audio for cl in self.clients):
            self.loop.call_soon_threadsafe(self._fanout, first_sample, frames.copy())

    def _fanout(self, first_sample: int, frames: np.ndarray) -> None:
        encoded: dict[str, bytes] = {}
        for client in list(self.clients):
            if not client.audio:
                continue
            data = encoded.get(client.codec) or encoded.setdefault(
                client.codec, audio_frame(first_sample, frames, self.rate, client.codec)
            )
            if client.queue.full():
                client.queue.get_nowait()  # the slow client loses its oldest audio
                client.dropped += 1
                now = time.monotonic()
                if now - client.warned_at > 2.0:
                    client.warned_at = now
                    asyncio.ensure_future(
                        self._send(
                            client,
                            {"type": "warning", "message": f"client too slow: {client.dropped} audio chunks dropped"},
                        )
                    )
            client.queue.put_nowait(data)


def _response(status: HTTPStatus, body: bytes, ctype: str) -> Response:
    headers = Headers([("Content-Type", ctype), ("Content-Length", str(len(body))), ("Cache-Control", "no-store")])
    return Response(status.value, status.phrase, headers, body)


async def start_ws(session: Session, vocab: Vocabulary, cfg: WebSocketConfig) -> tuple[WebSocketBridge, Any]:
    bridge = WebSocketBridge(session, vocab, cfg)
    bridge.loop = asyncio.get_running_loop()
    try:
        server = await serve(
            bridge.handler,
            cfg.host,
            cfg.port,
            compression=None,
            max_size=cfg.max_message_bytes,
            process_request=bridge.process_request,
            ping_interval=20,
            ping_timeout=20,
        )
    except OSError as e:
        raise SetupError(f"cannot listen for WebSocket on {cfg.host}:{cfg.port} ({e.strerror or e})") from None
    return bridge, server


def _whole(x: object) -> int:
    """A whole number from a JSON value (numbers and numeric strings); TypeError or ValueError otherwise."""
    if isinstance(x, bool) or not isinstance(x, (int, float, str)):
        raise TypeError(f"expected a number, got {type(x).__name__}")
    return int(x)
