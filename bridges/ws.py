"""WebSocket (JSON control + binary audio) and the browser client, on one port.

Client -> server, JSON text messages with a `type` (and an optional `event_id`, echoed back):
  session.update    {prompt?, weighted_prompts? [[text, weight], ...], cfg?, temperature?, top_k?,
                     top_p?, seed?, gain?, context?, fade?}
  playback.control  {action: play|pause|stop|reset}
  generate.continue {source: history|input|file, seconds?, path?}
  audio.subscribe   {enabled: bool, codec?: f32|s16}
  input_audio.begin {rate, channels?, codec?: f32|s16}, then binary frames of interleaved PCM,
  input_audio.commit {seconds?}   -> continue from the uploaded audio
  state.get
Server -> client: session.created, session.updated {frame, applied}, state, warning, error, and
binary audio frames: a 24-byte little-endian header (magic b"MGLA", version 1, codec 0=f32 1=s16,
channels, 0, sample rate u32, first sample index u64, samples per channel u32) then interleaved PCM.

Every client has a bounded queue; a slow client loses its oldest audio and gets a warning, and
never slows the engine. Browsers: the Origin must be this server's own (or configured); beyond
loopback a token is required. The same port answers plain HTTP GETs with the browser client.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import struct
import time
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import numpy as np
from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from engine.errors import EngineError
from streamer import commands as c
from streamer.session import Session

from .config import WebSocketConfig
from .protocol import ProtocolError, Vocabulary

MAGIC = b"MGLA"
HEADER = struct.Struct("<4sBBBBIQI")
CODECS = {"f32": 0, "s16": 1}
WEB = Path(__file__).resolve().parent / "web"
STATIC = {"/": ("index.html", "text/html; charset=utf-8"), "/client.js": ("client.js", "text/javascript"),
          "/worklet.js": ("worklet.js", "text/javascript")}
# session.update keys, in the order they are applied (a fade given with a prompt applies to it)
UPDATE_KEYS = ["context", "fade", "cfg", "temperature", "top_k", "top_p", "seed", "gain", "weighted_prompts", "prompt"]


def audio_frame(first_sample: int, frames: np.ndarray, rate: int, codec: str) -> bytes:
    """Header + interleaved PCM for (n, channels) float32 frames."""
    n, ch = frames.shape
    if codec == "s16":
        pcm = (np.clip(frames, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()
    else:
        pcm = frames.astype("<f4").tobytes()
    return HEADER.pack(MAGIC, 1, CODECS[codec], ch, 0, rate, first_sample, n) + pcm


@dataclass(eq=False)  # clients are kept in a set: identity, not value
class Client:
    ws: ServerConnection
    queue: asyncio.Queue
    audio: bool = False
    codec: str = "f32"
    dropped: int = 0
    warned_at: float = 0.0
    upload: bytearray | None = None
    upload_fmt: dict[str, Any] = field(default_factory=dict)


class WebSocketBridge:
    def __init__(self, session: Session, vocab: Vocabulary, cfg: WebSocketConfig) -> None:
        self.session = session
        self.vocab = vocab
        self.cfg = cfg
        self.clients: set[Client] = set()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.pending: dict[int, asyncio.Future] = {}
        self.rate = session.model.sample_rate
        self.loopback = _is_loopback(cfg.host)
        if not self.loopback and not cfg.token:
            raise EngineError(f"the WebSocket server binds to {cfg.host}, beyond loopback: set [websocket] token")
        session.listeners.append(self._on_session_event)
        session.audio_taps.append(self._on_audio)

    # -- HTTP side: the browser client, Origin and token checks ---------------------------------
    def process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        url = urlparse(request.path)
        if request.headers.get("Upgrade", "").lower() != "websocket":
            if url.path in STATIC:
                name, ctype = STATIC[url.path]
                return _response(HTTPStatus.OK, (WEB / name).read_bytes(), ctype)
            return _response(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain")
        origin = request.headers.get("Origin")
        if origin is not None and not self._origin_ok(origin, request.headers.get("Host", "")):
            return _response(HTTPStatus.FORBIDDEN, b"origin not allowed\n", "text/plain")
        if not self.loopback or self.cfg.token:
            token = parse_qs(url.query).get("token", [""])[0]
            if token != self.cfg.token:
                return _response(HTTPStatus.UNAUTHORIZED, b"token required\n", "text/plain")
        return None

    def _origin_ok(self, origin: str, host: str) -> bool:
        if origin in self.cfg.origins:
            return True
        parsed = urlparse(origin)
        own = {host, f"{self.cfg.host}:{self.cfg.port}", f"localhost:{self.cfg.port}", f"127.0.0.1:{self.cfg.port}"}
        return parsed.scheme in ("http", "https") and parsed.netloc in own

    # -- one connection ------------------------------------------------------------------------
    async def handler(self, ws: ServerConnection) -> None:
        client = Client(ws, asyncio.Queue(maxsize=max(2, self.cfg.client_queue)))
        self.clients.add(client)
        sender = asyncio.create_task(self._sender(client))
        try:
            await self._send(client, {"type": "session.created", "session": self.vocab.info,
                                      "state": self.session.snapshot()})
            async for message in ws:
                if isinstance(message, bytes):
                    await self._on_binary(client, message)
                else:
                    await self._on_text(client, message)
        except ConnectionClosed:
            pass
        finally:
            self.clients.discard(client)
            sender.cancel()

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

    async def _error(self, client: Client, message: str, event_id: Any = None) -> None:
        await self._send(client, {"type": "error", "message": message, "event_id": event_id})

    async def _on_text(self, client: Client, text: str) -> None:
        try:
            msg = json.loads(text)
        except ValueError:
            await self._error(client, "messages must be JSON objects")
            return
        if not isinstance(msg, dict):
            await self._error(client, "messages must be JSON objects")
            return
        event_id = msg.get("event_id")
        kind = msg.get("type")
        try:
            if kind == "session.update":
                await self._update(client, msg, event_id)
            elif kind == "playback.control":
                action = msg.get("action")
                if action not in ("play", "pause", "stop", "reset"):
                    raise ProtocolError("playback.control needs action: play, pause, stop or reset")
                await self._run(client, self.vocab.handle(action, []).commands, event_id, [action])
            elif kind == "generate.continue":
                await self._continue(client, msg, event_id)
            elif kind == "audio.subscribe":
                codec = msg.get("codec", "f32")
                if codec not in CODECS:
                    raise ProtocolError("codec must be f32 or s16")
                client.audio, client.codec = bool(msg.get("enabled", True)), codec
                await self._send(client, {"type": "audio.subscribed", "enabled": client.audio, "codec": codec,
                                          "sample_rate": self.rate, "channels": self.session.model.audio_channels,
                                          "event_id": event_id})
            elif kind == "input_audio.begin":
                self._begin_upload(client, msg)
                await self._send(client, {"type": "input_audio.ready", "event_id": event_id})
            elif kind == "input_audio.commit":
                await self._commit_upload(client, msg, event_id)
            elif kind == "state.get":
                await self._send(client, {"type": "state", "state": self.session.snapshot(), "event_id": event_id})
            else:
                raise ProtocolError(f"unknown message type {kind!r}")
        except ProtocolError as e:
            await self._error(client, str(e), event_id)

    async def _update(self, client: Client, msg: dict[str, Any], event_id: Any) -> None:
        unknown = set(msg) - set(UPDATE_KEYS) - {"type", "event_id"}
        if unknown:
            raise ProtocolError(f"session.update does not know {sorted(unknown)[0]!r}")
        commands, applied = [], []
        for key in UPDATE_KEYS:
            if key not in msg:
                continue
            value = msg[key]
            if key == "weighted_prompts":
                if not isinstance(value, list) or not all(isinstance(p, list) and len(p) == 2 for p in value):
                    raise ProtocolError("weighted_prompts must be a list of [text, weight] pairs")
                out = self.vocab.handle("prompt/weighted", [x for p in value for x in p])
            elif key == "prompt":
                if not isinstance(value, str):
                    raise ProtocolError("prompt must be a string")
                out = self.vocab.handle("prompt", [value])
            else:
                if isinstance(value, (list, dict)) or value is None:
                    raise ProtocolError(f"{key} must be a number")
                out = self.vocab.handle(key, [value])
            commands += out.commands
            applied.append(key)
        if not commands:
            raise ProtocolError("session.update changed nothing")
        await self._run(client, commands, event_id, applied)

    async def _continue(self, client: Client, msg: dict[str, Any], event_id: Any) -> None:
        source = msg.get("source", "history")
        seconds = msg.get("seconds", 10)
        names = {"history": "continue", "input": "continue/input", "file": "continue/file"}
        if source not in names:
            raise ProtocolError("generate.continue source must be history, input or file (or upload with input_audio)")
        args = [msg.get("path", ""), seconds] if source == "file" else [seconds]
        await self._run(client, self.vocab.handle(names[source], args).commands, event_id, [source])

    async def _run(self, client: Client, commands: list[Any], event_id: Any, applied: list[str]) -> None:
        """Submit, wait until applied (at a frame boundary), answer session.updated or error."""
        frames = []
        for cmd in commands:
            ticket = self.session.submit(cmd)
            fut = self.loop.create_future()
            self.pending[ticket.id] = fut
            try:
                await asyncio.wait_for(fut, timeout=30)
            except asyncio.TimeoutError:
                await self._error(client, f"{type(cmd).__name__} was not applied in time", event_id)
                return
            finally:
                self.pending.pop(ticket.id, None)
            if ticket.error:
                await self._error(client, ticket.error, event_id)
                return
            frames.append(ticket.frame)
        frame = max((f for f in frames if f is not None), default=None)
        await self._send(client, {"type": "session.updated", "applied": applied, "frame": frame,
                                  "seconds": None if frame is None else frame / self.session.model.spec.frame_rate,
                                  "event_id": event_id})

    # -- audio upload for continuation ---------------------------------------------------------
    def _begin_upload(self, client: Client, msg: dict[str, Any]) -> None:
        try:
            rate, channels = int(msg.get("rate", 0)), int(msg.get("channels", 1))
        except (TypeError, ValueError):
            raise ProtocolError("input_audio.begin needs a numeric rate and channels") from None
        codec = msg.get("codec", "f32")
        if not 8000 <= rate <= 192000 or not 1 <= channels <= 2 or codec not in CODECS:
            raise ProtocolError("input_audio.begin needs rate 8000..192000, channels 1..2, codec f32|s16")
        client.upload, client.upload_fmt = bytearray(), {"rate": rate, "channels": channels, "codec": codec}

    async def _on_binary(self, client: Client, data: bytes) -> None:
        if client.upload is None:
            await self._error(client, "binary frames are audio uploads: send input_audio.begin first")
            return
        fmt = client.upload_fmt
        width = 4 if fmt["codec"] == "f32" else 2
        limit = int(self.cfg.max_upload_s * fmt["rate"]) * fmt["channels"] * width
        if len(client.upload) + len(data) > limit:
            client.upload = None
            await self._error(client, f"upload longer than {self.cfg.max_upload_s:.0f} s: discarded")
            return
        client.upload.extend(data)

    async def _commit_upload(self, client: Client, msg: dict[str, Any], event_id: Any) -> None:
        if client.upload is None:
            raise ProtocolError("nothing uploaded: send input_audio.begin and audio first")
        data, fmt, client.upload = bytes(client.upload), client.upload_fmt, None
        width = 4 if fmt["codec"] == "f32" else 2
        usable = len(data) - len(data) % (width * fmt["channels"])
        if usable == 0:
            raise ProtocolError("the upload holds no complete audio frame")
        dtype = "<f4" if fmt["codec"] == "f32" else "<i2"
        audio = np.frombuffer(data[:usable], dtype=dtype).astype(np.float32).reshape(-1, fmt["channels"])
        if fmt["codec"] == "s16":
            audio /= 32768.0
        if not np.all(np.isfinite(audio)):
            raise ProtocolError("the upload contains NaN or infinite samples")
        seconds = msg.get("seconds", 10)
        if not isinstance(seconds, (int, float)) or not seconds > 0:
            raise ProtocolError("seconds must be a positive number")
        await self._run(client, [c.ContinueAudio(audio, fmt["rate"], float(seconds))], event_id, ["upload"])

    # -- from the session thread ---------------------------------------------------------------
    def _on_session_event(self, kind: str, data: dict[str, Any]) -> None:
        if self.loop is None or kind not in ("applied", "refused"):
            return
        ticket = data["ticket"]
        self.loop.call_soon_threadsafe(self._resolve, ticket.id)

    def _resolve(self, ticket_id: int) -> None:
        fut = self.pending.get(ticket_id)
        if fut is not None and not fut.done():
            fut.set_result(True)

    def _on_audio(self, first_sample: int, frames: np.ndarray) -> None:
        if self.loop is not None and any(cl.audio for cl in self.clients):
            self.loop.call_soon_threadsafe(self._fanout, first_sample, frames.copy())

    def _fanout(self, first_sample: int, frames: np.ndarray) -> None:
        encoded: dict[str, bytes] = {}
        for client in list(self.clients):
            if not client.audio:
                continue
            data = encoded.get(client.codec) or encoded.setdefault(
                client.codec, audio_frame(first_sample, frames, self.rate, client.codec))
            if client.queue.full():
                client.queue.get_nowait()  # the slow client loses its oldest audio
                client.dropped += 1
                now = time.monotonic()
                if now - client.warned_at > 2.0:
                    client.warned_at = now
                    asyncio.ensure_future(self._send(client, {
                        "type": "warning", "message": f"client too slow: {client.dropped} audio chunks dropped"}))
            client.queue.put_nowait(data)


def _response(status: HTTPStatus, body: bytes, ctype: str) -> Response:
    headers = Headers([("Content-Type", ctype), ("Content-Length", str(len(body))), ("Cache-Control", "no-store")])
    return Response(status.value, status.phrase, headers, body)


def _is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def start_ws(session: Session, vocab: Vocabulary, cfg: WebSocketConfig) -> tuple[WebSocketBridge, Any]:
    bridge = WebSocketBridge(session, vocab, cfg)
    bridge.loop = asyncio.get_running_loop()
    try:
        server = await serve(bridge.handler, cfg.host, cfg.port, compression=None, max_size=cfg.max_message_bytes,
                             process_request=bridge.process_request, ping_interval=20, ping_timeout=20)
    except OSError as e:
        raise EngineError(f"cannot listen for WebSocket on {cfg.host}:{cfg.port} ({e.strerror or e})") from None
    return bridge, server
