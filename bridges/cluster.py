"""`musicgen-live cluster`: many live sessions on a Ray Serve application, surviving a lost replica.

One application, three parts:
- `Engine` (a Serve deployment): each replica loads the model once and steps up to
  `sessions_per_replica` sessions in one batch (a `SessionGroup`). Each session has its own
  `WebSocketBridge`, whose one client is a pipe to the ingress: the replica speaks `serve`'s
  WebSocket protocol with the same code. It tells the router its sessions and whether it keeps up
  with real time (`record_routing_stats`).
- `Ingress` (a Serve deployment behind Serve's HTTP proxy): the browser page and the WebSocket
  protocol on one port, as `serve` has them. Each connection is one session, placed by
  `SessionRouter` on a replica with a free slot that keeps up; every later request of the session
  goes to the same replica. Clients never name a session, so none can reach another's.
- `SessionStore` (a detached, named Ray actor): each session's state as it changes - prompts,
  controls, transport, the client's audio settings and the last `context` of codes. When a replica
  dies, the ingress opens the session on another replica from that state, as a continuation from
  its codes, and tells the client with a `warning`; its audio's sample index carries on.

The Serve application that wires them (the FastAPI ingress, the deployments' settings, starting
it) is `cluster_app`. Ray is an optional dependency (`pip install 'musicgen-live[cluster]'`); only
these two modules import it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import struct
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from musicgen_live.engine.errors import EngineError
from musicgen_live.engine.stats import percentile
from musicgen_live.streamer import commands as c
from musicgen_live.streamer.controls import CONTROLS
from musicgen_live.streamer.outputs import make_output
from musicgen_live.streamer.slots import as_board, sounding

from .config import BridgesConfig, ClusterConfig, WebSocketConfig
from .protocol import Vocabulary
from .ws import HEADER, MAGIC, Client, WebSocketBridge, join_audio_frames

if TYPE_CHECKING:
    from musicgen_live.engine.config import SamplingConfig
    from musicgen_live.engine.model import Kernels, MusicGen
    from musicgen_live.streamer.config import StreamConfig
    from musicgen_live.streamer.group import SessionGroup
    from musicgen_live.streamer.session import Session

try:
    import ray
    from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError
    from ray.serve.request_router import PendingRequest, ReplicaID, RequestRouter, RunningReplica

    LOST: tuple[type[BaseException], ...] = (RayActorError, ActorDiedError, ActorUnavailableError)  # replica gone
except ImportError:  # the module still imports (docs, type checks); `require_ray` says what to install
    ray = None  # type: ignore[assignment]
    RequestRouter = object  # type: ignore[assignment,misc]
    LOST = ()

APP = "musicgen-live"  # the Serve application's name
NAMESPACE = "musicgen_live"
STORE = "musicgen-live-sessions"
# the controls a restored session is given back (quantize: no beat clock here)
RESTORED = ("cfg", "cfg_beta", "temperature", "top_k", "top_p", "seed", "gain", "context", "fade")
PLACEMENT_S = 5.0  # a session placed this recently counts on its replica until the replica's stats list it
PIPE_MESSAGES = 256  # messages a replica holds for the ingress before its client's audio is dropped
log = logging.getLogger("ray.serve")


def require_ray() -> None:
    if ray is None:
        raise EngineError("the cluster needs Ray Serve: pip install 'musicgen-live[cluster]' (or 'ray[serve]')")


@dataclass(frozen=True)
class ClusterSpec:
    """Everything a replica needs to build its engine and sessions (sent to every replica)."""

    model: str
    device: str
    kernels: Kernels
    stream: StreamConfig
    sampling: SamplingConfig
    websocket: WebSocketConfig
    bridges: BridgesConfig
    cluster: ClusterConfig


# -- where Ray keeps each session's state ------------------------------------------------------------
class SessionStore:
    """Each session's latest state: {"view": Session.view(), "client": {audio, codec}, "codes":
    (K, frames) int16, "saved": wall-clock seconds}. Updates merge. A live session is saved every
    `save_every_s`; one not saved for `keep_s` (its client left, or its ingress died and the client
    did not come back to resume it) is forgotten."""

    def __init__(self, keep_s: float = 60.0) -> None:
        self.sessions: dict[str, dict[str, Any]] = {}
        self.keep_s = keep_s
        self._pruned = 0.0

    def update(self, sid: str, patch: dict[str, Any]) -> None:
        self.sessions.setdefault(sid, {}).update(patch, saved=time.time())
        self._prune()

    def get(self, sid: str) -> dict[str, Any] | None:
        self._prune()
        return self.sessions.get(sid)

    def count(self, within_s: float = 5.0) -> int:
        """Sessions saved within the last `within_s` seconds (the live ones)."""
        now = time.time()
        return sum(1 for state in self.sessions.values() if now - state["saved"] < within_s)

    def _prune(self) -> None:
        now = time.time()
        if now - self._pruned < 1.0:
            return
        self._pruned = now
        for sid in [sid for sid, state in self.sessions.items() if now - state["saved"] > self.keep_s]:
            del self.sessions[sid]


def store(keep_s: float = 60.0) -> Any:
    """The session store's actor handle (made on first use, keeping sessions `keep_s` after their
    last save; it outlives any one replica)."""
    return (
        ray.remote(SessionStore)
        .options(name=STORE, namespace=NAMESPACE, lifetime="detached", get_if_exists=True, num_cpus=0, max_restarts=-1)
        .remote(keep_s)
    )


# -- placing sessions --------------------------------------------------------------------------------
@dataclass
class Placement:
    replica: ReplicaID
    at: float  # time.monotonic() when placed


class SessionRouter(RequestRouter):
    """A new session goes to the replica with the most free slots among those that keep up with
    real time; none free: it waits (Serve asks again, and autoscaling may add a replica). A session
    being restored (`resume`) prefers those too, but takes a free slot on a replica that is behind
    rather than stay silent. Every later request of a session (its multiplexed id) goes where it
    was placed, unless that replica is gone - then it is placed anew."""

    def initialize_state(self, capacity: int = 4, **_kwargs: Any) -> None:
        self.capacity = capacity
        self.placed: dict[str, Placement] = {}

    async def choose_replicas(
        self, candidate_replicas: list[RunningReplica], pending_request: PendingRequest | None = None
    ) -> list[list[RunningReplica]]:
        if pending_request is None:
            return [candidate_replicas]
        pending_request.routing_context.should_backoff = True  # no other pass to try: Serve waits, then asks again
        sid = pending_request.metadata.multiplexed_model_id
        if not sid:
            return [candidate_replicas]
        by_id = {r.replica_id: r for r in candidate_replicas}
        placed = self.placed.get(sid)
        if placed is not None and placed.replica in by_id:
            return [[by_id[placed.replica]]]
        now = time.monotonic()
        restoring = pending_request.metadata.call_method == "resume"
        options = []  # (behind, -free slots, order): the first is best
        for i, r in enumerate(candidate_replicas):
            free, behind = self._free(r, now), bool((r.routing_stats or {}).get("behind"))
            if free > 0 and (restoring or not behind):  # a new session waits for a replica that keeps up
                options.append((behind, -free, i))
        if not options:
            return []
        best = candidate_replicas[min(options)[2]]
        self.placed[sid] = Placement(best.replica_id, now)
        return [[best]]

    def _free(self, replica: RunningReplica, now: float) -> int:
        """Slots left: capacity less the sessions it reports and those placed there since."""
        stats = replica.routing_stats or {}
        hosted = set(stats.get("sessions", ()))
        mine = [(s, p) for s, p in self.placed.items() if p.replica == replica.replica_id]
        recent = {s for s, p in mine if now - p.at < PLACEMENT_S}
        if "sessions" in stats:
            for s, p in mine:
                if now - p.at >= PLACEMENT_S and s not in hosted:
                    del self.placed[s]  # ended: its replica no longer reports it
        return int(stats.get("capacity", self.capacity)) - len(hosted | recent)


# -- the engine replica ---------------------------------------------------------------------------
class Pipe:
    """A client connection whose messages the ingress takes, a batch at a time. Bounded: when the
    ingress falls behind, sending waits, and the bridge drops its client's oldest audio. Each hop
    (replica -> ingress -> Serve's proxy -> client) costs per message, so a batch that starts with
    audio waits a little for more (`[cluster] gather_ms`), and contiguous audio frames go as one."""

    def __init__(self, gather_s: float) -> None:
        self.queue: asyncio.Queue[str | bytes] = asyncio.Queue(maxsize=PIPE_MESSAGES)
        self.gather_s = gather_s

    async def send(self, message: str | bytes) -> None:
        await self.queue.put(message)

    async def take(self, most: int = 64) -> list[str | bytes]:
        """The next batch: audio waits up to `gather_s` for more; a text message ends the wait."""
        out = [await self.queue.get()]
        loop = asyncio.get_running_loop()
        end = loop.time() + (self.gather_s if isinstance(out[0], bytes) else 0.0)
        while len(out) < most and isinstance(out[-1], bytes) and (left := end - loop.time()) > 0:
            try:
                out.append(await asyncio.wait_for(self.queue.get(), left))
            except TimeoutError:
                break
        while len(out) < most and not self.queue.empty():
            out.append(self.queue.get_nowait())
        batch: list[str | bytes] = []
        run: list[bytes] = []
        for m in out:  # text keeps its place between runs of audio
            if isinstance(m, bytes):
                run.append(m)
                continue
            batch += join_audio_frames(run)
            run = []
            batch.append(m)
        return batch + join_audio_frames(run)


@dataclass(eq=False)
class Hosted:
    """One session on this replica and the one client its bridge serves."""

    sid: str
    session: Session
    bridge: WebSocketBridge
    client: Client
    pipe: Pipe
    tasks: set[asyncio.Task] = field(default_factory=set)


class Engine:
    """One engine: the model loaded once, its sessions stepped in one batch."""

    def __init__(self, spec: ClusterSpec) -> None:
        from musicgen_live.engine.model import MusicGen, model_summary
        from musicgen_live.streamer import threads
        from musicgen_live.streamer.group import SessionGroup

        self.spec = spec
        threads.confine()
        self.model: MusicGen = threads.on_pool_thread(
            lambda: MusicGen.load(spec.model, device=spec.device, **spec.kernels)
        )
        self.capacity = spec.cluster.sessions_per_replica
        self.group: SessionGroup = SessionGroup(self.model, max_sessions=self.capacity, stall_s=spec.stream.stall_s)
        self.group.start()
        self.hosted: dict[str, Hosted] = {}
        self.opening: set[str] = set()  # sessions being opened (prefill) here
        self.info = model_summary(self.model)
        self.store = store(spec.cluster.resume_s)
        self.frame_ms = 1000.0 / self.model.spec.frame_rate

    def record_routing_stats(self) -> dict[str, Any]:
        """For the router: the sessions here, the slots, and whether this engine keeps up."""
        steps = self.group.step_ms[-100:]
        p50 = percentile(sorted(steps), 0.5) if len(steps) >= 20 else None
        rtf = None if not p50 else self.frame_ms / p50
        return {
            "sessions": sorted(self.opening | set(self.hosted)),
            "capacity": self.capacity,
            "step_ms": p50,
            "rtf": rtf,
            "behind": bool(self.hosted) and rtf is not None and rtf < 1.0,
            "underruns": sum(h.session.output.underruns for h in self.hosted.values()),
        }

    async def play(self, sid: str, restore: dict[str, Any] | None = None) -> AsyncGenerator[list[str | bytes], None]:
        """Open session `sid` (from `restore`, a stored state, when its replica was lost) and yield
        every message for its client until the ingress stops asking."""

        for _ in range(50):  # a resumed session's old stream may still be closing here
            if sid not in self.hosted and sid not in self.opening:
                break
            await asyncio.sleep(0.1)
        else:
            raise EngineError("this session is already open")
        self.opening.add(sid)  # reported to the router from now on
        try:
            hosted = await self._open(sid, restore)
        finally:
            self.opening.discard(sid)
        try:
            self._save_view(hosted)
            keeper = asyncio.create_task(self._keep_codes(hosted))
            hosted.tasks.add(keeper)
            while True:
                yield await hosted.pipe.take()
        finally:
            for task in hosted.tasks:
                task.cancel()
            hosted.bridge.disconnect(hosted.client)
            self.hosted.pop(sid, None)
            self.group.remove(hosted.session)

    async def _open(self, sid: str, restore: dict[str, Any] | None) -> Hosted:
        """A session joins the batch (a restored one silent, from its first prompt) with its bridge."""
        from musicgen_live.streamer.session import Session

        loop = asyncio.get_running_loop()
        prompts = _prompts((restore or {}).get("view") or {})
        stream = self.spec.stream
        if restore is not None:  # start silent from its first prompt; play once its codes are in
            stream = replace(stream, prompt=prompts[0][0] if prompts else stream.prompt, autoplay=False)
        channels = max(2, self.model.audio_channels)
        output = make_output("null", channels, stream.buffer_ms / 1000, stream.blocksize)
        session = Session(self.model, output, stream, self.spec.sampling, log=lambda m: log.info("%s: %s", sid[:8], m))
        await asyncio.to_thread(self.group.add, session)
        try:
            if restore is not None:  # before the client connects: session.created has the restored state
                await self._restore(sid, session, restore)
            bridge = WebSocketBridge(session, Vocabulary(self.info, self.spec.bridges.audio_dirs), self.spec.websocket)
            bridge.loop = loop
            pipe = Pipe(self.spec.cluster.gather_ms / 1000)
            client = await bridge.connect(pipe)
        except BaseException:
            self.group.remove(session)
            raise
        settings = (restore or {}).get("client") or {}
        client.audio, client.codec = bool(settings.get("audio", False)), settings.get("codec", "f32")
        hosted = Hosted(sid, session, bridge, client, pipe)
        self.hosted[sid] = hosted

        def on_event(kind: str, _data: dict[str, Any]) -> None:  # on the generation thread
            if kind == "changed":
                loop.call_soon_threadsafe(self._save_view, hosted)

        session.listeners.append(on_event)
        return hosted

    async def resume(self, sid: str, restore: dict[str, Any]) -> AsyncGenerator[list[str | bytes], None]:
        """`play` for a session whose replica was lost (the router may place it on a replica that
        is behind rather than leave it silent)."""
        async for batch in self.play(sid, restore):
            yield batch

    async def receive(self, sid: str, message: str | bytes) -> None:
        """One message from the client of session `sid`."""
        hosted = self.hosted.get(sid)
        if hosted is None:
            raise EngineError("this session is not open on this replica")
        await hosted.bridge.receive(hosted.client, message)

    async def _restore(self, sid: str, s: Session, state: dict[str, Any]) -> None:
        """Bring the session to the stored state: prompts, controls, then the stored codes as a
        continuation; play once it is in (if it was playing)."""
        view = state.get("view") or {}
        prompts = _prompts(view)
        tickets = []
        board = tuple((str(p["text"]), float(p["weight"])) for p in view.get("slots") or [])
        if board:  # the blend board first (its texts in place), then what sounded if that differs
            tickets.append(s.submit(c.SetWeightedPrompts(board, fade_s=0.0, slots=True), source="restore"))
        blended = len(prompts) > 1 or (prompts and prompts[0][1] != 1.0)  # a single prompt: the session's own
        if prompts and (prompts != sounding(as_board(board)) if board else blended):
            tickets.append(s.submit(c.SetWeightedPrompts(tuple(prompts), fade_s=0.0), source="restore"))
        for name in RESTORED:
            if name in view and view[name] != s.controls[name]:
                tickets.append(s.submit(c.Set(name, CONTROLS[name].check(view[name])), source="restore"))
        codes = state.get("codes")
        if codes is not None:
            tickets.append(s.submit(c.ContinueCodes(codes), source="restore"))
        for ticket in tickets:
            if not await asyncio.to_thread(ticket.wait, 60.0) or ticket.error:
                log.warning("%s: restoring %s: %s", sid[:8], ticket.name, ticket.error or "timed out")
        if view.get("state", "playing") == "playing":
            s.submit(c.Play(), source="restore")

    def _save_view(self, hosted: Hosted, **more: Any) -> None:
        """The session's view and its client's audio settings (and `more`) to the store."""
        client = {"audio": hosted.client.audio, "codec": hosted.client.codec}
        self.store.update.remote(hosted.sid, {"view": hosted.session.view(), "client": client, **more})

    async def _keep_codes(self, hosted: Hosted) -> None:
        """Every `save_every_s`: the codes a restart would continue from, and the view with them."""
        every = self.spec.cluster.save_every_s
        while True:
            await asyncio.sleep(every)
            ticket = hosted.session.submit(c.RecentCodes(), source="cluster")
            end = time.monotonic() + 5 * every
            while not ticket.done.is_set() and time.monotonic() < end:
                await asyncio.sleep(0.01)
            if ticket.result is not None:
                self._save_view(hosted, codes=ticket.result["codes"])


def _prompts(view: dict[str, Any]) -> list[tuple[str, float]]:
    """A stored view's prompts as (text, weight)."""
    return [(p["text"], float(p["weight"])) for p in view.get("prompts", [])]


# -- the ingress: one WebSocket client = one session ------------------------------------------------


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
    return str(e) if isinstance(e, (EngineError, ValueError)) else f"internal error: {type(e).__name__}: {e}"
