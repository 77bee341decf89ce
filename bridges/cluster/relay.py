"""The ingress's side of one client: its WebSocket and its session on some replica, messages both
ways, and a restart on another replica when that one is lost."""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import struct
import time
from typing import TYPE_CHECKING, Any

from musicgen_live.engine.errors import UserError

from ..ws import HEADER, MAGIC

if TYPE_CHECKING:
    pass

from .spec import LOST, ClusterSpec, log


class Relay:
    """One client's WebSocket and its session on some replica: messages both ways, and a restart
    on another replica when that one is lost. `resume`: the token of a session this client had
    (`session.created`'s `resume`), to carry on with it after a lost connection or ingress."""

    def __init__(self, websocket: Any, engine: Any, store_actor: Any, spec: ClusterSpec, resume: str = "") -> None:
        self.ws = websocket
        self.resume = resume
        self.handle = engine
        self._bind(resume or secrets.token_hex(16))
        self.store = store_actor
        self.spec = spec
        self.ready = asyncio.Event()
        self.closed = asyncio.Event()
        self.next_sample: int | None = None  # the sample index the client expects next
        self.offset = 0  # added to a restarted stream's sample indices so that they carry on
        self.restarts = 0
        self.created = False  # the client was sent session.created
        self.finished = asyncio.Event()  # run() is over
        self.notice: str | None = None  # a warning for the client once its session is open

    def _bind(self, sid: str) -> None:
        """This connection's session: every request for it carries `sid` (the router's key)."""
        self.sid = sid
        self.engine = self.handle.options(multiplexed_model_id=sid)
        self.stream = self.handle.options(multiplexed_model_id=sid, stream=True)

    async def run(self) -> None:
        pump = asyncio.create_task(self._pump())
        try:
            while not self.closed.is_set():
                try:
                    msg = await self.ws.receive()
                except RuntimeError:  # the pump closed the connection
                    break
                if msg["type"] == "websocket.disconnect":
                    break
                data = msg.get("bytes") if msg.get("bytes") is not None else msg.get("text")
                if data is None:
                    continue
                if len(data) > self.spec.websocket.max_message_bytes:
                    await self.ws.close(code=1009, reason="message too big")  # as serve's WebSocket does
                    break
                await self._forward(data)
        finally:
            pump.cancel()  # the session closes on its replica; the store keeps it for a while (resume)
            with contextlib.suppress(asyncio.CancelledError):
                await pump
            self.finished.set()

    async def stop(self) -> None:
        """End this connection (its client came back on another) once its session has let go."""
        self.closed.set()
        await self._close()
        await self.finished.wait()

    async def _forward(self, data: str | bytes) -> None:
        """To the session's replica, in order; across a restart, once the new replica has it."""
        for _attempt in range(3):
            if not await self._ready():
                return
            try:
                await self.engine.receive.remote(self.sid, data)
                return
            except LOST:
                self.ready.clear()  # the pump restarts the session; this message goes there
            except Exception as e:
                await self._send_json({"type": "error", "message": _reason(e)})
                return

    async def _ready(self) -> bool:
        """Wait until the session is open on a replica (False: it never will be)."""
        if not self.ready.is_set():
            waits = [asyncio.ensure_future(self.ready.wait()), asyncio.ensure_future(self.closed.wait())]
            try:
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for w in waits:
                    w.cancel()
        return self.ready.is_set()

    async def _pump(self) -> None:
        """Replica -> client, with a restart elsewhere whenever the replica is lost."""
        restore: dict[str, Any] | None = None
        lost_at: float | None = None
        try:
            if self.resume:
                restore = await self.store.get.remote(self.sid)
                if restore is None:  # said right after session.created
                    self.notice = "no session to resume with that token (too old?): this is a new one"
                    self._bind(secrets.token_hex(16))
            while True:
                try:
                    await self._play(restore, lost_at)
                    break  # the replica ended the session
                except LOST as e:
                    self.ready.clear()
                    lost_at = time.monotonic()
                    self.restarts += 1
                    log.warning("session %s lost its replica (%s); restarting it", self.sid[:8], type(e).__name__)
                    restore = await self.store.get.remote(self.sid) or {}
                    await self._send_json(
                        {
                            "type": "warning",
                            "message": "the engine playing this session stopped: restarting it on another replica "
                            "as a continuation of what was playing",
                        }
                    )
        except NoSlot as e:
            await self._send_json({"type": "error", "message": str(e)})
        except asyncio.CancelledError:
            raise
        except Exception as e:
            await self._send_json({"type": "error", "message": _reason(e)})
        self.closed.set()
        await self._close()

    async def _play(self, restore: dict[str, Any] | None, lost_at: float | None) -> None:
        stream = (self.stream.play if restore is None else self.stream.resume).remote(self.sid, restore)
        try:
            await self._relay(stream, lost_at)
        finally:
            stream.cancel()  # the client left (or the replica did): the replica closes the session

    async def _relay(self, stream: Any, lost_at: float | None) -> None:
        try:
            first = await asyncio.wait_for(stream.__anext__(), self.spec.cluster.open_timeout_s)
        except TimeoutError:
            c = self.spec.cluster
            raise NoSlot(
                f"no free session slot in the cluster within {c.open_timeout_s:.0f} s "
                f"({c.sessions_per_replica} sessions per replica): try again shortly"
            ) from None
        except StopAsyncIteration:
            return
        batch: list[str | bytes] | None = first
        while batch is not None:
            for message in batch:
                await self._to_client(message)
            if self.notice is not None:
                await self._send_json({"type": "warning", "message": self.notice})
                self.notice = None
            if lost_at is not None:
                gap = time.monotonic() - lost_at
                lost_at = None
                await self._send_json(
                    {
                        "type": "warning",
                        "message": f"session restored on another replica after {gap:.1f} s; prompts and "
                        "settings as they were",
                        "restored_after_s": round(gap, 3),
                    }
                )
            self.ready.set()
            try:
                batch = await stream.__anext__()
            except StopAsyncIteration:
                batch = None

    async def _to_client(self, message: str | bytes) -> None:
        if isinstance(message, bytes):
            await self.ws.send_bytes(self._renumber(message))
            return
        if message.startswith('{"type": "session.created"'):
            created = json.loads(message)
            if self.created:  # the client was told of its session once: now its state
                message = json.dumps({"type": "state", "state": created["state"], "event_id": None})
            else:  # with the token that brings this session back on a new connection
                self.created = True
                message = json.dumps({**created, "resume": self.sid})
        await self.ws.send_text(message)

    def _renumber(self, frame: bytes) -> bytes:
        """Audio frames carry on from the sample the client expects next, across restarts."""
        if len(frame) < HEADER.size or frame[:4] != MAGIC:
            return frame
        first, n = struct.unpack_from("<QI", frame, 12)
        if self.next_sample is not None and first + self.offset < self.next_sample:
            self.offset = self.next_sample - first  # a restarted stream counts from its own start
        first += self.offset
        self.next_sample = first + n
        return frame[:12] + struct.pack("<Q", first) + frame[20:]

    async def _send_json(self, obj: dict[str, Any]) -> None:
        try:
            await self.ws.send_text(json.dumps(obj))
        except Exception:  # the client left
            pass

    async def _close(self) -> None:
        try:
            await self.ws.close()
        except Exception:
            pass


class NoSlot(Exception):
    """No replica took the session in time."""


def _reason(e: BaseException) -> str:
    """The sentence a client gets for a replica's exception (Ray wraps it)."""
    cause = getattr(e, "cause", None)
    if isinstance(cause, BaseException):
        e = cause
    return str(e) if isinstance(e, (UserError, ValueError)) else f"internal error: {type(e).__name__}: {e}"
