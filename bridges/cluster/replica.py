"""The engine replica: the model loaded once, its sessions stepped in one batch, each with a
`WebSocketBridge` whose one client is a pipe to the ingress."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from musicgen_live.engine.errors import UserError
from musicgen_live.engine.stats import percentile
from musicgen_live.streamer import commands as c
from musicgen_live.streamer.controls import CONTROLS
from musicgen_live.streamer.outputs import make_output
from musicgen_live.streamer.slots import as_board, sounding

from ..protocol import Vocabulary
from ..ws import Client, WebSocketBridge, join_audio_frames

if TYPE_CHECKING:
    from musicgen_live.engine.model import MusicGen
    from musicgen_live.streamer.group import SessionGroup
    from musicgen_live.streamer.session import Session

from .spec import ClusterSpec, log
from .store import store

# the controls a restored session is given back (quantize: no beat clock here)
RESTORED = ("cfg", "cfg_beta", "temperature", "top_k", "top_p", "seed", "gain", "context", "fade")
PIPE_MESSAGES = 256  # messages a replica holds for the ingress before its client's audio is dropped


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


class Replica:
    """One replica of the engine deployment: the model loaded once, its sessions stepped in one batch."""

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
        """For the router: the sessions here, the slots, and whether this replica keeps up."""
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
            raise UserError("this session is already open")
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
            raise UserError("this session is not open on this replica")
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
