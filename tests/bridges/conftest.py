"""A whole `serve` stack (tiny model, null output, OSC + WebSocket on free ports) in a thread."""

from __future__ import annotations

import asyncio
import queue
import socket
import threading
from collections.abc import Iterator
from dataclasses import replace

import pytest
from musicgen_live.bridges.config import BridgesConfig, OscConfig, WebSocketConfig
from musicgen_live.bridges.server import serve_forever
from musicgen_live.engine.model import model_summary
from musicgen_live.streamer.config import StreamConfig
from musicgen_live.streamer.outputs import make_output
from musicgen_live.streamer.session import Session


def free_port(kind: int = socket.SOCK_DGRAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LineFeed:
    """stdin for a served session: lines the test types, read by serve's console thread."""

    def __init__(self) -> None:
        self.lines: queue.SimpleQueue[str | None] = queue.SimpleQueue()

    def __iter__(self) -> Iterator[str]:
        while (line := self.lines.get()) is not None:
            yield line

    def close(self) -> None:
        self.lines.put(None)


class Stack:
    def __init__(self, model, tmp_path, osc_cfg=None, ws_cfg=None, output=None, capture=None, stream=None):
        """`output` (default: null) and `capture` (an input device) for tests of the real audio path;
        `stream`: [stream] settings over the stack's own."""
        self.osc_port = free_port()
        self.ws_port = free_port(socket.SOCK_STREAM)
        self.audio_dir = tmp_path
        self.osc_cfg = replace(osc_cfg or OscConfig(), port=self.osc_port)
        self.ws_cfg = replace(ws_cfg or WebSocketConfig(), port=self.ws_port)
        self.session = Session(
            model,
            output or make_output("null", 2, 0.2),
            StreamConfig(**{"buffer_ms": 200, "window_s": 8, "context_s": 3, **(stream or {})}),
            capture=capture,
        )
        self.ready = threading.Event()
        self.running = None
        self.loop = None
        self.stop_event = threading.Event()
        self.stdin = LineFeed()
        self.said: queue.SimpleQueue[str] = queue.SimpleQueue()  # what serve printed (console answers)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        assert self.ready.wait(30), "server did not start"

    def _run(self):
        async def main():
            self.loop = asyncio.get_running_loop()
            await serve_forever(
                self.session,
                self.osc_cfg,
                self.ws_cfg,
                BridgesConfig(audio_dirs=[str(self.audio_dir)]),
                model_summary(self.session.model),
                seconds=None,
                status_every=0,
                say=self.said.put,
                stdin=self.stdin,
                started=self._started,
                stop=self.stop_event,
            )

        asyncio.run(main())

    def _started(self, running):
        self.running = running
        self.ready.set()

    def type(self, line: str, answer: str = "", timeout: float = 20) -> str:
        """Type a line on serve's stdin; returns the first printed line starting with `answer`
        (serve also prints refusals of other clients, status lines ...)."""
        self.stdin.lines.put(line + "\n")
        while True:
            said = self.said.get(timeout=timeout)
            if said.startswith(answer):
                return said

    def close(self):
        self.stop_event.set()
        self.stdin.close()
        self.thread.join(timeout=10)


@pytest.fixture
def stack(tiny, tmp_path):
    s = Stack(tiny, tmp_path)
    yield s
    s.close()
